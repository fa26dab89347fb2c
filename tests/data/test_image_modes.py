"""ImageFolder decoding of 16-bit grey images, and class folders without images."""
import numpy as np
import pytest
from PIL import Image

from mobileconv.data.datasets import build_datasets, load_image


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_grey_image_is_scaled_to_8_bits(tmp_path, suffix):
    values = np.array([[0, 257 * 10], [257 * 128, 65535]], dtype=np.uint16).repeat(4, 0).repeat(4, 1)
    path = tmp_path / f"grey16{suffix}"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")  # PIL reads it as a 16-bit grey image
    image = load_image(path, 8)
    expected = np.array([[0, 10], [128, 255]], dtype=np.uint8).repeat(4, 0).repeat(4, 1)  # v * 255 / 65535
    assert image.shape == (3, 8, 8)
    for channel in image:
        assert np.array_equal(channel.numpy(), expected)


def _tree(root, train_classes, val_classes):
    for split, classes in (("train", train_classes), ("val", val_classes)):
        for name, count in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("train, val, where", [
    ({"a": 2, "b": 0}, {"a": 1, "b": 1}, "train/b/"),
    ({"a": 2, "b": 2}, {"a": 1, "b": 0}, "val/b/"),
])
def test_class_folder_without_images_is_refused(tmp_path, train, val, where):
    root = _tree(tmp_path / "tree", train, val)
    (root / where / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError) as e:
        build_datasets(str(root), 8)
    assert f"--data {root}: {where} holds no images" in str(e.value)
    assert "every class needs images in both train/ and val/" in str(e.value)


def test_floating_point_image_is_refused_by_path(tmp_path):
    """A mode-F TIFF of values in [0, 1] would come out black through PIL's convert: refused, naming the file."""
    path = tmp_path / "float.tif"
    Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8), "F").save(path)
    with Image.open(path) as img:
        assert img.mode == "F"  # the file really is what the test means
    with pytest.raises(ValueError, match=f"cannot decode image {path}: a 32-bit floating-point image"):
        load_image(path, 8)


def test_32bit_integer_image_is_refused_by_path(tmp_path):
    """A mode-I TIFF with values beyond 16 bits was scaled as 16-bit and clipped (nearly all white): refused."""
    path = tmp_path / "int32.tif"
    Image.fromarray(np.arange(64, dtype=np.int32).reshape(8, 8) * 100_000, "I").save(path)
    with Image.open(path) as img:
        assert img.mode == "I" and np.asarray(img).max() == 6_300_000  # the file really is what the test means
    with pytest.raises(ValueError, match=f"cannot decode image {path}: a 32-bit integer image .* values from 0 to "
                                         "6300000 has no 16-bit range"):
        load_image(path, 8)
    negative = tmp_path / "negative.tif"
    Image.fromarray(np.full((8, 8), -5, np.int32), "I").save(negative)
    with pytest.raises(ValueError, match="values from -5 to -5"):
        load_image(negative, 8)
    within = tmp_path / "int32_16bit_values.tif"  # a 32-bit file that holds 16-bit values: scaled like one
    Image.fromarray(np.full((8, 8), 65535, np.int32), "I").save(within)
    assert load_image(within, 8).eq(255).all()
