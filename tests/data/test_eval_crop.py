"""Test-time resize and centre crop (``crop_pct`` / ``interpolation``), as timm's evaluation transform.

Oracles: PIL's own ``resize`` / ``crop`` with the geometry written out here (shorter side to
``floor(size / crop_pct)``, longer side truncated as torchvision's ``Resize``, crop at
``round((w - size) / 2)``), and the values timm and torchvision publish for these weights.
"""
import numpy as np
import pytest
import torch
from PIL import Image

import mobileconv
from mobileconv.cli import main
from mobileconv.data import build_datasets, build_test_dataset, load_image
from mobileconv.deploy.weights import convert_checkpoint
from mobileconv.deploy.weights import save_weights as save_model_weights
from mobileconv.engine import inference
from mobileconv.engine.checkpoint import save_weights


def _photo(path, width, height, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


@pytest.mark.parametrize("crop_pct, interpolation, scaled, resample", [
    (0.875, "bicubic", (384, 256), Image.BICUBIC),  # 224 / 0.875 = 256; 300 x 200 -> 384 x 256
    (0.5, "bilinear", (672, 448), Image.BILINEAR),
    (1.0, "bilinear", (336, 224), Image.BILINEAR),
])
def test_load_image_resizes_to_size_over_crop_pct_then_crops_the_centre(tmp_path, crop_pct, interpolation, scaled,
                                                                        resample):
    pixels = _photo(tmp_path / "x.png", 300, 200)
    w, h = scaled
    left, top = round((w - 224) / 2), round((h - 224) / 2)
    expected = np.asarray(Image.fromarray(pixels).resize((w, h), resample).crop((left, top, left + 224, top + 224)))
    got = load_image(tmp_path / "x.png", 224, crop_pct, interpolation)
    assert got.shape == (3, 224, 224) and got.dtype == torch.uint8
    np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), expected)


def test_bicubic_and_bilinear_differ(tmp_path):
    _photo(tmp_path / "x.png", 300, 200)
    assert not torch.equal(load_image(tmp_path / "x.png", 64, 0.875, "bicubic"),
                           load_image(tmp_path / "x.png", 64, 0.875, "bilinear"))


@pytest.mark.parametrize("crop_pct, interpolation, message", [
    (0, "bilinear", "crop_pct must be a number from 0.01 to 1"),
    (1e-320, "bilinear", "crop_pct must be a number from 0.01 to 1"),  # size / crop_pct overflows
    (1.5, "bilinear", "crop_pct must be a number from 0.01 to 1"),
    (True, "bilinear", "crop_pct must be a number from 0.01 to 1"),
    (0.875, "nearest", "interpolation must be one of bilinear, bicubic"),
])
def test_bad_crop_values_are_refused(tmp_path, crop_pct, interpolation, message):
    _photo(tmp_path / "x.png", 40, 40)
    with pytest.raises(ValueError, match=message):
        load_image(tmp_path / "x.png", 32, crop_pct, interpolation)


@pytest.mark.parametrize("name, crop_pct, interpolation", [
    ("mixnet_s", 0.875, "bicubic"),  # timm: mixnet_s.ft_in1k, mobilenetv3_large_100.ra_in1k ...
    ("mobilenetv3_large_100", 0.875, "bicubic"),
    ("mobilenetv3_small_100_cifar", 1.0, "bilinear"),  # 32 x 32 images, taken whole
])
def test_pretrained_cfg_names_the_test_crop(name, crop_pct, interpolation):
    cfg = mobileconv.create_model(name).pretrained_cfg
    assert (cfg["crop_pct"], cfg["interpolation"]) == (crop_pct, interpolation)


def test_the_default_crop_is_the_one_each_source_was_evaluated_with(reference_dir, tmp_path):
    cpu = torch.device("cpu")

    def crop(name, path):
        return inference.resolve_crop(inference.load_checkpoint(name, path, cpu))

    # timm: the model's pretrained_cfg; torchvision: Resize(256) + CenterCrop(224), bilinear
    assert crop("mixnet_s", reference_dir / "timm_mixnet_s.safetensors") == (0.875, "bicubic")
    assert crop("mobilenetv3_small_100", reference_dir / "torchvision_mobilenet_v3_small.safetensors") == (
        0.875, "bilinear")
    # converted: evaluated as the weights it came from
    convert_checkpoint(reference_dir / "torchvision_mobilenet_v3_small.safetensors", tmp_path / "tv.safetensors",
                       "mobilenetv3_small_100")
    assert crop(None, tmp_path / "tv.safetensors") == (0.875, "bilinear")
    # mobileconv's own: its test images keep the whole shorter side, unless the file records otherwise
    model = mobileconv.create_model("mobilenetv3_small_100_cifar", num_classes=10)
    save_model_weights(model, tmp_path / "own.safetensors", {"model": "mobilenetv3_small_100_cifar"})
    assert crop(None, tmp_path / "own.safetensors") == (1.0, "bilinear")
    save_model_weights(model, tmp_path / "rec.safetensors", {"model": "mobilenetv3_small_100_cifar",
                                                             "crop_pct": "0.9", "interpolation": "bicubic"})
    assert crop(None, tmp_path / "rec.safetensors") == (0.9, "bicubic")
    loaded = inference.load_checkpoint(None, tmp_path / "rec.safetensors", cpu)
    assert inference.resolve_crop(loaded, 0.5, "bilinear") == (0.5, "bilinear")  # given values win
    save_model_weights(model, tmp_path / "bad.safetensors", {"model": "mobilenetv3_small_100_cifar",
                                                             "crop_pct": "1.2"})
    with pytest.raises(ValueError, match=r"bad.safetensors: recorded crop_pct 1.2 is not a number from 0.01 to 1"):
        crop(None, tmp_path / "bad.safetensors")


def _tree(root, size=48):
    for split in ("train", "val"):
        for label, name in enumerate(("cat", "dog")):
            (root / split / name).mkdir(parents=True)
            _photo(root / split / name / "a.png", size + 20 * label, size, seed=label)


def test_only_the_image_folder_test_split_is_cropped(tmp_path):
    _tree(tmp_path)
    train, _, _ = build_datasets(str(tmp_path), 32)
    val, _ = build_test_dataset(str(tmp_path), 32, 0.5, "bicubic")
    assert (val.crop_pct, val.interpolation) == (0.5, "bicubic")
    assert (train.crop_pct, train.interpolation) == (1.0, "bilinear")  # the random resized crop follows
    assert torch.equal(val[0][0], load_image(tmp_path / "val" / "cat" / "a.png", 32, 0.5, "bicubic"))
    assert (val.subset([1]).crop_pct, val.subset([1]).interpolation) == (0.5, "bicubic")


def test_eval_feeds_the_model_timms_crop_for_a_checkpoint_without_metadata(tmp_path, model_inputs):
    """A timm-style state_dict (no metadata) of a 2-class ImageNet-form model on an ImageFolder tree."""
    _tree(tmp_path / "data", size=40)
    path = tmp_path / "w.safetensors"
    save_weights(path, mobileconv.create_model("mobilenetv3_small_100", num_classes=2).state_dict())
    result = inference.evaluate_checkpoint("mobilenetv3_small_100", path, str(tmp_path / "data"), img_size=32,
                                           device="cpu")
    assert (result["crop_pct"], result["interpolation"]) == (0.875, "bicubic")
    # floor(32 / 0.875) = 36: the 40 x 40 cat to 36 x 36, the 60 x 40 dog to 54 x 36; centre 32 x 32, bicubic
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    expected = []
    for name, (w, h) in (("cat", (36, 36)), ("dog", (54, 36))):
        img = Image.open(tmp_path / "data" / "val" / name / "a.png").resize((w, h), Image.BICUBIC)
        left, top = round((w - 32) / 2), round((h - 32) / 2)
        pixels = torch.from_numpy(np.asarray(img.crop((left, top, left + 32, top + 32))).copy())
        expected.append((pixels.permute(2, 0, 1).float() / 255 - mean) / std)
    torch.testing.assert_close(torch.cat(model_inputs), torch.stack(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("option", [["--crop-pct", "0.875"], ["--interpolation", "bicubic"]])
def test_crop_options_are_refused_for_array_data(tmp_path, capsys, option):
    path = tmp_path / "w.safetensors"
    save_model_weights(mobileconv.create_model("mobilenetv3_small_100_cifar", num_classes=10), path,
                       {"model": "mobilenetv3_small_100_cifar"})
    assert main(["eval", "--checkpoint", str(path), "--data", "digits", "--device", "cpu", *option]) == 2
    assert "--data digits is an array dataset (digits), resized whole; crop_pct and interpolation apply to image " \
           "files" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "1e-320", "0.009", "1.5", "nan", "x"])
def test_cli_crop_pct_must_be_in_zero_one(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as e:
        main(["predict", "x.png", "--checkpoint", "w.safetensors", "--crop-pct", value])
    assert e.value.code == 2
    assert "expected a number from 0.01 to 1" in capsys.readouterr().err


def test_a_small_crop_pct_resizes_only_the_crop_region_to_the_same_pixels(tmp_path):
    """crop_pct 0.05: the whole image resized to floor(16 / 0.05) = 320 px would be 20x the crop's side; only the
    crop's region is resized (bounded memory for any crop_pct), to the pixels of the whole resize up to rounding."""
    pixels = _photo(tmp_path / "x.png", 40, 30)
    w, h = 426, 320  # int(320 * 40 / 30)
    left, top = round((w - 16) / 2), round((h - 16) / 2)
    expected = np.asarray(Image.fromarray(pixels).resize((w, h), Image.BICUBIC).crop((left, top, left + 16, top + 16)))
    got = load_image(tmp_path / "x.png", 16, 0.05, "bicubic").permute(1, 2, 0).numpy()
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_a_mobileconv_file_without_a_dataset_takes_the_models_crop(tmp_path):
    """save_weights() of an ImageNet model (a timm-pretrained one, say): not a `mobileconv train` run's file."""
    cpu = torch.device("cpu")
    model = mobileconv.create_model("mixnet_s")
    save_model_weights(model, tmp_path / "plain.safetensors", {"model": "mixnet_s"})
    save_model_weights(model, tmp_path / "run.safetensors", {"model": "mixnet_s", "dataset": str(tmp_path)})
    assert inference.resolve_crop(inference.load_checkpoint(None, tmp_path / "plain.safetensors", cpu)) == (
        0.875, "bicubic")
    assert inference.resolve_crop(inference.load_checkpoint(None, tmp_path / "run.safetensors", cpu)) == (
        1.0, "bilinear")


def test_converting_a_converted_file_keeps_its_origin(reference_dir, tmp_path):
    cpu = torch.device("cpu")
    convert_checkpoint(reference_dir / "timm_mixnet_s.safetensors", tmp_path / "once.safetensors", "mixnet_s")
    convert_checkpoint(tmp_path / "once.safetensors", tmp_path / "twice.safetensors", "mixnet_s")
    loaded = inference.load_checkpoint(None, tmp_path / "twice.safetensors", cpu)
    assert loaded.meta["converted_from"] == "timm" and inference.resolve_crop(loaded) == (0.875, "bicubic")


def test_mobilenetv1_is_normalised_to_minus_one_one():
    """TF-Slim's Inception preprocessing, which timm's mobilenetv1_*.ra4 weights were trained with."""
    cfg = mobileconv.create_model("mobilenetv1_100").pretrained_cfg
    assert (cfg["mean"], cfg["std"]) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
