"""CIFAR readers: byte-exact images and labels from files written here, and no code run from pickles."""
import pickle

import numpy as np
import pytest

from mobileconv.data import build_datasets
from mobileconv.data.cifar import safe_unpickle

N = 6  # images per file


def _images(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(N, 3, 32, 32), dtype=np.uint8)


def _labels(seed: int, classes: int) -> np.ndarray:
    return np.random.default_rng(seed + 100).integers(0, classes, size=N)


def write_cifar10_binary(root):
    for i, name in enumerate([f"data_batch_{j}.bin" for j in range(1, 6)] + ["test_batch.bin"]):
        records = np.concatenate([_labels(i, 10)[:, None].astype(np.uint8), _images(i).reshape(N, -1)], axis=1)
        (root / name).write_bytes(records.tobytes())
    (root / "batches.meta.txt").write_text("\n".join(f"c{k}" for k in range(10)) + "\n\n")


def write_cifar100_binary(root):
    for i, name in enumerate(["train.bin", "test.bin"]):
        coarse = np.full((N, 1), 7, dtype=np.uint8)
        records = np.concatenate([coarse, _labels(i, 100)[:, None].astype(np.uint8), _images(i).reshape(N, -1)], 1)
        (root / name).write_bytes(records.tobytes())
    (root / "fine_label_names.txt").write_text("\n".join(f"f{k}" for k in range(100)))


def write_cifar_python(root, cifar100: bool, protocol: int, bytes_keys: bool):
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
    label_key = "fine_labels" if cifar100 else "labels"
    names = ["train", "test"] if cifar100 else [f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        batch = {key("data"): _images(i).reshape(N, -1), key(label_key): _labels(i, 100 if cifar100 else 10).tolist(),
                 key("filenames"): [f"img{k}.png".encode() for k in range(N)]}
        (root / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    meta_name, meta_key = ("meta", "fine_label_names") if cifar100 else ("batches.meta", "label_names")
    count = 100 if cifar100 else 10
    (root / meta_name).write_bytes(pickle.dumps({key(meta_key): [f"n{k}".encode() for k in range(count)]}, protocol))


def expected(indices, classes):
    images = np.concatenate([_images(i) for i in indices])
    labels = np.concatenate([_labels(i, classes) for i in indices])
    return images, labels


@pytest.mark.parametrize("variant", ["cifar10-bin", "cifar10-py2", "cifar10-py4-bytes", "cifar100-bin", "cifar100-py"])
def test_cifar_reads_exact_bytes(tmp_path, variant):
    folder = tmp_path / "cifar-archive"
    folder.mkdir()
    cifar100 = variant.startswith("cifar100")
    if variant == "cifar10-bin":
        write_cifar10_binary(folder)
    elif variant == "cifar100-bin":
        write_cifar100_binary(folder)
    else:
        write_cifar_python(folder, cifar100, protocol=4 if "py4" in variant else 2, bytes_keys="bytes" in variant)
    train, test, info = build_datasets(str(folder), 32)
    classes = 100 if cifar100 else 10
    train_ids, test_ids = ([0], [1]) if cifar100 else (range(5), [5])
    for ds, ids in ((train, train_ids), (test, test_ids)):
        images, labels = expected(ids, classes)
        np.testing.assert_array_equal(ds.images.numpy(), images)
        np.testing.assert_array_equal(ds.labels.numpy(), labels)
    assert info.kind == ("cifar100" if cifar100 else "cifar10") and info.num_classes == classes
    prefix = ("f" if cifar100 else "c") if variant.endswith("bin") else "n"
    assert info.classes[:2] == [f"{prefix}0", f"{prefix}1"]


def test_cifar_found_in_archive_subfolder(tmp_path):
    write_cifar10_binary((tmp_path / "cifar-10-batches-bin").mkdir() or tmp_path / "cifar-10-batches-bin")
    train, test, info = build_datasets(str(tmp_path), 32)
    assert len(train) == 5 * N and len(test) == N and info.kind == "cifar10"


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    write_cifar_python(tmp_path, cifar100=False, protocol=2, bytes_keys=False)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({"data": _Exploit(marker), "labels": []}, protocol=2))
    with pytest.raises(ValueError, match=r"test_batch: global (posix|os)\.system is not allowed"):
        build_datasets(str(tmp_path), 32)
    assert not marker.exists()
    with pytest.raises(ValueError, match="not allowed"):
        safe_unpickle(tmp_path / "test_batch")


def test_truncated_binary_file_names_the_file(tmp_path):
    write_cifar10_binary(tmp_path)
    (tmp_path / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match=r"test_batch\.bin: size 100 is not a multiple of 3073"):
        build_datasets(str(tmp_path), 32)


def test_missing_train_file_is_named(tmp_path):
    write_cifar10_binary(tmp_path)
    (tmp_path / "data_batch_3.bin").unlink()
    with pytest.raises(ValueError, match="cifar10 files missing: data_batch_3.bin"):
        build_datasets(str(tmp_path), 32)


@pytest.mark.parametrize("field, value, message", [
    ("data", None, "pixels must be integers in"),
    ("data", np.full((N, 3072), -1), "pixels must be integers in"),
    ("data", np.full((N, 3072), 0.5), "pixels must be integers in"),
    ("labels", None, "labels must be a list of integers"),
    ("labels", [10**30] * N, "labels must be a list of integers"),
    ("labels", ["cat"] * N, "labels must be a list of integers"),
])
def test_tampered_python_batch_names_the_file(tmp_path, field, value, message):
    """Well-formed pickles with the wrong contents: a one-line error naming the file, no traceback."""
    write_cifar_python(tmp_path, cifar100=False, protocol=4, bytes_keys=False)
    batch = {"data": _images(0).reshape(N, -1), "labels": _labels(0, 10).tolist(), field: value}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=4))
    with pytest.raises(ValueError, match=rf"cannot read CIFAR file .*test_batch: {message}"):
        build_datasets(str(tmp_path), 32)


@pytest.mark.parametrize("names", [None, 5, [1, 2]])
def test_tampered_class_names_name_the_file(tmp_path, names):
    write_cifar_python(tmp_path, cifar100=False, protocol=4, bytes_keys=False)
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({"label_names": names}, protocol=4))
    with pytest.raises(ValueError, match=r"cannot read CIFAR file .*batches\.meta: expected a dict with 'label_names'"):
        build_datasets(str(tmp_path), 32)
