"""``mobileconv predict`` with a checkpoint that records nothing (a timm state_dict): the model's own
resolution, normalisation and test crop are used, as timm's ``resolve_data_config`` would.

The oracle: the same pixels resized by PIL as timm's evaluation transform does (shorter side to
floor(224 / 0.875) = 256, bicubic, centre 224 crop: the constants below, not read from the model) and
normalised by hand with ImageNet's mean / std, fed to the model loaded with ``create_model(..., pretrained=...)``.
"""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import mobileconv
from mobileconv.cli import main

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.mark.parametrize("options, crop", [([], "timm"), (["--crop-pct", "1", "--interpolation", "bilinear"], None)])
def test_predict_without_metadata_uses_the_models_imagenet_preprocessing(reference_dir, tmp_path, capsys, options,
                                                                          crop):
    checkpoint = reference_dir / "timm_mixnet_s.safetensors"
    # 224 px (mixnet_s' input size): with --crop-pct 1, predict's resize and crop leave it as it is
    pixels = np.random.default_rng(0).integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "x.png"), "--model", "mixnet_s", "--checkpoint", str(checkpoint),
                 "--device", "cpu", "--format", "json", *options]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]

    model = mobileconv.create_model("mixnet_s", pretrained=str(checkpoint)).eval()
    if crop == "timm":
        pixels = np.asarray(Image.fromarray(pixels).resize((256, 256), Image.BICUBIC))[16:240, 16:240]
    x = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().unsqueeze(0) / 255
    with torch.no_grad():
        expected = model((x - IMAGENET_MEAN) / IMAGENET_STD).softmax(1)[0].topk(5)
    assert [t["index"] for t in top] == expected.indices.tolist()
    np.testing.assert_allclose([t["prob"] for t in top], expected.values.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("recorded", [False, True])
def test_predict_normalisation_is_the_recorded_one_else_the_models(tmp_path, recorded, model_inputs):
    """The tensor fed to the model: recorded mean / std win over the model's ``pretrained_cfg``."""
    from mobileconv.engine import inference
    from mobileconv.engine.checkpoint import save_weights

    model_name = "mobilenetv3_small_100_cifar"  # pretrained_cfg: CIFAR-10's mean / std, 32 px
    mean, std = ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6]) if recorded else ([0.4914, 0.4822, 0.4465],
                                                                     [0.2470, 0.2435, 0.2616])
    path = tmp_path / "w.safetensors"
    meta = {"model": model_name, "mean": mean, "std": std} if recorded else {}
    save_weights(path, mobileconv.create_model(model_name, num_classes=10).state_dict(), meta)
    pixels = np.random.default_rng(1).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")

    inference.predict_images(model_name, path, [tmp_path / "x.png"], device="cpu")
    seen = model_inputs
    x = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().unsqueeze(0) / 255
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert len(seen) == 1 and seen[0].shape == (1, 3, 32, 32)
    torch.testing.assert_close(seen[0], expected, rtol=1e-5, atol=1e-5)


def test_predict_without_recorded_size_uses_the_recorded_datasets_as_eval_does(tmp_path, model_inputs):
    """A checkpoint recording ``dataset=digits`` and no img_size: eval ran it at 16 px, predict at the model's 32."""
    from mobileconv.engine import inference
    from mobileconv.engine.checkpoint import save_weights

    model_name = "mobilenetv3_small_100_cifar"  # pretrained_cfg input size: 32
    path = tmp_path / "w.safetensors"
    save_weights(path, mobileconv.create_model(model_name, num_classes=10).state_dict(),
                 {"model": model_name, "dataset": "digits"})
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "x.png")
    inference.predict_images(model_name, path, [tmp_path / "x.png"], device="cpu")
    loaded = inference.load_checkpoint(model_name, path, torch.device("cpu"), False)
    assert [x.shape for x in model_inputs] == [(1, 3, 16, 16)] and inference.resolve_img_size(loaded, None, "digits") == 16
