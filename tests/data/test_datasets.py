"""Digits / synthetic / ImageFolder datasets: content against independent sources, and clear errors."""
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits as sk_digits

from mobileconv.data import build_datasets, limit_samples


def test_digits_at_8px_are_the_scikit_learn_pixels():
    train, test, info = build_datasets("digits", 8)
    x, y = sk_digits(return_X_y=True)
    source = {tuple(np.round(row * 255 / 16).astype(np.uint8)) + (int(label),) for row, label in zip(x, y)}
    ours = [tuple(img[0].flatten().tolist()) + (int(label),) for ds in (train, test) for img, label in
            zip(ds.images, ds.labels)]
    assert len(ours) == len(x) == 1797 and set(ours) == source
    assert all(torch.equal(img[0], img[c]) for img in train.images[:5] for c in (1, 2))  # grey in 3 channels
    assert info.hflip == 0.0 and info.classes == [str(d) for d in range(10)]


def test_digits_split_is_fixed_and_stratified():
    train, test, _ = build_datasets("digits", 16)
    again_train, again_test, _ = build_datasets("digits", 16)
    assert (len(train), len(test)) == (1437, 360)
    assert torch.equal(train.images, again_train.images) and torch.equal(test.labels, again_test.labels)
    _, y = sk_digits(return_X_y=True)
    share = test.labels.bincount(minlength=10).double() / torch.from_numpy(np.bincount(y)).double()
    assert torch.all((share - 0.2).abs() < 0.02)
    assert train.images.shape[1:] == (3, 16, 16) and train.images.dtype == torch.uint8


def test_synthetic_is_fixed_and_balanced():
    a_train, a_test, info = build_datasets("synthetic", 16)
    b_train, _, _ = build_datasets("synthetic", 16)
    assert torch.equal(a_train.images, b_train.images)
    assert a_train.labels.bincount().tolist() == [50] * 10 and len(a_test) == 100 and info.num_classes == 10


def test_limit_samples_is_a_fixed_subset():
    train, _, _ = build_datasets("synthetic", 8)
    a, b = limit_samples(train, 40), limit_samples(train, 40)
    assert len(a) == 40 and torch.equal(a.images, b.images)
    assert limit_samples(train, 10_000) is train


def make_tree(root, classes_train=("cat", "dog"), classes_val=("cat", "dog"), per_class=2, size=12):
    rng = np.random.default_rng(0)
    pixels = {}
    for split, classes in (("train", classes_train), ("val", classes_val)):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                array = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                Image.fromarray(array).save(folder / f"{i}.png")
                pixels[(split, name, i)] = array
    return pixels


def test_image_folder_decodes_rgb_pixels(tmp_path):
    pixels = make_tree(tmp_path)
    train, val, info = build_datasets(str(tmp_path), 12)
    assert info.classes == ["cat", "dog"] and info.kind == "imagefolder" and info.test_split == "val"
    assert len(train) == 4 and len(val) == 4
    image, label = train[2]  # sorted: cat/0, cat/1, dog/0, dog/1
    assert int(label) == 1
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), pixels[("train", "dog", 0)])


def test_image_folder_resizes_shorter_side_and_centre_crops(tmp_path):
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    Image.new("RGB", (40, 20), (10, 20, 30)).save(folder / "wide.png")
    (tmp_path / "val" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "a" / "x.png")
    train, _, _ = build_datasets(str(tmp_path), 10)
    image, _ = train[0]
    assert image.shape == (3, 10, 10) and image[:, 5, 5].tolist() == [10, 20, 30]


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file or folder"),
    ("file", "is not a folder"),
    ("empty", "holds neither train/ and val/ folders nor CIFAR files"),
    ("no_val", "missing val/ folder"),
    ("no_classes", "train/ has no class folders"),
    ("no_images", r"no images \(.png"),
    ("mismatch", r"train/ and val/ classes differ \(only in train: \['dog'\], only in val: \['fox'\]\)"),
])
def test_bad_data_folders_are_explained(tmp_path, case, message):
    root = tmp_path / "data"
    if case == "file":
        root.write_text("x")
    elif case == "empty":
        root.mkdir()
    elif case == "no_val":
        make_tree(root)
        for p in sorted((root / "val").rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        (root / "val").rmdir()
    elif case == "no_classes":
        (root / "train").mkdir(parents=True)
        (root / "val").mkdir()
    elif case == "no_images":
        (root / "train" / "a").mkdir(parents=True)
        (root / "val" / "a").mkdir(parents=True)
        (root / "train" / "a" / "notes.txt").write_text("not an image")
    elif case == "mismatch":
        make_tree(root, classes_train=("cat", "dog"), classes_val=("cat", "fox"))
    with pytest.raises(ValueError, match=message):
        build_datasets(str(root), 8)


def test_undecodable_image_is_reported_by_path(tmp_path):
    make_tree(tmp_path)
    bad = tmp_path / "train" / "cat" / "0.png"
    bad.write_bytes(b"this is not a png")
    train, _, _ = build_datasets(str(tmp_path), 12)
    with pytest.raises(ValueError, match=f"cannot decode image {bad}"):
        train[0]
