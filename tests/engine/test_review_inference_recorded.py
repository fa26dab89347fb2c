"""Review of ``mobileconv eval`` / ``predict``: which recorded preprocessing and class names apply.

Oracles: pixels read back from the PNG files the test writes, normalised by hand with constants
written here, fed to the model loaded with ``create_model(..., pretrained=...)``; and torchvision's
reference checkpoint (``../shared/fixtures/reference``).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import mobileconv
from mobileconv.cli import main
from mobileconv.engine.checkpoint import save_weights

MODEL = "mobilenetv3_small_100_cifar"
DIGITS = [str(d) for d in range(10)]  # mobileconv's digits classes, and the folders of the tree below
DIGITS_MEAN, DIGITS_STD = [0.305] * 3, [0.324] * 3
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def normalise(pixels: np.ndarray, mean, std) -> torch.Tensor:
    x = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().unsqueeze(0) / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights that respond to their input: a random classifier (a fresh one is zero) and BatchNorm
    statistics of a batch of random inputs (a fresh model's 0 / 1 let the activations collapse)."""
    torch.manual_seed(seed)
    model = mobileconv.create_model(MODEL, num_classes=10)
    with torch.no_grad():
        model.classifier.weight.normal_(0, 0.05)
        model.classifier.bias.uniform_(-0.2, 0.2)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None  # running statistics = those of the batch below
        model.train()(torch.randn(32, 3, 16, 16))
    return model.state_dict()


def run_json(args, capsys):
    capsys.readouterr()
    code = main([str(a) for a in args] + ["--format", "json", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_eval_normalises_as_the_checkpoint_records_not_as_the_data(tmp_path, capsys):
    """A digits checkpoint scored on an image folder whose classes are also "0".."9": the images must be
    normalised with the recorded (training) mean / std; eval used the folder's ImageNet statistics."""
    rng = np.random.default_rng(0)
    pixels = {}
    for split in ("train", "val"):
        for name in DIGITS:
            (tmp_path / "data" / split / name).mkdir(parents=True)
            image = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)  # at img_size: no resize
            Image.fromarray(image).save(tmp_path / "data" / split / name / "a.png")
            pixels[split, name] = image
    path = tmp_path / "last.safetensors"
    save_weights(path, random_state(),
                 {"format": "mobileconv", "model": MODEL, "dataset": "digits", "num_classes": 10, "classes": DIGITS,
                  "img_size": 16, "mean": DIGITS_MEAN, "std": DIGITS_STD})

    result = run_json(["eval", "--checkpoint", path, "--data", tmp_path / "data"], capsys)

    model = mobileconv.create_model(MODEL, num_classes=10, pretrained=path).eval()
    labels = torch.arange(10)
    with torch.no_grad():
        def loss(mean, std):
            x = torch.cat([normalise(pixels["val", name], mean, std) for name in DIGITS])
            return F.cross_entropy(model(x), labels).item()
        recorded, imagenet = loss(DIGITS_MEAN, DIGITS_STD), loss(IMAGENET_MEAN, IMAGENET_STD)
    assert abs(recorded - imagenet) > 1e-3  # the two normalisations give different scores
    assert result["count"] == 10 and result["img_size"] == 16
    assert result["loss"] == pytest.approx(recorded, rel=1e-5)


def write_summary(folder, **values):
    summary = {"model": MODEL, "dataset": "digits", "num_classes": 10, "classes": DIGITS, "img_size": 16,
               "mean": DIGITS_MEAN, "std": DIGITS_STD, **values}
    (folder / "summary.json").write_text(json.dumps(summary))


def test_another_runs_summary_does_not_describe_a_foreign_checkpoint(reference_dir, tmp_path, capsys):
    """A torchvision checkpoint copied into a digits run folder: predict used to take the run's 10 class
    names, 16 px and digits statistics from its summary.json, and refused the 1000-class checkpoint."""
    run = tmp_path / "run"
    run.mkdir()
    write_summary(run)
    checkpoint = run / "mobilenet_v3_small.safetensors"
    checkpoint.write_bytes((reference_dir / "torchvision_mobilenet_v3_small.safetensors").read_bytes())
    pixels = np.random.default_rng(1).integers(0, 256, size=(224, 224, 3), dtype=np.uint8)  # the model's size
    Image.fromarray(pixels).save(tmp_path / "x.png")

    top = run_json(["predict", tmp_path / "x.png", "--checkpoint", checkpoint, "--model", "mobilenetv3_small_100",
                    "--top-k", "3"], capsys)[0]["top"]

    model = mobileconv.create_model("mobilenetv3_small_100", pretrained=checkpoint).eval()
    with torch.no_grad():
        expected = model(normalise(pixels, IMAGENET_MEAN, IMAGENET_STD)).softmax(1)[0].topk(3)
    assert [t["index"] for t in top] == expected.indices.tolist()
    assert [t["class"] for t in top] == [str(i) for i in expected.indices.tolist()]
    np.testing.assert_allclose([t["prob"] for t in top], expected.values.numpy(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("summary_model, used", [(MODEL, True), ("mixnet_s_cifar", False)])
def test_a_plain_weights_file_takes_its_own_runs_summary_only(tmp_path, capsys, summary_model, used):
    """A weights file without metadata (written before runs recorded it) still gets its run's class names;
    a summary of another model is not applied to it."""
    save_weights(tmp_path / "old.safetensors", random_state(), {})
    names = [f"digit {d}" for d in range(10)]
    write_summary(tmp_path, model=summary_model, classes=names, img_size=32, mean=[0.5] * 3, std=[0.5] * 3)
    pixels = np.random.default_rng(2).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")

    top = run_json(["predict", tmp_path / "x.png", "--checkpoint", tmp_path / "old.safetensors", "--model", MODEL,
                    "--top-k", "10"], capsys)[0]["top"]

    model = mobileconv.create_model(MODEL, num_classes=10, pretrained=tmp_path / "old.safetensors").eval()
    # the run's 0.5 / 0.5, else the model's own CIFAR-10 statistics (pretrained_cfg)
    mean, std = ([0.5] * 3, [0.5] * 3) if used else ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])
    with torch.no_grad():
        probs = model(normalise(pixels, mean, std)).softmax(1)[0]
    indices = [t["index"] for t in top]  # every class once; near-equal probabilities may come in either order
    assert sorted(indices) == list(range(10)) and indices[0] == probs.argmax().item()
    assert [t["class"] for t in top] == [names[i] if used else str(i) for i in indices]
    np.testing.assert_allclose([t["prob"] for t in top], probs[indices].numpy(), rtol=1e-4, atol=1e-7)
