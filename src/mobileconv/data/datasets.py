"""Datasets for ``mobileconv train``: scikit-learn's digits, a synthetic set, ImageFolder trees, CIFAR.

Every dataset yields ``(image, label)`` with ``image`` a uint8 ``(3, H, W)`` tensor; conversion to
float, augmentation and normalisation happen on whole batches (:mod:`mobileconv.data.transforms`).
:func:`build_datasets` reads the ``--data`` value (``digits``, ``synthetic`` or a path) and returns
the train split, the test split and a :class:`DataInfo` describing them.
"""
from __future__ import annotations

import copy
import math
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from . import cifar
# ``--train-interpolation``: timm's choices, as RandAugment's; "random" picks bilinear or bicubic per image
from .auto_augment import INTERPOLATIONS as TRAIN_INTERPOLATIONS  # noqa: F401
from .auto_augment import check_interpolation

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DATA_HELP = "digits, synthetic, an ImageFolder tree with train/ and val/, or a CIFAR-10/100 folder (binary or python)"


@dataclass
class DataInfo:
    """What the training loop needs to know about a dataset.

    Attributes:
        name: the ``--data`` value that rebuilds it (``digits``, ``synthetic`` or an absolute path).
        kind: ``digits``, ``synthetic``, ``imagefolder``, ``cifar10`` or ``cifar100``.
        classes: class names in label order.
        mean, std: per-channel normalisation of images scaled to [0, 1].
        hflip: default horizontal-flip probability (0 where flipping changes the meaning, as for digits).
        color_jitter: default colour-jitter strength (0 for grey images).
        scale: default area range of the random resized crop: (0.08, 1), torchvision's and timm's, for image
            folders, whose crops are cut from the whole decoded image; (0.5, 1) for the small in-memory images.
        test_split: name of the held-out split the accuracy is measured on.
    """

    name: str
    kind: str
    classes: list[str]
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    hflip: float = 0.5
    color_jitter: float = 0.4
    test_split: str = "test"
    scale: tuple[float, float] = (0.5, 1.0)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class TensorImageDataset(Dataset):
    """Images held in memory as one uint8 tensor ``(N, 3, H, W)`` with int64 labels ``(N,)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"expected uint8 images (N, C, H, W) and N labels, got {tuple(images.shape)} "
                             f"{images.dtype} and {len(labels)} labels")
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def subset(self, indices) -> "TensorImageDataset":
        indices = torch.as_tensor(indices, dtype=torch.long)
        return TensorImageDataset(self.images[indices], self.labels[indices])


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>`` files, decoded with PIL to RGB, resized and centre-cropped to ``size``
    (:func:`load_image`: the shorter side to ``floor(size / crop_pct)``, then the centre ``size x size``).

    Images in sub-folders of a class folder belong to the class, symbolic links to folders included
    (as torchvision's ``ImageFolder`` follows them; not a link to a folder holding the one it lies
    in: a loop, or the split / data folder); hidden files and folders (``._x.jpg`` as macOS copies leave them,
    ``.ipynb_checkpoints/``) are skipped, as hidden class folders are, and so are folders whose
    name ends like an image's. A symbolic link named like an image whose target is missing raises
    ``ValueError`` naming it when the folder is listed; undecodable files raise it when decoded.

    Args:
        root: the split folder holding one folder per class.
        classes: class names in label order.
        size: output side length.
        folders: the class folders' names on disk when they differ from ``classes`` (a class
            name in NFC form, its folder written in NFD by macOS); defaults to ``classes``.
        crop_pct: the crop's share of the resized shorter side (1: the whole shorter side; timm's
            evaluation uses 0.875: 256 px resized, 224 px cropped).
        interpolation: ``"bilinear"`` or ``"bicubic"`` (:data:`INTERPOLATIONS`).

    :meth:`with_random_crop` gives the training copy: a :class:`RandomResizedCrop` of each whole image instead.
    """

    def __init__(self, root: Path, classes: list[str], size: int, folders: list[str] | None = None,
                 crop_pct: float = 1.0, interpolation: str = "bilinear") -> None:
        folders = list(classes) if folders is None else list(folders)
        if len(folders) != len(classes):
            raise ValueError(f"{len(folders)} class folders for {len(classes)} classes")
        check_crop(crop_pct, interpolation)
        self.root, self.classes, self.size = Path(root), classes, size
        self.crop_pct, self.interpolation = crop_pct, interpolation
        self.samples = [(path, label) for label, folder in enumerate(folders)
                        for path in image_files(self.root / folder)]
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.long)
        self.random_crop: RandomResizedCrop | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int] | tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``dataset[index]``, ``dataset[epoch, index]`` or ``dataset[epoch, index, copy]`` (a keyed
        :class:`.sampler.ShardedBatchSampler`, with repeats for the last): the epoch, and the copy of a repeated
        image, pick the random crop when there is one (:meth:`with_random_crop`; ``dataset[index]`` is epoch 0's,
        copy 0's)."""
        epoch, index, copy = (*key, 0)[:3] if isinstance(key, tuple) else (0, key, 0)
        path, label = self.samples[index]
        if self.random_crop is not None:
            return load_random_crop(path, self.random_crop, epoch, index, copy), self.labels[index]
        return load_image(path, self.size, self.crop_pct, self.interpolation), self.labels[index]

    def subset(self, indices) -> "ImageFolderDataset":
        new = copy.copy(self)
        new.samples = [self.samples[i] for i in indices]
        new.labels = self.labels[torch.as_tensor(indices, dtype=torch.long)]
        return new

    def with_random_crop(self, crop: "RandomResizedCrop") -> "ImageFolderDataset":
        """A copy whose images are random resized crops of the whole decoded image (training), not centre crops."""
        new = copy.copy(self)
        new.random_crop = crop
        return new


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` at any depth, in path order (``sorted`` of the paths).

    Follows symbolic links to folders, as ``os.walk(followlinks=True)`` (torchvision's ImageFolder)
    does, except one leading to a folder that holds the one it lies in (a loop, or a link to the
    split or data folder, whose other classes' images are not this class's); hidden folders are
    not entered. Files are listed by name; a link named like an image whose target is missing (or
    is a loop of links) raises ``ValueError`` naming it, here rather than when an epoch reaches it.
    """
    found = []

    def holds(outer: str, inner: str) -> bool:
        return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)

    def walk(path: Path, ancestors: frozenset) -> None:
        try:
            entries = list(os.scandir(path))
        except OSError:  # unreadable, or a link that stopped resolving: as os.walk, skip it
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            child = path / entry.name
            try:
                is_dir = entry.is_dir()  # follows links
            except OSError:
                is_dir = False
            if is_dir:
                real = os.path.realpath(child)
                if not any(holds(real, a) for a in ancestors):
                    walk(child, ancestors | {real})
            elif child.suffix.lower() in IMAGE_EXTENSIONS:
                if entry.is_symlink() and not os.path.exists(child):
                    raise ValueError(f"image {child} is a symbolic link to {os.readlink(child)}, which does not "
                                     f"exist; restore its target or remove the link")
                found.append(child)

    walk(Path(folder), frozenset({os.path.realpath(folder)}))
    return sorted(found)


# timm's / torchvision's ``interpolation`` names, PIL's resampling filters in lower case
INTERPOLATIONS = ("bilinear", "bicubic")


# the smallest crop_pct: the image resized to 100x the crop's side (timm's models use 0.875-1)
MIN_CROP_PCT = 0.01


def is_crop_pct(value) -> bool:
    """Whether ``value`` is a ``crop_pct``: a number from :data:`MIN_CROP_PCT` to 1."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and MIN_CROP_PCT <= value <= 1


def check_crop(crop_pct: float | None, interpolation: str | None) -> None:
    """A ValueError unless ``crop_pct`` is one (:func:`is_crop_pct`) and ``interpolation`` is one of
    :data:`INTERPOLATIONS`; ``None`` is not given (an option left to its default)."""
    if crop_pct is not None and not is_crop_pct(crop_pct):
        raise ValueError(f"crop_pct must be a number from {MIN_CROP_PCT} to 1 (the crop's share of the resized "
                         f"shorter side, 0.875 in timm's evaluation), got {crop_pct!r}")
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")


def scale_size(size: int, crop_pct: float) -> int:
    """The shorter side an image is resized to before its centre ``size`` crop: ``floor(size / crop_pct)``
    (timm's evaluation transform: 256 for 224 at 0.875)."""
    return math.floor(size / crop_pct)


def load_image(path: Path, size: int, crop_pct: float = 1.0, interpolation: str = "bilinear") -> torch.Tensor:
    """Decode an image file to a uint8 ``(3, size, size)`` tensor: torchvision's ``Resize(scale)`` (the longer
    side truncated: :func:`resized_size`) with ``scale = floor(size / crop_pct)`` (:func:`scale_size`), then
    ``CenterCrop(size)``: timm's evaluation transform. ``crop_pct=1`` keeps the whole shorter side.

    The image is first turned upright as its EXIF orientation tag says (as ``PIL.ImageOps.exif_transpose``
    does, and as image viewers show it: photos from phones and cameras are often stored sideways).
    Grey images are repeated over the three channels, alpha is dropped, 16-bit grey images are scaled to 8 bits.
    """
    from PIL import Image

    check_crop(crop_pct, interpolation)
    resample = getattr(Image.Resampling, interpolation.upper())
    scale = scale_size(size, crop_pct)

    def centre_crop(img):
        w, h = resized_size(img.width, img.height, scale)
        # torchvision's CenterCrop offset, int(round((w - size) / 2)), so its models see the same pixels
        left, top = int(round((w - size) / 2)), int(round((h - size) / 2))
        if w * h <= MAX_RESIZED_AREA * size * size:
            return img.resize((w, h), resample).crop((left, top, left + size, top + size))
        # a very wide or tall image, or a small crop_pct: resize only the crop's region (the same geometry, up to
        # rounding) instead of the whole image to (w, h), which takes gigabytes for a 1 x 10,000 px strip, or for
        # crop_pct 0.01
        sx, sy = img.width / w, img.height / h
        return img.resize((size, size), resample, box=(left * sx, top * sy, (left + size) * sx, (top + size) * sy))

    return decode_image(path, centre_crop)


def load_random_crop(path: Path, crop: "RandomResizedCrop", epoch: int, index: int, copy: int = 0) -> torch.Tensor:
    """Decode an image file to a uint8 ``(3, crop.size, crop.size)`` tensor: the random resized crop that
    ``crop`` draws for this image (and this ``copy`` of it) in this epoch (:meth:`RandomResizedCrop.draw`), cut
    from the whole upright image at its own resolution and then resized, as torchvision's ``RandomResizedCrop``
    does it with PIL."""
    from PIL import Image

    def random_crop(img):
        (left, top, width, height), interpolation = crop.draw(img.width, img.height, epoch, index, copy)
        resample = getattr(Image.Resampling, interpolation.upper())
        return img.crop((left, top, left + width, top + height)).resize((crop.size, crop.size), resample)

    return decode_image(path, random_crop)


def decode_image(path: Path, crop) -> torch.Tensor:
    """``crop(image)`` of the file's upright RGB image (EXIF orientation applied, grey repeated, alpha dropped,
    16-bit grey scaled to 8 bits) as a uint8 ``(3, H, W)`` tensor; ``ValueError`` naming the file when it
    cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()  # a PNG's EXIF may follow its pixel data
            method = exif_transpose_method(img)
            img = to_8bit(img).convert("RGB")
            if method is not None:
                img = img.transpose(method)
            array = np.asarray(crop(img), dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot decode image {path}: {e}") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class RandomResizedCrop:
    """torchvision's ``RandomResizedCrop`` (timm's ``RandomResizedCropAndInterpolation``), drawn per image from
    ``(seed, epoch, index)`` alone: the same crops with any number of data-loading workers or processes, and
    again when a run is resumed.

    Args:
        size: output side length.
        scale: range of the crop's area, as a share of the image's.
        ratio: range of the crop's aspect ratio (width / height), drawn log-uniformly.
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"random"`` (either, with equal odds, per image).
        seed: the run's seed.
    """

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "random"
    seed: int = 0

    def __post_init__(self) -> None:
        check_interpolation(self.interpolation)
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must be two numbers 0 < MIN <= MAX <= 1, got {self.scale!r}")
        if not 0 < self.ratio[0] <= self.ratio[1] < math.inf:
            raise ValueError(f"ratio must be two finite numbers 0 < MIN <= MAX, got {self.ratio!r}")

    def draw(self, width: int, height: int, epoch: int, index: int,
             copy: int = 0) -> tuple[tuple[int, int, int, int], str]:
        """``((left, top, crop_width, crop_height), interpolation)`` for image ``index`` of ``width x height``
        (and its ``copy``-th repeat in the epoch, under ``--aug-repeats``; copy 0 draws what an unrepeated image
        draws).

        torchvision's ``RandomResizedCrop.get_params``: up to 10 tries of an area drawn uniformly from ``scale``
        and an aspect ratio drawn log-uniformly from ``ratio``, kept when the crop fits; otherwise the centre
        crop of the whole image, its aspect ratio clamped to ``ratio``.
        """
        rng = np.random.default_rng([self.seed, epoch, index, copy] if copy else [self.seed, epoch, index])
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        box = None
        for _ in range(10):
            target_area = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                box = (int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h)
                break
        if box is None:
            w, h = width, height
            if width / height < self.ratio[0]:
                h = int(round(width / self.ratio[0]))
            elif width / height > self.ratio[1]:
                w = int(round(height * self.ratio[1]))
            box = ((width - w) // 2, (height - h) // 2, w, h)
        interpolation = self.interpolation
        if interpolation == "random":
            interpolation = INTERPOLATIONS[int(rng.integers(0, 2))]
        return box, interpolation


# load_image resizes a whole image when the result is at most this many crops in area (aspect ratio <= 4:1 at crop_pct 1)
MAX_RESIZED_AREA = 4


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """``(width, height)`` with the shorter side ``size``: torchvision's ``Resize(size)`` (an int).

    The longer side is ``int(size * long / short)``, truncated as torchvision truncates it, so a
    model trained with ``Resize(size)`` + ``CenterCrop(size)`` sees the same pixels.
    """
    short, long = min(width, height), max(width, height)
    new_long = max(size, int(size * long / short))
    return (size, new_long) if width <= height else (new_long, size)


def exif_transpose_method(img):
    """The ``Image.Transpose`` that turns ``img`` upright per its EXIF orientation (tag 274), or None.

    The same mapping as ``PIL.ImageOps.exif_transpose``; an image without the tag, with orientation 1
    or with an unreadable EXIF block is left as it is (its pixels may still decode).
    """
    from PIL import ExifTags, Image

    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # a malformed EXIF block (struct / key / type errors inside Pillow): no orientation
        return None
    if not isinstance(orientation, int):
        return None
    return {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}.get(orientation)


def to_8bit(img):
    """A 16-bit grey PIL image (modes ``I;16*``, and ``I`` as older Pillows read 16-bit PNGs) scaled to 8-bit ``L``.

    ``Image.convert`` would clip those values at 255 instead, turning nearly every pixel white.
    A floating-point image (mode ``F``), or a mode ``I`` image with values outside 0-65535 (a
    32-bit one), is refused: it has no defined range to scale from.
    """
    from PIL import Image

    if img.mode == "F":  # Image.convert would clip the floats at 0 and 255: a [0, 1] image becomes black
        raise ValueError("a 32-bit floating-point image (PIL mode F) has no defined value range; save it as an "
                         "8- or 16-bit image")
    if not (img.mode == "I" or img.mode.startswith("I;16")):
        return img
    array = np.asarray(img)
    if img.mode == "I" and array.size and (array.min() < 0 or array.max() > 65535):
        # a 32-bit integer image, not a 16-bit one read as mode I: scaling it as 16-bit would clip it
        raise ValueError(f"a 32-bit integer image (PIL mode I) with values from {array.min()} to {array.max()} has "
                         "no 16-bit range to scale from; save it as an 8- or 16-bit image")
    array = array.astype(np.float64) * (255 / 65535)
    return Image.fromarray(array.round().clip(0, 255).astype(np.uint8), "L")


# --data values with a resolution of their own (the 8x8 digits gain nothing from more than 16 px)
PREFERRED_IMG_SIZE = {"digits": 16}


def preferred_img_size(data: str) -> int | None:
    """The default ``--img-size`` for a ``--data`` value, or None to use the model's input size."""
    return PREFERRED_IMG_SIZE.get(data)


def build_datasets(data: str, img_size: int) -> tuple[Dataset, Dataset, DataInfo]:
    """Train split, test split and their :class:`DataInfo` for a ``--data`` value.

    An ImageFolder tree's images keep the whole shorter side (the trainer's training copy,
    :meth:`ImageFolderDataset.with_random_crop`, cuts random resized crops from the whole images instead);
    :func:`build_test_dataset` crops test images otherwise.

    Raises ``ValueError`` with a one-line reason for a missing, empty or inconsistent dataset.
    """
    if data == "digits":
        return load_digits(img_size)
    if data == "synthetic":
        return make_synthetic(img_size)
    root = Path(data).expanduser()
    if not root.exists():
        raise ValueError(f"--data {data!r}: no such file or folder; expected {DATA_HELP}")
    if not root.is_dir():
        raise ValueError(f"--data {data!r} is not a folder; expected {DATA_HELP}")
    found = cifar.find_layout(root)
    if found is not None:
        return load_cifar(root, *found)
    if (root / "train").is_dir() or (root / "val").is_dir():
        return load_image_folder(root, img_size)
    incomplete = cifar.find_incomplete(root)
    if incomplete is not None:
        folder, layout, missing = incomplete
        raise ValueError(f"--data {folder}: {layout.name} ({layout.version}) files missing: {', '.join(missing)}")
    raise ValueError(f"--data {data!r} holds neither train/ and val/ folders nor CIFAR files; expected {DATA_HELP}")


def build_test_dataset(data: str, img_size: int, crop_pct: float = 1.0,
                       interpolation: str = "bilinear") -> tuple[Dataset, DataInfo]:
    """The test split of a ``--data`` value alone, and its :class:`DataInfo` (``mobileconv eval``).

    An ImageFolder tree needs only its ``val/`` folder here (ImageNet's validation images without its
    training set: ``train/`` is neither listed nor checked), and a folder that holds the class folders
    themselves is the test split (``--data imagenet/val``, as timm's ``validate.py`` reads one). A class
    folder without images is a class with no test images. Everything else is :func:`build_datasets`'s test split.
    """
    root = Path(data).expanduser()
    if data in ("digits", "synthetic") or not root.is_dir() or cifar.find_layout(root) is not None:
        return build_datasets(data, img_size)[1:]  # arrays: resized whole, no crop
    if _holds_class_folders(root / "val"):
        folder = root / "val"
    elif _holds_class_folders(root / "train") or cifar.find_incomplete(root) is not None:
        return build_datasets(data, img_size)[1:]  # its error: no val/, CIFAR files missing
    else:  # class folders, one of them perhaps named train or val (CIFAR-100 has a class "train")
        folder = root
    try:
        classes = class_folders(folder)
    except ValueError as e:
        raise ValueError(f"--data {root}: {e}") from None
    if not classes:
        where = "val/ has" if folder != root else "it holds no train/ and val/ folders, no CIFAR files and"
        raise ValueError(f"--data {data!r}: {where} no class folders; expected {DATA_HELP}, or a folder of class "
                         f"folders (the test images alone)")
    test = ImageFolderDataset(folder, list(classes), img_size, list(classes.values()), crop_pct, interpolation)
    if len(test) == 0:
        raise ValueError(f"--data {root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders of {folder}")
    return test, image_folder_info(root, list(classes), folder.name)


def _holds_class_folders(folder: Path) -> bool:
    """Whether ``folder`` is a split folder: a folder holding (non-hidden) folders, not a class folder of images."""
    return folder.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())


DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def load_digits(img_size: int) -> tuple[TensorImageDataset, TensorImageDataset, DataInfo]:
    """scikit-learn's handwritten digits (1,797 8x8 images, ink 0-16), upscaled bilinearly to ``img_size``.

    The split is fixed: stratified, 20% test (360 images), ``random_state=0``; mean and std are those
    of the 32x32 train split. Images are grey,
    repeated over three channels; the ink is bright on a dark background as in the source data.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    x, y = sk_load_digits(return_X_y=True)
    images = torch.from_numpy(x).float().reshape(-1, 1, 8, 8) / 16.0
    images = F.interpolate(images, size=(img_size, img_size), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(y).long()
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=DIGITS_TEST_FRACTION, stratify=y,
                                           random_state=DIGITS_SPLIT_SEED)
    full = TensorImageDataset(images, labels)
    info = DataInfo("digits", "digits", [str(d) for d in range(10)], mean=(0.305,) * 3, std=(0.324,) * 3,
                    hflip=0.0, color_jitter=0.0)
    return full.subset(np.sort(train_idx)), full.subset(np.sort(test_idx)), info


SYNTHETIC_CLASSES, SYNTHETIC_TRAIN_PER_CLASS, SYNTHETIC_TEST_PER_CLASS = 10, 50, 10


def make_synthetic(img_size: int) -> tuple[TensorImageDataset, TensorImageDataset, DataInfo]:
    """A learnable random dataset: each class is a smooth random colour pattern, each image adds noise.

    Fixed by construction (generator seed 0), independent of ``--seed``: 500 train and 100 test images.
    """
    g = torch.Generator().manual_seed(0)
    templates = F.interpolate(torch.rand(SYNTHETIC_CLASSES, 3, 4, 4, generator=g), size=(img_size, img_size),
                              mode="bilinear", align_corners=False)

    def split(per_class: int) -> TensorImageDataset:
        labels = torch.arange(SYNTHETIC_CLASSES).repeat_interleave(per_class)
        noise = 0.25 * torch.randn(len(labels), 3, img_size, img_size, generator=g)
        images = ((templates[labels] + noise).clamp(0, 1) * 255).round().to(torch.uint8)
        return TensorImageDataset(images, labels)

    train, test = split(SYNTHETIC_TRAIN_PER_CLASS), split(SYNTHETIC_TEST_PER_CLASS)
    info = DataInfo("synthetic", "synthetic", [f"class_{i}" for i in range(SYNTHETIC_CLASSES)], hflip=0.5,
                    color_jitter=0.0)
    return train, test, info


CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def load_cifar(root: Path, folder: Path, layout: cifar.CifarLayout):
    """CIFAR-10/100 at their native 32x32 (the batch transform resizes when ``--img-size`` differs)."""
    classes = cifar.read_classes(folder, layout)
    train, test = (TensorImageDataset(*map(torch.from_numpy, cifar.read_split(folder, layout, is_train)))
                   for is_train in (True, False))
    for split_name, split in (("train", train), ("test", test)):
        bad = split.labels[(split.labels < 0) | (split.labels >= len(classes))]
        if len(bad):
            raise ValueError(f"--data {root}: {split_name} label {int(bad[0])} outside the {len(classes)} classes")
    mean, std = CIFAR_STATS[layout.name]
    info = DataInfo(str(root.resolve()), layout.name, classes, mean=mean, std=std, hflip=0.5, color_jitter=0.4)
    return train, test, info


def class_folders(folder: Path) -> dict[str, str]:
    """Class name -> folder name of the class folders in a split folder, sorted by class name.

    A class name is its folder's name in Unicode normal form NFC, so ``café`` written by macOS
    (NFD: ``e`` and a combining accent) and by Linux or Windows (NFC: ``é``) are one class;
    hidden folders are not classes. Two folders with the same NFC name raise ``ValueError``.
    """
    found = {}
    for path in sorted(folder.iterdir()):
        if not path.is_dir() or path.name.startswith("."):
            continue
        name = unicodedata.normalize("NFC", path.name)
        if name in found:
            raise ValueError(f"{folder}: class folders {show_names([found[name], path.name])} are one class name "
                             f"in different Unicode forms (NFC and NFD); merge them into one folder")
        found[name] = path.name
    return dict(sorted(found.items()))


def show_names(names) -> str:
    """A list of names as Python prints it, each non-ASCII name followed by its code points
    (``'café' (caf\\xe9)``), so names that print alike but differ are told apart."""
    return "[" + ", ".join(repr(n) if n.isascii() else f"{n!r} ({ascii(n)[1:-1]})" for n in names) + "]"


def load_image_folder(root: Path, img_size: int):
    """``root/train/<class>/*`` and ``root/val/<class>/*``; both must exist, hold images and agree on classes.

    Class names are matched in Unicode NFC form (:func:`class_folders`); images are read from the
    folders as they are named on disk.
    """
    split_folders = {}
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            raise ValueError(f"--data {root}: missing {split}/ folder (an ImageFolder tree needs train/ and val/)")
        try:
            split_folders[split] = class_folders(folder)
        except ValueError as e:
            raise ValueError(f"--data {root}: {e}") from None
        if not split_folders[split]:
            raise ValueError(f"--data {root}: {split}/ has no class folders")
    if list(split_folders["train"]) != list(split_folders["val"]):
        only_train = sorted(set(split_folders["train"]) - set(split_folders["val"]))
        only_val = sorted(set(split_folders["val"]) - set(split_folders["train"]))
        raise ValueError(f"--data {root}: train/ and val/ classes differ (only in train: {show_names(only_train)}, "
                         f"only in val: {show_names(only_val)})")
    classes = list(split_folders["train"])
    train, val = (ImageFolderDataset(root / split, classes, img_size, list(split_folders[split].values()))
                  for split in ("train", "val"))
    for split, ds in (("train", train), ("val", val)):
        if len(ds) == 0:
            raise ValueError(f"--data {root}: no images ({', '.join(IMAGE_EXTENSIONS)}) under {split}/")
        counts = torch.bincount(ds.labels, minlength=len(classes))
        empty = [name for name, count in zip(classes, counts.tolist()) if count == 0]
        if empty:
            raise ValueError(f"--data {root}: {split}/{empty[0]}/ holds no images ({', '.join(IMAGE_EXTENSIONS)})"
                             f"{f' (nor do {len(empty) - 1} other class folders)' if len(empty) > 1 else ''}; "
                             f"every class needs images in both train/ and val/")
    return train, val, image_folder_info(root, classes, "val")


def image_folder_info(root: Path, classes: list[str], test_split: str) -> DataInfo:
    """An ImageFolder dataset's :class:`DataInfo`: photos, normalised with ImageNet's statistics, flipped and
    colour-jittered in training."""
    return DataInfo(str(root.resolve()), "imagefolder", classes, mean=IMAGENET_MEAN, std=IMAGENET_STD, hflip=0.5,
                    color_jitter=0.4, test_split=test_split, scale=(0.08, 1.0))


def limit_samples(dataset, max_samples: int | None, seed: int = 0):
    """The first ``max_samples`` of a fixed random order (the same for every run), or the dataset itself."""
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    order = np.random.default_rng(seed).permutation(len(dataset))[:max_samples]
    return dataset.subset(np.sort(order))
