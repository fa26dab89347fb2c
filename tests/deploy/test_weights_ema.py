"""Choosing a training checkpoint's EMA weights: ``use_ema`` / ``mobileconv convert --use-ema``.

The oracle is the checkpoint itself: different tensors are stored under the training and the
EMA entries, and the test checks which of them ends up in the model. The torchvision case uses
torch's own ``AveragedModel`` (what torchvision's reference scripts save as ``model_ema``).
"""
from __future__ import annotations

import argparse

import pytest
import torch
from safetensors.torch import save_file
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import mobileconv
from mobileconv.cli import main
from mobileconv.deploy.weights import load_pretrained, read_checkpoint

from .test_weights import TinyNet, random_state, same_state


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture()
def states():
    return random_state(seed=1), random_state(seed=2)  # training weights, EMA weights


def timm_checkpoint(train, ema):  # what timm's train.py (CheckpointSaver) writes with --model-ema
    return {"epoch": 3, "arch": "tiny", "state_dict": train, "optimizer": {"state": {}, "param_groups": []},
            "version": 2, "args": argparse.Namespace(lr=0.1, model_ema=True), "metric": 71.5, "state_dict_ema": ema}


@pytest.mark.parametrize("suffix", [".pth", ".pth.tar"])
def test_timm_checkpoint_state_dict_by_default_ema_on_request(model, states, tmp_path, suffix):
    train, ema = states
    path = tmp_path / f"checkpoint{suffix}"
    torch.save(timm_checkpoint(train, ema), path)
    load_pretrained(model, path)
    assert same_state(model, train)
    load_pretrained(model, path, use_ema=True)
    assert same_state(model, ema)
    assert same_state_dict(read_checkpoint(path, use_ema=True)[0], ema)


def same_state_dict(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_state_dict_ema_is_preferred_to_model_ema(model, states, tmp_path):
    train, ema = states
    other = random_state(seed=3)
    path = tmp_path / "w.pth"
    torch.save({"model": train, "model_ema": other, "state_dict_ema": ema}, path)
    load_pretrained(model, path, use_ema=True)
    assert same_state(model, ema)


def test_torchvision_reference_checkpoint_model_ema(states, tmp_path):
    """torchvision's references save ``model_ema`` = ``AveragedModel.state_dict()``: ``module.`` keys + ``n_averaged``."""
    train, _ = states
    net = TinyNet()
    averaged = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    net.load_state_dict(random_state(seed=4))
    averaged.update_parameters(net)
    averaged.update_parameters(net)  # n_averaged = 2: a tensor that is not a weight of the model
    ema = {k: v.clone() for k, v in averaged.module.state_dict().items()}
    assert "n_averaged" in averaged.state_dict()
    path = tmp_path / "model_10.pth"
    torch.save({"model": {f"module.{k}": v for k, v in train.items()}, "model_ema": averaged.state_dict(),
                "epoch": 10, "args": argparse.Namespace(model_ema=True)}, path)
    model = TinyNet()
    load_pretrained(model, path, use_ema=True)
    assert same_state(model, ema)
    load_pretrained(model, path)
    assert same_state(model, train)


def test_torchvision_layout_through_averaged_model(reference_dir, tmp_path):
    """A real torchvision MobileNetV3 layout inside torchvision's EMA wrapper is still mapped as torchvision."""
    from safetensors.torch import load_file

    train = load_file(str(reference_dir / "torchvision_mobilenet_v3_small.safetensors"))
    ema = {k: v * 0.5 if v.is_floating_point() else v for k, v in train.items()}
    path = tmp_path / "model_600.pth"
    torch.save({"model": train, "model_ema": {"n_averaged": torch.tensor(600),
                                              **{f"module.{k}": v for k, v in ema.items()}}}, path)
    plain = tmp_path / "ema.safetensors"
    save_file(ema, str(plain))
    expected = mobileconv.create_model("mobilenetv3_small_100", pretrained=plain).state_dict()
    model = mobileconv.create_model("mobilenetv3_small_100")
    assert load_pretrained(model, path, use_ema=True) == "torchvision"
    assert same_state(model, expected)


@pytest.mark.parametrize("content", [
    lambda train: {"state_dict": train, "epoch": 3},
    lambda train: {"model": train, "optimizer": {}, "model_ema": None},  # timm: None is no EMA either
    lambda train: train,
], ids=["timm-without-ema", "model_ema-None", "plain-state_dict"])
def test_use_ema_without_ema_weights_is_an_error_not_a_fallback(model, states, tmp_path, content):
    train, _ = states
    path = tmp_path / "w.pth"
    torch.save(content(train), path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="no EMA weights.*'state_dict_ema' or 'model_ema'") as info:
        load_pretrained(model, path, use_ema=True)
    assert str(path) in str(info.value)
    assert same_state(model, before)


def test_mobileconv_file_is_ema_only_when_its_metadata_says_so(model, states, tmp_path):
    _, ema = states
    trained_with_ema, trained_without = tmp_path / "ema.safetensors", tmp_path / "plain.safetensors"
    save_file(ema, str(trained_with_ema), metadata={"format": "mobileconv", "ema": "true"})
    save_file(ema, str(trained_without), metadata={"format": "mobileconv", "ema": "false"})
    load_pretrained(model, trained_with_ema, use_ema=True)
    assert same_state(model, ema)
    with pytest.raises(ValueError, match=r"records ema=false.*no EMA weights"):
        load_pretrained(TinyNet(), trained_without, use_ema=True)


def test_ema_only_checkpoint_loads_by_default(model, states, tmp_path):
    _, ema = states
    path = tmp_path / "w.pth"
    torch.save({"state_dict_ema": ema, "epoch": 1}, path)
    load_pretrained(model, path)
    assert same_state(model, ema)


@pytest.fixture()
def small_checkpoint(tmp_path):
    """A timm-style training checkpoint of a real model: different training and EMA weights."""
    torch.manual_seed(0)
    train = mobileconv.create_model("mobilenetv3_small_100_cifar", num_classes=4).state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in train.items()}
    path = tmp_path / "last.pth.tar"
    torch.save(timm_checkpoint(train, ema), path)
    return path, train, ema


def read_back(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.mark.parametrize("use_ema", [False, True])
def test_convert_use_ema(small_checkpoint, tmp_path, capsys, use_ema):
    src, train, ema = small_checkpoint
    dst = tmp_path / "out.safetensors"
    rc = main(["convert", str(src), str(dst), "--model", "mobilenetv3_small_100_cifar",
               *(["--use-ema"] if use_ema else [])])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.startswith(f"{src} (timm{', EMA weights' if use_ema else ''}) -> {dst}"), out
    tensors, metadata = read_back(dst)
    assert same_state_dict(tensors, ema if use_ema else train)
    assert metadata.get("ema") == ("true" if use_ema else None)
    if use_ema:  # the converted file says what it holds: converting it again with --use-ema works
        again = tmp_path / "again.safetensors"
        assert main(["convert", str(dst), str(again), "--model", "mobilenetv3_small_100_cifar", "--use-ema"]) == 0
        assert same_state_dict(read_back(again)[0], ema)


def test_convert_use_ema_without_ema_is_a_one_line_error(tmp_path, capsys):
    train = mobileconv.create_model("mobilenetv3_small_100_cifar", num_classes=4).state_dict()
    src, dst = tmp_path / "last.pth", tmp_path / "out.safetensors"
    torch.save({"state_dict": train, "epoch": 2}, src)
    assert main(["convert", str(src), str(dst), "--model", "mobilenetv3_small_100_cifar", "--use-ema"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"mobileconv convert: error: {src} holds no EMA weights"), err
    assert "['epoch', 'state_dict']" in err and "without --use-ema" in err
    assert not dst.exists()


def test_mobileconv_train_ema_state_and_weights_files(tmp_path):
    """``mobileconv train --ema`` writes the EMA weights to last.safetensors: the oracle for its state.pt's EMA."""
    from safetensors.torch import load_file

    from ..engine.helpers import MODEL, TINY

    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--ema", "--out", str(out)]) == 0
    ema = load_file(str(out / "last.safetensors"))
    from_state, _ = read_checkpoint(out / "state.pt", use_ema=True)
    assert same_state_dict(from_state, ema)
    training, _ = read_checkpoint(out / "state.pt")
    assert not same_state_dict(training, ema)  # without use_ema: the training weights
    from_weights, _ = read_checkpoint(out / "last.safetensors", use_ema=True)  # metadata ema=true
    assert same_state_dict(from_weights, ema)
    model = mobileconv.create_model(MODEL)
    load_pretrained(model, out / "state.pt", use_ema=True)
    assert same_state(model, ema)


def test_torchvision_ema_only_checkpoint_loads_by_default(states, tmp_path):
    """``n_averaged`` of torchvision's AveragedModel is dropped on the default path too."""
    net = TinyNet()
    net.load_state_dict(states[1])
    averaged = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    path = tmp_path / "w.pth"
    torch.save({"model_ema": averaged.state_dict()}, path)
    model = TinyNet()
    load_pretrained(model, path)
    assert same_state(model, states[1])


def test_create_model_use_ema(tmp_path):
    """``create_model(pretrained=..., use_ema=True)`` takes the EMA entry; by default the training one."""
    torch.manual_seed(0)
    train = mobileconv.create_model("mobilenetv3_small_100", num_classes=10).state_dict()
    torch.manual_seed(1)
    ema = mobileconv.create_model("mobilenetv3_small_100", num_classes=10).state_dict()
    path = tmp_path / "checkpoint.pth"
    torch.save(timm_checkpoint(train, ema), path)
    for use_ema, expected in ((False, train), (True, ema)):
        got = mobileconv.create_model("mobilenetv3_small_100", num_classes=10, pretrained=path, use_ema=use_ema)
        assert same_state_dict(got.state_dict(), expected)


@pytest.mark.parametrize("kwargs, message", [
    (dict(use_ema=True), r"use_ema=True needs a checkpoint: pass pretrained=PATH"),
    (dict(use_ema="yes"), r"use_ema must be True or False, got 'yes'"),
])
def test_create_model_use_ema_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mobileconv.create_model("mobilenetv3_small_100", **kwargs)
