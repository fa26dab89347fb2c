"""Audit (session 13) of the data pipeline and of eval / predict preprocessing.

Defects covered, each against an independent oracle:

* Normalisation: a checkpoint recording no mean / std was normalised with the dataset's statistics by
  ``eval`` and with the model's ``pretrained_cfg`` by ``predict``, so the same image gave two answers.
  Both now take the ``pretrained_cfg`` (timm's ``resolve_data_config``); oracle: CIFAR-10's constants
  written below and the pixels normalised by hand.
* A symbolic link named like an image whose target is missing was listed, and failed only when an
  epoch reached it; it is now refused when the folder is listed, naming the link.
* Class folders named alike in different Unicode forms (macOS writes ``café`` as NFD) made train/ and
  val/ "differ" with lists that printed identically; class names are matched in NFC form.
* ``load_image`` rounded the resized longer side where torchvision's ``Resize(int)`` truncates it
  (``int(size * long / short)``), so about half the aspect ratios gave other pixels than torchvision's
  ``Resize(size)`` + ``CenterCrop(size)``; oracle: PIL's resize to the truncated size, then the crop.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from mobileconv.data import build_datasets, load_image

MODEL = "mobilenetv3_small_100_cifar"  # 32 px; its pretrained_cfg normalises with CIFAR-10's statistics
CIFAR10_MEAN, CIFAR10_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
IMAGENET_MEAN = [0.485, 0.456, 0.406]  # what an ImageFolder's DataInfo records


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def normalised(pixels, mean, std):
    x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.mark.parametrize("records_dataset", [False, True])
def test_eval_and_predict_normalise_alike_when_the_checkpoint_records_none(tmp_path, model_inputs, records_dataset):
    import mobileconv
    from mobileconv.engine.checkpoint import save_weights
    from mobileconv.engine.inference import evaluate_checkpoint, predict_images

    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
    root = tmp_path / "data"
    for split in ("train", "val"):
        for name, array in zip("ab", pixels):
            save(root / split / name / "x.png", array)
    path = tmp_path / "w.safetensors"
    meta = {"model": MODEL, "dataset": str(root)} if records_dataset else {"model": MODEL}
    save_weights(path, mobileconv.create_model(MODEL, num_classes=2).state_dict(), meta)

    seen = model_inputs
    evaluate_checkpoint(None, path, data=str(root), img_size=32, device="cpu")
    predict_images(None, path, [root / "val" / "a" / "x.png", root / "val" / "b" / "x.png"], device="cpu")
    assert [tuple(x.shape) for x in seen] == [(2, 3, 32, 32), (1, 3, 32, 32), (1, 3, 32, 32)]
    expected = normalised(pixels, CIFAR10_MEAN, CIFAR10_STD)  # the model's, not the ImageFolder's ImageNet ones
    torch.testing.assert_close(seen[0], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat(seen[1:]), expected, rtol=1e-5, atol=1e-5)


def test_recorded_statistics_still_win_in_eval(tmp_path, model_inputs):
    """A run's own mean / std (here ImageNet's, recorded by the ImageFolder run) beat the model's."""
    import mobileconv
    from mobileconv.engine.checkpoint import save_weights
    from mobileconv.engine.inference import evaluate_checkpoint

    pixels = [np.full((32, 32, 3), 60 * k, np.uint8) for k in range(2)]
    root = tmp_path / "data"
    for split in ("train", "val"):
        for name, array in zip("ab", pixels):
            save(root / split / name / "x.png", array)
    path = tmp_path / "w.safetensors"
    std = [0.229, 0.224, 0.225]
    save_weights(path, mobileconv.create_model(MODEL, num_classes=2).state_dict(),
                 {"model": MODEL, "mean": IMAGENET_MEAN, "std": std})
    seen = model_inputs
    evaluate_checkpoint(None, path, data=str(root), img_size=32, device="cpu")
    torch.testing.assert_close(seen[0], normalised(pixels, IMAGENET_MEAN, std), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", ["missing", "loop"])
def test_broken_image_link_is_refused_when_the_folder_is_listed(tmp_path, target):
    root = tmp_path / "data"
    for split in ("train", "val"):
        for name in ("a", "b"):
            save(root / split / name / "x.png", np.zeros((4, 4, 3), np.uint8))
    link = root / "train" / "b" / "y.jpg"
    os.symlink(tmp_path / "gone.jpg" if target == "missing" else link, link)
    (root / "train" / "a" / "notes.txt").symlink_to(tmp_path / "gone.txt")  # not an image: ignored, as other files
    with pytest.raises(ValueError, match=rf"^image {link} is a symbolic link to .*, which does not exist"):
        build_datasets(str(root), 4)


def test_link_to_an_existing_image_still_counts(tmp_path):
    root = tmp_path / "data"
    for split in ("train", "val"):
        for k, name in enumerate("ab"):
            save(root / split / name / "x.png", np.full((4, 4, 3), 10 * k, np.uint8))
    save(tmp_path / "elsewhere" / "z.png", np.full((4, 4, 3), 77, np.uint8))
    os.symlink(tmp_path / "elsewhere" / "z.png", root / "train" / "a" / "z.png")
    train, _, _ = build_datasets(str(root), 4)
    assert [(p.name, int(label)) for p, label in train.samples] == [("x.png", 0), ("z.png", 0), ("x.png", 1)]
    assert int(train[1][0][0, 0, 0]) == 77


NFC, NFD = "caf\u00e9", "cafe\u0301"  # one name: U+00E9, or "e" and U+0301 COMBINING ACUTE ACCENT as macOS writes it


@pytest.mark.parametrize("train_form, val_form", [(NFD, NFC), (NFC, NFD), (NFD, NFD)])
def test_class_names_in_either_unicode_form_are_one_class(tmp_path, train_form, val_form):
    root = tmp_path / "data"
    for split, form in (("train", train_form), ("val", val_form)):
        save(root / split / form / "x.png", np.full((4, 4, 3), 200, np.uint8))
        save(root / split / "cafz" / "y.png", np.full((4, 4, 3), 100, np.uint8))
    train, val, info = build_datasets(str(root), 4)
    # NFC "caf\u00e9" sorts after "cafz" by code point (0xE9 > "z"): the order is that of the NFC names
    assert info.classes == ["cafz", NFC]
    for split, form, ds in (("train", train_form, train), ("val", val_form, val)):
        assert [(p.relative_to(root / split).parts[0], int(label)) for p, label in ds.samples] == [("cafz", 0),
                                                                                                 (form, 1)]
        assert [int(ds[i][0][0, 0, 0]) for i in range(2)] == [100, 200]  # read from the folder on disk


def test_both_unicode_forms_in_one_split_are_refused_with_code_points(tmp_path):
    root = tmp_path / "data"
    for split in ("train", "val"):
        save(root / split / NFC / "x.png", np.zeros((4, 4, 3), np.uint8))
    save(root / "train" / NFD / "y.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError) as e:
        build_datasets(str(root), 4)
    assert "are one class name in different Unicode forms" in str(e.value)
    assert "caf\\xe9" in str(e.value) and "cafe\\u0301" in str(e.value)


def test_classes_that_print_alike_show_their_code_points(tmp_path):
    """Latin "a" in train/, Cyrillic "\u0430" in val/: the error must show which is which."""
    root = tmp_path / "data"
    save(root / "train" / "a" / "x.png", np.zeros((4, 4, 3), np.uint8))
    save(root / "val" / "\u0430" / "x.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"only in train: \['a'\], only in val: \['\u0430' \(\\u0430\)\]"):
        build_datasets(str(root), 4)


def test_eval_accepts_classes_recorded_in_nfd(tmp_path):
    """A checkpoint trained on a macOS tree records the NFD name; the same data in NFC is its data."""
    import mobileconv
    from mobileconv.engine.checkpoint import save_weights
    from mobileconv.engine.inference import evaluate_checkpoint

    root = tmp_path / "data"
    for split in ("train", "val"):
        save(root / split / "cafz" / "x.png", np.zeros((32, 32, 3), np.uint8))
        save(root / split / NFC / "x.png", np.zeros((32, 32, 3), np.uint8))
    path = tmp_path / "w.safetensors"
    save_weights(path, mobileconv.create_model(MODEL, num_classes=2).state_dict(),
                 {"model": MODEL, "classes": ["cafz", NFD]})
    assert evaluate_checkpoint(None, path, data=str(root), img_size=32, device="cpu")["classes"] == ["cafz", NFC]


@pytest.mark.parametrize("width, height, size", [(11, 7, 8), (7, 11, 8), (17, 10, 8), (10, 17, 8), (40, 30, 12),
                                                 (375, 500, 224), (29, 9, 8)])
def test_resize_is_torchvisions_with_the_longer_side_truncated(tmp_path, width, height, size):
    pixels = np.random.default_rng(width * height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    save(tmp_path / "x.png", pixels)
    # torchvision's Resize(size): shorter side to size, longer side int(size * long / short); then CenterCrop
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)
    w, h = (size, new_long) if width <= height else (new_long, size)
    left, top = int(round((w - size) / 2)), int(round((h - size) / 2))
    expected = np.asarray(Image.fromarray(pixels).resize((w, h), Image.BILINEAR))[top:top + size, left:left + size]
    np.testing.assert_array_equal(load_image(tmp_path / "x.png", size).permute(1, 2, 0).numpy(), expected)
