"""ImageFolder trees and image files: class indexing, which files count, geometry, modes and bad files."""
import numpy as np
import pytest
from PIL import Image

from mobileconv.data import build_datasets, load_image


def save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def grey(value):
    return np.full((4, 4, 3), value, np.uint8)


def test_classes_sorted_by_code_point_and_labels_follow(tmp_path):
    names = ["b", "B", "10", "2", "a_b", "a"]  # code-point order: 10, 2, B, a, a_b, b
    for split in ("train", "val"):
        for k, name in enumerate(names):
            save(tmp_path / split / name / "x.png", grey(10 * k))
    train, val, info = build_datasets(str(tmp_path), 4)
    assert info.classes == ["10", "2", "B", "a", "a_b", "b"]
    for ds in (train, val):
        for image, label in (ds[i] for i in range(len(ds))):
            assert int(image[0, 0, 0]) == 10 * names.index(info.classes[label])  # the image of its own class


def test_nested_images_count_and_hidden_files_do_not(tmp_path):
    for split in ("train", "val"):
        save(tmp_path / split / "cat" / "b.png", grey(1))
        save(tmp_path / split / "cat" / "sub" / "a.PNG", grey(2))
        save(tmp_path / split / "dog" / "c.jpg", grey(3))
        (tmp_path / split / "cat" / "._b.png").write_bytes(b"macOS resource fork, not an image")
        save(tmp_path / split / "cat" / ".ipynb_checkpoints" / "b-checkpoint.png", grey(4))
        save(tmp_path / split / ".cache" / "x.png", grey(5))
        (tmp_path / split / "cat" / "notes.txt").write_text("not an image")
    train, _, info = build_datasets(str(tmp_path), 4)
    assert info.classes == ["cat", "dog"]
    found = [(path.relative_to(tmp_path).as_posix(), int(label)) for path, label in train.samples]
    assert found == [("train/cat/b.png", 0), ("train/cat/sub/a.PNG", 0), ("train/dog/c.jpg", 1)]
    assert [int(train[i][0][0, 0, 0]) for i in range(3)] == [1, 2, 3]  # every listed file decodes


@pytest.mark.parametrize("width, height", [(30, 10), (10, 30), (31, 10), (10, 33)])
def test_centre_crop_of_three_bands(tmp_path, width, height):
    """Shorter side already 10: no resize; the crop keeps exactly the middle of the long side."""
    long = max(width, height)
    ramp = np.arange(long, dtype=np.uint8)  # pixel value = position along the long side
    array = np.broadcast_to(ramp[None, :, None] if width > height else ramp[:, None, None], (height, width, 3))
    save(tmp_path / "x.png", np.ascontiguousarray(array))
    image = load_image(tmp_path / "x.png", 10)
    start = int(round((long - 10) / 2))  # torchvision's CenterCrop offset (23 / 2 -> 12, not 11)
    along = image[0, 0, :] if width > height else image[0, :, 0]
    assert image.shape == (3, 10, 10) and along.tolist() == list(range(start, start + 10))


def test_resize_keeps_aspect_and_output_size(tmp_path):
    save(tmp_path / "x.png", np.zeros((40, 100, 3), np.uint8))
    assert load_image(tmp_path / "x.png", 16).shape == (3, 16, 16)
    save(tmp_path / "y.png", np.zeros((3, 2, 3), np.uint8))
    assert load_image(tmp_path / "y.png", 16).shape == (3, 16, 16)  # upscaled


def test_modes_decode_to_rgb_as_documented(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (6, 6, 4), dtype=np.uint8)
    save(tmp_path / "rgba.png", rgba, "RGBA")
    assert np.array_equal(load_image(tmp_path / "rgba.png", 6).permute(1, 2, 0).numpy(), rgba[..., :3])

    la = rgba[..., :2].copy()
    save(tmp_path / "la.png", la, "LA")
    assert all(np.array_equal(c.numpy(), la[..., 0]) for c in load_image(tmp_path / "la.png", 6))

    palette = rng.integers(0, 256, (4, 3), dtype=np.uint8)
    index = rng.integers(0, 4, (6, 6), dtype=np.uint8)
    img = Image.fromarray(index, "P")
    img.putpalette(palette.flatten().tolist())
    img.save(tmp_path / "p.png", transparency=1)  # palette entry 1 transparent: its colour is kept
    assert np.array_equal(load_image(tmp_path / "p.png", 6).permute(1, 2, 0).numpy(), palette[index])

    bits = rng.integers(0, 2, (6, 6)).astype(bool)
    Image.fromarray(bits).save(tmp_path / "bits.png")
    assert all(np.array_equal(c.numpy(), bits * 255) for c in load_image(tmp_path / "bits.png", 6))


@pytest.mark.parametrize("case", ["garbage", "empty", "truncated", "folder", "broken_link", "too_large"])
def test_bad_image_file_is_named(tmp_path, monkeypatch, case):
    path = tmp_path / "x.png"
    if case == "garbage":
        path.write_bytes(b"GIF89a but not really")
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        save(tmp_path / "full.png", np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
        path.write_bytes((tmp_path / "full.png").read_bytes()[:200])
    elif case == "folder":
        path.mkdir()
    elif case == "broken_link":
        path.symlink_to(tmp_path / "gone.png")
    elif case == "too_large":  # PIL's decompression-bomb guard, shrunk so the test stays small
        save(path, np.zeros((40, 40, 3), np.uint8))
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match=f"^cannot decode image {path}: "):
        load_image(path, 8)
