"""optimize_for_inference(..., compile=True): Inductor with frozen weights, checked against the eval-mode model.

Oracle: the eval-mode ``impl="reference"`` model (split / conv per group / concat, PyTorch's own
BatchNorm), as for the eager optimised model.
"""
from __future__ import annotations

import pytest
import torch

import mobileconv
from mobileconv.deploy import optimize
from mobileconv.deploy.optimize import optimize_for_inference
from mobileconv.models import MobileNet

from .test_optimize import assert_close_to_scale, batch, randomize, reference_output


@pytest.mark.slow
def test_compiled_model_matches_the_eval_model_and_keeps_its_api(monkeypatch):
    model = randomize(mobileconv.create_model("xsep_mobilenetv3_small_100_cifar", num_classes=10), size=32)
    eager = optimize_for_inference(model, example_input=batch(2, 3, 32))
    fast = optimize_for_inference(model, example_input=batch(2, 3, 32), compile=True)

    # the same module: class, state_dict, frozen parameters; no oneDNN modules (Inductor packs itself)
    assert isinstance(fast, MobileNet) and not fast.training
    assert fast.state_dict().keys() == eager.state_dict().keys()
    assert all(not p.requires_grad for p in fast.parameters())
    assert not any(type(m).__name__ == "OneDNNConv2d" for m in fast.modules())

    # compiled on the first call of each shape, under inference_mode and no_grad alike
    for n, mode in ((3, torch.inference_mode), (1, torch.no_grad)):
        x = batch(n, 3, 32, seed=n)
        with mode():
            got = fast(x)
        assert_close_to_scale(got, reference_output(model, x))
    assert fast._compiled_call_impl is not None  # nn.Module.compile: calls go through the compiled graph

    # micro-batching is part of the graph: chunks of one image give the whole-batch output
    monkeypatch.setattr(optimize, "MICRO_BATCH_MIN_PEAK", 0)  # every step qualifies at 32x32
    fast.budget = 1  # one image per chunk
    x = batch(3, 3, 32, seed=5)
    assert fast.plan(x) == (len(fast.blocks) + 1, 1)
    with torch.inference_mode():
        got = fast(x)
    assert_close_to_scale(got, reference_output(model, x))

    # the weights are constants of the graph (Inductor froze them): an in-place change is not seen
    with torch.no_grad():
        fast.conv_stem.weight.mul_(0)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), got)


def test_compile_without_a_cpp_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(optimize.shutil, "which", lambda name: None)
    model = mobileconv.create_model("mobilenetv3_small_100_cifar")
    with pytest.raises(RuntimeError, match="needs a C\\+\\+ compiler.*g\\+\\+, c\\+\\+, clang\\+\\+"):
        optimize_for_inference(model, compile=True)
    assert optimize_for_inference(model, example_input=batch(1, 3, 32)) is not model  # compile=False needs none
