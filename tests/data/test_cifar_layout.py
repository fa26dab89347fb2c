"""CIFAR folders with missing, unreadable or inconsistent files: one ValueError naming the file or files."""
import pickle
import struct

import pytest

from mobileconv.data import build_datasets

from .test_cifar import write_cifar10_binary, write_cifar100_binary, write_cifar_python


@pytest.mark.parametrize("remove, missing", [
    ("batches.meta.txt", "batches.meta.txt"),
    ("test_batch.bin", "test_batch.bin"),
    (("test_batch.bin", "batches.meta.txt", "data_batch_2.bin"), "data_batch_2.bin, test_batch.bin, batches.meta.txt"),
])
def test_incomplete_cifar10_binary_names_the_missing_files(tmp_path, remove, missing):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    write_cifar10_binary(folder)
    for name in (remove,) if isinstance(remove, str) else remove:
        (folder / name).unlink()
    with pytest.raises(ValueError, match=rf"^--data {folder}: cifar10 \(binary\) files missing: {missing}$"):
        build_datasets(str(tmp_path), 32)


def test_incomplete_cifar100_python_names_the_missing_files(tmp_path):
    write_cifar_python(tmp_path, cifar100=True, protocol=4, bytes_keys=False)
    (tmp_path / "meta").unlink()
    with pytest.raises(ValueError, match=r"cifar100 \(python\) files missing: meta$"):
        build_datasets(str(tmp_path), 32)


def test_class_names_that_are_not_text(tmp_path):
    write_cifar10_binary(tmp_path)
    (tmp_path / "batches.meta.txt").write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match=r"cannot read CIFAR file .*batches\.meta\.txt: expected class names as text"):
        build_datasets(str(tmp_path), 32)


@pytest.mark.parametrize("count", [9, 11])
def test_wrong_number_of_class_names(tmp_path, count):
    write_cifar10_binary(tmp_path)
    (tmp_path / "batches.meta.txt").write_text("\n".join(f"c{k}" for k in range(count)))
    with pytest.raises(ValueError, match=rf"batches\.meta\.txt: {count} class names, cifar10 has 10$"):
        build_datasets(str(tmp_path), 32)


def test_cifar100_fine_names_count(tmp_path):
    write_cifar100_binary(tmp_path)
    (tmp_path / "fine_label_names.txt").write_text("\n".join(f"f{k}" for k in range(20)))  # the coarse names
    with pytest.raises(ValueError, match=r"fine_label_names\.txt: 20 class names, cifar100 has 100$"):
        build_datasets(str(tmp_path), 32)


BAD_PICKLES = {
    # {"label_names": [_codecs.encode("a", "latinI")]}: an encoding that does not exist
    "unknown_encoding": b"\x80\x02}q\x00X\x0b\x00\x00\x00label_namesq\x01]q\x02(c_codecs\nencode\nq\x03X\x01\x00\x00"
                        b"\x00aq\x04X\x06\x00\x00\x00latinIq\x05\x86q\x06Rq\x07a.",
    "length_past_the_maximum": b"\x80\x04\x8e" + struct.pack("<Q", 2**63 + 5),  # BINBYTES8 of 2**63 + 5 bytes
    "length_past_memory": b"\x80\x04\x8e" + struct.pack("<Q", 2**60),
    "garbage": b"\x00\x01\x02not a pickle",
    "truncated": pickle.dumps({"label_names": ["a"] * 10}, 4)[:20],
}


@pytest.mark.parametrize("case", sorted(BAD_PICKLES))
def test_corrupt_python_meta_file_is_named(tmp_path, case):
    write_cifar_python(tmp_path, cifar100=False, protocol=4, bytes_keys=False)
    (tmp_path / "batches.meta").write_bytes(BAD_PICKLES[case])
    with pytest.raises(ValueError, match=rf"^cannot read CIFAR file {tmp_path / 'batches.meta'}: .+"):
        build_datasets(str(tmp_path), 32)
