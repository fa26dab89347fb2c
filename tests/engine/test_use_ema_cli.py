"""``--use-ema`` on ``eval``, ``predict`` and ``export``: a timm training checkpoint's EMA weights.

The checkpoint holds two different sets of weights (``state_dict`` and ``state_dict_ema``). The
oracle for each command is the same command on a file that holds one set only, as a plain
state_dict: with ``--use-ema`` the results must equal those of the EMA-only file, without it
those of the training-only file (and the two sets must give different results, or the test
would prove nothing).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import mobileconv
from mobileconv.cli import main

MODEL = "mobilenetv3_small_100_cifar"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ema")
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = mobileconv.create_model(MODEL, num_classes=10)
        for m in model.modules():  # non-trivial BN statistics, so that the two weight sets disagree clearly
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        states.append(model.state_dict())
    train, ema = states
    paths = {"both": folder / "checkpoint.pth.tar", "train": folder / "train.pth", "ema": folder / "ema.pth"}
    torch.save({"epoch": 3, "state_dict": train, "state_dict_ema": ema}, paths["both"])
    torch.save(train, paths["train"])
    torch.save(ema, paths["ema"])
    image = folder / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(image)
    return paths, image


def run_json(args, capsys):
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


def test_predict_use_ema(checkpoints, capsys):
    paths, image = checkpoints
    predict = lambda path, *extra: run_json(["predict", str(image), "--checkpoint", str(path), "--model", MODEL,
                                             "--format", "json", *extra], capsys)
    ema, train = predict(paths["ema"]), predict(paths["train"])
    assert ema != train
    assert predict(paths["both"], "--use-ema") == ema
    assert predict(paths["both"]) == train


def test_eval_use_ema(checkpoints, capsys):
    paths, _ = checkpoints
    evaluate = lambda path, *extra: run_json(["eval", "--checkpoint", str(path), "--model", MODEL, "--data", "digits",
                                              "--img-size", "32", "--max-val-samples", "64", "--format", "json",
                                              *extra], capsys)
    ema, train = evaluate(paths["ema"]), evaluate(paths["train"])
    assert ema["confusion"] != train["confusion"]
    assert evaluate(paths["both"], "--use-ema")["confusion"] == ema["confusion"]
    assert evaluate(paths["both"])["confusion"] == train["confusion"]


def test_export_use_ema_without_checkpoint_is_refused(tmp_path, capsys):
    assert main(["export", MODEL, "--out", str(tmp_path / "m.onnx"), "--use-ema"]) == 2
    assert "--use-ema needs --checkpoint FILE" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_export_use_ema_loads_the_ema_weights(checkpoints, tmp_path):
    from mobileconv.cli.export import load_for_export

    paths, _ = checkpoints
    got = load_for_export(MODEL, str(paths["both"]), use_ema=True)[0].state_dict()
    expected = torch.load(paths["ema"], weights_only=True)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
