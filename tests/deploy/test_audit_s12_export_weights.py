"""Audit (session 12) of export and weight loading: wrapped models and the caller's train / eval flags.

Oracles: the reference vectors (timm / torchvision logits for ``x``), onnxruntime's own
``InferenceSession`` on the written file, ``torch.jit.load`` / ``torch.export.load``, and
safetensors' own reader.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import mobileconv
from mobileconv.deploy.export import export_model
from mobileconv.deploy.onnxrt import make_ort_callable
from mobileconv.deploy.weights import load_pretrained, save_weights

SMALL = "mobilenetv3_small_100_cifar"  # 32 px: exports in about a second


def _trained_like(name: str = SMALL) -> torch.nn.Module:
    """A model whose logits are not tiny: random BN affine terms and statistics."""
    torch.manual_seed(0)
    model = mobileconv.create_model(name)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def _modes(model: torch.nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def _frozen_bn_training_model() -> torch.nn.Module:
    """Fine-tuning setup: the model trains, its BatchNorm layers are frozen in eval mode."""
    model = _trained_like().train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    return model


def test_export_keeps_each_submodules_train_eval_flag(tmp_path):
    model = _frozen_bn_training_model()
    before = _modes(model)
    assert not all(before.values()) and any(before.values())
    export_model(model, tmp_path / "m.onnx", "onnx")
    assert _modes(model) == before  # was: every BatchNorm switched back to training mode


def test_make_ort_callable_keeps_each_submodules_train_eval_flag():
    model = _frozen_bn_training_model()
    before = _modes(model)
    make_ort_callable(model, (1, 3, 32, 32))
    assert _modes(model) == before


@pytest.mark.parametrize("fmt, suffix", [("onnx", ".onnx"), ("torchscript", ".pt"), ("exported-program", ".pt2")])
def test_torch_compiled_model_exports_and_matches_eager(tmp_path, fmt, suffix):
    model = _trained_like().eval()
    compiled = torch.compile(model)  # never run: only its wrapper is exported
    path = tmp_path / f"m{suffix}"
    export_model(compiled, path, fmt)  # was: ExportError ("using FX to torch.jit.trace a dynamo-optimized function")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    if fmt == "onnx":
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    elif fmt == "torchscript":
        out = torch.jit.load(str(path))(x)
    else:
        out = torch.export.load(str(path)).module()(x)
    assert expected.abs().max() > 0.01  # logits far above the tolerance: a check that can fail
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_make_ort_callable_of_a_compiled_model():
    model = _trained_like().eval()
    runner = make_ort_callable(torch.compile(model), (2, 3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(runner(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("wrap", ["compile", "dataparallel"])
@pytest.mark.parametrize("source, name, model_name", [("timm", "mixnet_s", "mixnet_s"),
                                                      ("torchvision", "mobilenet_v3_small", "mobilenetv3_small_100")])
def test_checkpoint_loads_into_a_wrapped_model(reference_dir, wrap, source, name, model_name):
    model = mobileconv.create_model(model_name)
    wrapped = torch.compile(model) if wrap == "compile" else torch.nn.DataParallel(model)
    # was: ValueError, every key missing as _orig_mod.* / module.*
    assert load_pretrained(wrapped, reference_dir / f"{source}_{name}.safetensors") == source
    io = load_file(str(reference_dir / f"{source}_{name}.io.safetensors"))
    with torch.no_grad():
        logits = model.eval()(io["x"])
    torch.testing.assert_close(logits, io["logits"], atol=1e-4, rtol=0)
    if source == "torchvision":
        assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


@pytest.mark.parametrize("wrap", ["compile", "dataparallel"])
def test_wrapped_model_saves_the_models_own_keys(tmp_path, wrap):
    model = _trained_like()
    for m in model.modules():  # per-layer eps: recorded as {module name: eps}
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-3
    model.bn1.eps = 2e-3
    wrapped = torch.compile(model) if wrap == "compile" else torch.nn.DataParallel(model)
    path = save_weights(wrapped, tmp_path / "w.safetensors")
    with safe_open(str(path), framework="pt") as f:  # safetensors' own reader
        assert sorted(f.keys()) == sorted(model.state_dict())  # was: _orig_mod.* / module.* keys
        assert "bn1" in f.metadata()["bn_eps"] and "_orig_mod" not in f.metadata()["bn_eps"]
    fresh = mobileconv.create_model(SMALL)
    load_pretrained(fresh, path)  # was: ValueError, bn_eps names layers the model does not have
    assert fresh.bn1.eps == 2e-3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_array_equal(fresh.eval()(x).numpy(), model.eval()(x).numpy())
