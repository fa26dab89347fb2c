"""Audit (session 12) of data loading and inference on users' own files.

Defects covered, each against an independent oracle:

* EXIF orientation: a photo stored sideways with an orientation tag was fed to the model sideways
  (training, eval and predict alike); oracle ``PIL.ImageOps.exif_transpose`` and ``np.rot90``.
* ImageFolder listing: images behind a symbolic link to a folder inside a class folder were silently
  dropped (torchvision's ``os.walk(followlinks=True)`` counts them), and a folder named like an image
  (``scans.png/``) was listed as an image and failed to decode; oracle ``os.walk`` and hand counts.
* Very wide / tall images were resized whole before the centre crop (a 2 x 6,000 px strip took
  ~850 MB and >1 s for one 224 px crop); oracle: PIL's whole resize-then-crop, to +-1 grey level.
* A data folder holding both CIFAR-10's and CIFAR-100's archive folders silently trained on CIFAR-10.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from mobileconv.data import build_datasets, load_image

from .test_cifar import write_cifar10_binary, write_cifar_python

ORIENTATION = 0x0112
# stored pixels -> what a viewer shows, written out by hand (EXIF 2.32, tag 274): numpy on (H, W, C) arrays
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],                   # mirrored horizontally
    3: lambda a: a[::-1, ::-1],                # rotated 180
    4: lambda a: a[::-1],                      # mirrored vertically
    5: lambda a: a.transpose(1, 0, 2),         # mirrored along the main diagonal
    6: lambda a: np.rot90(a, k=-1),            # stored rotated 90 counter-clockwise: turn it clockwise
    7: lambda a: np.rot90(a, k=1)[:, ::-1],    # mirrored along the anti-diagonal
    8: lambda a: np.rot90(a, k=1),
}


def save_with_orientation(path, pixels, orientation):
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[ORIENTATION] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, exif=exif)


def centre_crop(array, size):
    """The centre ``size`` x ``size`` of an (H, W, C) array whose shorter side is ``size`` (torchvision's offset)."""
    h, w = array.shape[:2]
    top, left = int(round((h - size) / 2)), int(round((w - size) / 2))
    return array[top:top + size, left:left + size]


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_is_applied_as_pil_exif_transpose(tmp_path, orientation, suffix):
    rng = np.random.default_rng(orientation)
    stored = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)  # shorter side 6: no resize, only the crop
    path = tmp_path / f"x{suffix}"
    save_with_orientation(path, stored, orientation)
    image = load_image(path, 6).permute(1, 2, 0).numpy()

    with Image.open(path) as img:
        upright = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
        decoded = np.asarray(img.convert("RGB"))  # the stored pixels as PIL decodes them (JPEG: lossy)
    assert np.array_equal(upright, UPRIGHT[orientation](decoded))  # the two oracles agree
    np.testing.assert_array_equal(image, centre_crop(upright, 6))


def test_image_folder_and_predict_see_photos_upright(tmp_path, capsys):
    """An ImageFolder sample and ``mobileconv predict`` on a sideways-stored photo see what the same photo
    saved upright (rotated by PIL, no tag) gives."""
    import mobileconv
    from mobileconv.cli import main
    from mobileconv.engine.checkpoint import save_weights

    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    for split in ("train", "val"):
        save_with_orientation(tmp_path / "data" / split / "a" / "tagged.png", stored, 6)
        Image.fromarray(np.ascontiguousarray(np.rot90(stored, k=-1))).save(tmp_path / "data" / split / "a" / "upright.png")
        (tmp_path / "data" / split / "b").mkdir()
        Image.fromarray(stored).save(tmp_path / "data" / split / "b" / "other.png")
    train, _, info = build_datasets(str(tmp_path / "data"), 16)
    names = [p.name for p, _ in train.samples]
    assert names == ["tagged.png", "upright.png", "other.png"]
    assert torch.equal(train[0][0], train[1][0])

    torch.manual_seed(0)
    model = mobileconv.create_model("mobilenetv3_small_100_cifar", num_classes=2)
    with torch.no_grad():
        model.classifier.weight.normal_(0, 0.5)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None
        model.train()(torch.randn(8, 3, 16, 16))  # BN statistics that keep the activations input-dependent
    ckpt = tmp_path / "w.safetensors"
    save_weights(ckpt, model.state_dict(), {"model": "mobilenetv3_small_100_cifar", "classes": info.classes,
                                            "img_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3})
    folder = tmp_path / "data" / "val" / "a"
    capsys.readouterr()
    assert main(["predict", str(folder / "tagged.png"), str(folder / "upright.png"), str(folder.parent / "b" / "other.png"),
                 "--checkpoint", str(ckpt), "--device", "cpu", "--format", "json"]) == 0
    tagged, upright, other = (r["top"] for r in json.loads(capsys.readouterr().out))
    assert tagged == upright
    assert other != upright  # the model does respond to the orientation: the check above has teeth


def write(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (value,) * 3).save(path)


def test_symlinked_folders_inside_a_class_count_and_loops_end(tmp_path):
    root = tmp_path / "data"
    for split in ("train", "val"):
        cat = root / split / "cat"
        write(cat / "a.png", 1)
        write(tmp_path / f"extra_{split}" / "b.png", 2)
        write(tmp_path / f"extra_{split}" / "deep" / "c.PNG", 3)
        os.symlink(tmp_path / f"extra_{split}", cat / "more")  # a linked folder of images
        os.symlink(cat, cat / "loop")                          # a link back to the class folder
        os.symlink(root / split, cat / "up")                   # ... and to its split folder
        write(cat / "scans.png" / "d.png", 4)                  # a folder named like an image
        write(root / split / "dog" / "e.jpg", 5)
    train, val, info = build_datasets(str(root), 4)
    assert info.classes == ["cat", "dog"]
    for split, ds in (("train", train), ("val", val)):
        found = [(p.relative_to(root / split).as_posix(), int(label)) for p, label in ds.samples]
        # by hand: every image once, through the link where it lies behind one; no loop followed
        assert found == [("cat/a.png", 0), ("cat/more/b.png", 0), ("cat/more/deep/c.PNG", 0),
                         ("cat/scans.png/d.png", 0), ("dog/e.jpg", 1)], found
        assert [int(ds[i][0][0, 0, 0]) for i in range(len(ds))] == [1, 2, 3, 4, 5]  # each decodes to its file


def test_listing_matches_os_walk_following_links_on_a_loop_free_tree(tmp_path):
    """torchvision's ImageFolder lists ``os.walk(class_dir, followlinks=True)``'s files by extension."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k in range(25):
            parts = ["c%d" % rng.integers(3)] + ["s%d" % rng.integers(2) for _ in range(rng.integers(3))]
            write(root / split / os.path.join(*parts) / f"{k}.{rng.choice(['png', 'JPG', 'webp', 'bmp'])}")
        (root / split / "c0" / "notes.txt").write_text("not an image")
        write(tmp_path / f"shared_{split}" / "z.png")
        os.symlink(tmp_path / f"shared_{split}", root / split / "c1" / "linked")
    train, _, info = build_datasets(str(root), 4)
    expected = set()
    for label, name in enumerate(info.classes):
        for dirpath, _, files in os.walk(root / "train" / name, followlinks=True):
            expected |= {(os.path.join(dirpath, f), label) for f in files
                         if os.path.splitext(f)[1].lower() in (".png", ".jpg", ".webp", ".bmp")}
    assert {(str(p), int(label)) for p, label in train.samples} == expected
    assert len(train.samples) == len(expected) == 26


@pytest.mark.parametrize("height, width", [(2, 600), (600, 2), (3, 97), (50, 401)])
def test_very_wide_or_tall_image_resizes_only_the_crop(tmp_path, monkeypatch, height, width):
    rng = np.random.default_rng(height)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    size = 8
    # the oracle: PIL resizing the whole image (shorter side to 8) and cropping its centre
    img = Image.fromarray(pixels)
    # torchvision's Resize(int): the longer side int(size * long / short), truncated
    w, h = (size, int(size * height / width)) if width <= height else (int(size * width / height), size)
    left, top = int(round((w - size) / 2)), int(round((h - size) / 2))  # torchvision's CenterCrop offsets
    expected = np.asarray(img.resize((w, h), Image.BILINEAR).crop((left, top, left + size, top + size))).astype(int)

    requested = []
    resize = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda self, out, *a, **k: requested.append(out) or resize(self, out, *a, **k))
    image = load_image(tmp_path / "x.png", size).permute(1, 2, 0).numpy().astype(int)
    assert np.abs(image - expected).max() <= 1  # the same geometry, up to rounding
    assert max(a * b for a, b in requested) <= 4 * size * size, requested  # never the whole 8 x 2,400 image


def test_ordinary_aspect_ratios_give_the_whole_resize_exactly(tmp_path):
    """Up to 4:1 the image is resized whole as before: bit-identical to PIL's resize-then-crop."""
    rng = np.random.default_rng(1)
    for height, width in [(30, 40), (40, 30), (100, 26), (9, 9), (5, 20)]:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "x.png")
        scale = 12 / min(width, height)
        w, h = max(12, round(width * scale)), max(12, round(height * scale))
        left, top = (w - 12) // 2, (h - 12) // 2
        expected = np.asarray(Image.fromarray(pixels).resize((w, h), Image.BILINEAR).crop((left, top, left + 12, top + 12)))
        np.testing.assert_array_equal(load_image(tmp_path / "x.png", 12).permute(1, 2, 0).numpy(), expected)


def test_folder_with_both_cifar10_and_cifar100_is_refused_not_guessed(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-100-python").mkdir()
    write_cifar_python(tmp_path / "cifar-10-batches-py", cifar100=False, protocol=2, bytes_keys=False)
    write_cifar_python(tmp_path / "cifar-100-python", cifar100=True, protocol=2, bytes_keys=False)
    with pytest.raises(ValueError, match=r"holds both CIFAR-10 and CIFAR-100 .*cifar-100-python.*pass the folder"):
        build_datasets(str(tmp_path), 32)
    # each archive folder by itself, and a folder with one of them, still read
    assert build_datasets(str(tmp_path / "cifar-100-python"), 32)[2].num_classes == 100
    assert build_datasets(str(tmp_path / "cifar-10-batches-py"), 32)[2].num_classes == 10


def test_cifar10_binary_and_python_archives_together_are_one_dataset(tmp_path):
    (tmp_path / "cifar-10-batches-bin").mkdir()
    (tmp_path / "cifar-10-batches-py").mkdir()
    write_cifar10_binary(tmp_path / "cifar-10-batches-bin")
    write_cifar_python(tmp_path / "cifar-10-batches-py", cifar100=False, protocol=2, bytes_keys=False)
    _, _, info = build_datasets(str(tmp_path), 32)
    assert info.kind == "cifar10"


@pytest.mark.parametrize("exif", [b"Exif\x00\x00garbage", b"Exif\x00\x00II*\x00\xff\xff\xff\x7f",
                                  b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12\xff\xff"])
def test_unreadable_exif_leaves_the_image_decodable(tmp_path, exif):
    """Reading the orientation must not make a photo with a damaged EXIF block undecodable (a regression guard)."""
    import warnings

    pixels = np.full((8, 8, 3), 100, np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns "Corrupt EXIF data" (writing and reading)
        Image.fromarray(pixels).save(tmp_path / "x.jpg", exif=exif)
        image = load_image(tmp_path / "x.jpg", 8)
        with Image.open(tmp_path / "x.jpg") as img:
            expected = np.asarray(img.convert("RGB"))
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), expected)


@pytest.mark.parametrize("width", [11, 12, 13, 15])
def test_centre_crop_offset_is_torchvisions(tmp_path, width):
    """torchvision's CenterCrop takes ``int(round((w - size) / 2))``: for w - size = 3 or 7 that is one pixel
    right of ``(w - size) // 2``, which the loader used to take."""
    size = 8
    pixels = np.arange(size * width, dtype=np.uint8).reshape(size, width, 1).repeat(3, 2) * 2
    Image.fromarray(pixels).save(tmp_path / "x.png")  # shorter side already 8: no resize, a pure crop
    left = int(round((width - size) / 2))
    np.testing.assert_array_equal(load_image(tmp_path / "x.png", size).permute(1, 2, 0).numpy(),
                                  pixels[:, left:left + size])
