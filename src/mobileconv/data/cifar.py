"""CIFAR-10 / CIFAR-100 readers for the binary and the python versions, without running any code.

The binary versions are plain bytes: one record per image, the label byte(s) then 3,072 pixel
bytes (1,024 red, 1,024 green, 1,024 blue, row-major 32x32). The python versions are pickles;
they are read with :class:`RestrictedUnpickler`, which builds only NumPy arrays and dtypes and
refuses every other global, so a tampered file cannot run code.

Layouts (as unpacked from the official archives, https://www.cs.toronto.edu/~kriz/cifar.html):

| version | train files | test file | class names |
| --- | --- | --- | --- |
| CIFAR-10 binary | ``data_batch_1.bin`` .. ``data_batch_5.bin`` | ``test_batch.bin`` | ``batches.meta.txt`` |
| CIFAR-10 python | ``data_batch_1`` .. ``data_batch_5`` | ``test_batch`` | ``batches.meta`` |
| CIFAR-100 binary | ``train.bin`` | ``test.bin`` | ``fine_label_names.txt`` |
| CIFAR-100 python | ``train`` | ``test`` | ``meta`` |
"""
from __future__ import annotations

import codecs
import io
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_BYTES = 3 * 32 * 32

# (module, name) pairs a CIFAR python pickle needs: ndarray reconstruction and dtypes (and the
# str -> bytes step of Python 3 protocol-2 pickles), nothing else.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}
# numpy's array-rebuilding function (numpy.core in NumPy 1, numpy._core in NumPy 2), as ndarray pickles name it
_NUMPY_RECONSTRUCT = np.empty(0).__reduce__()[0]


@dataclass(frozen=True)
class CifarLayout:
    """One of the four CIFAR layouts: which files hold which split and how labels are stored."""

    name: str  # "cifar10" or "cifar100"
    binary: bool
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_bytes: int = 1  # binary only: CIFAR-100 stores (coarse, fine)

    @property
    def num_classes(self) -> int:
        return 10 if self.name == "cifar10" else 100

    @property
    def version(self) -> str:
        return "binary" if self.binary else "python"

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, *self.test_files, self.meta_file)


LAYOUTS = (
    CifarLayout("cifar10", True, tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",),
                "batches.meta.txt"),
    CifarLayout("cifar10", False, tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta"),
    CifarLayout("cifar100", True, ("train.bin",), ("test.bin",), "fine_label_names.txt", label_bytes=2),
    CifarLayout("cifar100", False, ("train",), ("test",), "meta"),
)

# sub-folders the official archives unpack to
ARCHIVE_FOLDERS = ("cifar-10-batches-bin", "cifar-10-batches-py", "cifar-100-binary", "cifar-100-python")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only builds NumPy arrays, dtypes and plain containers.

    ``find_class`` is the only way a pickle can reach Python code; it answers only for the
    entries of ``_ALLOWED_GLOBALS`` and raises ``pickle.UnpicklingError`` for anything else.
    """

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR file")
        if name == "_reconstruct":
            return _NUMPY_RECONSTRUCT
        if module == "_codecs":
            return codecs.encode
        return getattr(np, name)


def safe_unpickle(path: Path) -> object:
    """Read a pickle holding only arrays and builtins (Python 2 pickles included); ValueError otherwise.

    Dict keys written as bytes (``b"data"``) are decoded, so both spellings read the same.
    """
    # a corrupt file can fail anywhere in the unpickler: an unknown encoding in a _codecs.encode call
    # (LookupError), a length field past the file or past memory (OverflowError, MemoryError), ...
    try:
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, ValueError, LookupError, OverflowError,
            MemoryError) as e:
        raise ValueError(f"cannot read CIFAR file {path}: {str(e) or type(e).__name__}") from None
    if isinstance(obj, dict):
        obj = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    return obj


def _candidates(root: Path) -> Iterator[tuple[Path, CifarLayout]]:
    """Every (folder, layout) where CIFAR files may lie under ``root``: itself or an archive folder."""
    for folder in (root, *(root / name for name in ARCHIVE_FOLDERS)):
        for layout in LAYOUTS:
            yield folder, layout


def find_layout(root: Path) -> tuple[Path, CifarLayout] | None:
    """The folder holding CIFAR files under ``root`` (itself or an archive folder) and its layout.

    ``root`` itself wins over its archive folders, and the binary version over the python one.
    Raises ``ValueError`` when ``root`` is not one itself but holds the archive folders of both
    CIFAR-10 and CIFAR-100 (as a shared data folder may): which one is meant cannot be told.
    """
    found = [(folder, layout) for folder, layout in _candidates(root)
             if (folder / layout.test_files[0]).is_file() and (folder / layout.meta_file).is_file()]
    if not found:
        return None
    if found[0][0] != root and len({layout.name for _, layout in found}) > 1:
        folders = ", ".join(str(folder) for folder in dict.fromkeys(folder for folder, _ in found))
        raise ValueError(f"--data {root} holds both CIFAR-10 and CIFAR-100 ({folders}); pass the folder of the one "
                         f"to use")
    return found[0]


def find_incomplete(root: Path) -> tuple[Path, CifarLayout, list[str]] | None:
    """The first folder and layout with only some of its files (which find_layout rejects), and the missing ones."""
    for folder, layout in _candidates(root):
        missing = [name for name in layout.files if not (folder / name).is_file()]
        if len(missing) < len(layout.files):
            return folder, layout, missing
    return None


def read_split(folder: Path, layout: CifarLayout, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of the train or the test split."""
    files = layout.train_files if train else layout.test_files
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"--data {folder}: {layout.name} files missing: {', '.join(missing)}")
    reader = _read_binary if layout.binary else _read_python
    parts = [reader(folder / name, layout) for name in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return images, labels


def read_classes(folder: Path, layout: CifarLayout) -> list[str]:
    """Class names in label order."""
    path = folder / layout.meta_file
    if layout.binary:
        try:
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as e:
            raise ValueError(f"cannot read CIFAR file {path}: expected class names as text, one a line ({e})") from None
    else:
        meta = safe_unpickle(path)
        key = "label_names" if layout.name == "cifar10" else "fine_label_names"
        names = meta.get(key) if isinstance(meta, dict) else None
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, (str, bytes)) for n in names):
            raise ValueError(f"cannot read CIFAR file {path}: expected a dict with {key!r}, a list of class names")
        names = [n.decode("latin1") if isinstance(n, bytes) else n for n in names]
    if len(names) != layout.num_classes:
        raise ValueError(f"cannot read CIFAR file {path}: {len(names)} class names, {layout.name} has "
                         f"{layout.num_classes}")
    return names


def _read_binary(path: Path, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    record = layout.label_bytes + IMAGE_BYTES
    if raw.size == 0 or raw.size % record:
        raise ValueError(f"cannot read CIFAR file {path}: size {raw.size} is not a multiple of {record}-byte records")
    raw = raw.reshape(-1, record)
    labels = raw[:, layout.label_bytes - 1].astype(np.int64)  # CIFAR-100: the second byte is the fine label
    return raw[:, layout.label_bytes:].reshape(-1, 3, 32, 32).copy(), labels


def _read_python(path: Path, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_unpickle(path)
    key = "labels" if layout.name == "cifar10" else "fine_labels"
    if not isinstance(batch, dict) or "data" not in batch or key not in batch:
        raise ValueError(f"cannot read CIFAR file {path}: expected a dict with 'data' and {key!r}")
    try:  # a tampered file may hold anything here: None, strings, out-of-range numbers
        data = np.asarray(batch["data"])
        labels = np.asarray(batch[key])
        if data.dtype != np.uint8 and not (np.issubdtype(data.dtype, np.integer) and data.size
                                           and 0 <= data.min() and data.max() <= 255):
            raise ValueError(f"pixels must be integers in [0, 255], got dtype {data.dtype}")
        if not np.issubdtype(labels.dtype, np.integer) or labels.ndim != 1:
            raise ValueError(f"labels must be a list of integers, got dtype {labels.dtype}, shape {labels.shape}")
        data, labels = data.astype(np.uint8), labels.astype(np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"cannot read CIFAR file {path}: {e}") from None
    if data.ndim != 2 or data.shape[1] != IMAGE_BYTES or len(labels) != len(data):
        raise ValueError(f"cannot read CIFAR file {path}: data {data.shape} and {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), labels
