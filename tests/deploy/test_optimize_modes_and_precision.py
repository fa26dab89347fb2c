"""optimize_for_inference called under ``torch.inference_mode()``, and on half-precision models.

Oracles: the eval-mode model itself (its output, and autograd's input gradient through it), the
same eval model computed in float32, and the BN folding formula written out with plain tensor ops.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import mobileconv
from mobileconv.deploy.onednn import OneDNNConv2d, onednn_available
from mobileconv.deploy.optimize import optimize_for_inference

from .test_optimize import assert_close_to_scale, batch, randomize


# --- built under torch.inference_mode() ------------------------------------------------------------

def test_a_model_optimised_under_inference_mode_is_an_ordinary_model():
    torch.manual_seed(0)
    model = randomize(mobileconv.create_model("mixnet_s_cifar"), size=32)
    with torch.inference_mode():
        fast = optimize_for_inference(model)
    assert not any(t.is_inference() for t in [*fast.parameters(), *fast.buffers()])

    x = batch(3, 3, 32)
    with torch.no_grad():
        assert_close_to_scale(fast(x), model(x))
    # gradients through the optimised model, as through the eval model (autograd is the oracle)
    x_fast, x_eval = x.clone().requires_grad_(), x.clone().requires_grad_()
    fast(x_fast).square().sum().backward()
    model(x_eval).square().sum().backward()
    assert_close_to_scale(x_fast.grad, x_eval.grad)


@pytest.mark.skipif(not onednn_available(), reason="PyTorch without oneDNN")
def test_packed_weights_are_kept_when_optimised_under_inference_mode(monkeypatch):
    model = randomize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)))
    with torch.inference_mode():
        fast = optimize_for_inference(model)
    convs = [m for m in fast.modules() if isinstance(m, OneDNNConv2d)]
    assert convs
    packs = []
    reorder = torch._C._nn.mkldnn_reorder_conv2d_weight
    monkeypatch.setattr(torch._C._nn, "mkldnn_reorder_conv2d_weight", lambda *a: packs.append(1) or reorder(*a))
    x = batch(2, 3, 16)
    with torch.inference_mode():
        outputs = [fast(x) for _ in range(3)]
    assert len(packs) == len(convs)  # once per conv for this shape, not once per call
    with torch.no_grad():
        for y in outputs:
            assert_close_to_scale(y, model(x))


def test_a_model_built_under_inference_mode_can_be_optimised_outside_it():
    with torch.inference_mode():
        model = randomize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU6(), nn.Conv2d(8, 4, 1)))
    fast = optimize_for_inference(model)
    assert not any(p.is_inference() for p in fast.parameters())
    x = batch(2, 3, 16).requires_grad_()
    fast(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# --- half precision ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_folding_rounds_to_half_precision_once(dtype):
    """The folded weight and bias are the formula computed in float32, rounded once to the dtype."""
    torch.manual_seed(0)
    model = randomize(nn.Sequential(nn.Conv2d(3, 16, 3, bias=True), nn.BatchNorm2d(16))).to(dtype)
    conv, bn = model[0], model[1]
    with torch.no_grad():
        bn.running_var.uniform_(0.05, 3.0)
    s = bn.weight.float() / torch.sqrt(bn.running_var.float() + bn.eps)
    want_w = (conv.weight.float() * s.view(-1, 1, 1, 1)).to(dtype)
    want_b = ((conv.bias.float() - bn.running_mean.float()) * s + bn.bias.float()).to(dtype)

    fast = optimize_for_inference(model, onednn=False, channels_last=False, micro_batch=False, verify=False)
    assert isinstance(fast[1], nn.Identity)
    assert fast[0].weight.dtype == dtype
    assert torch.equal(fast[0].weight, want_w)
    assert torch.equal(fast[0].bias, want_b)


@pytest.mark.parametrize("name", ["mixnet_s_cifar", "mobilenetv3_small_100", "tf_mixnet_s",
                                  "xsep_mobilenetv3_small_100_cifar"])
def test_bfloat16_registered_models_optimise_with_verify_on(name):
    size = 32 if name.endswith("_cifar") else 64
    torch.manual_seed(0)
    model = randomize(mobileconv.create_model(name), size=size)
    half = copy.deepcopy(model).to(torch.bfloat16)
    fast = optimize_for_inference(half)  # verify=True: no RuntimeError for a correct result

    x = batch(2, 3, size, seed=3)
    with torch.no_grad():
        reference = model(x)  # the same maths in float32
        unoptimised_err = (half(x.bfloat16()).float() - reference).abs().max().item() / reference.abs().max().item()
        got = fast(x.bfloat16())
    assert got.dtype == torch.bfloat16
    # as accurate as the unoptimised bfloat16 model, against float32
    assert_close_to_scale(got.float(), reference, 4 * max(unoptimised_err, 1e-3))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_verify_still_catches_a_wrong_half_precision_output(monkeypatch, dtype):
    import mobileconv.deploy.optimize as optimize

    monkeypatch.setattr(optimize, "_fold", lambda conv, bn: None)  # "fold" that drops the BN
    model = randomize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1),
                                    nn.BatchNorm2d(4))).to(dtype)
    with pytest.raises(RuntimeError, match="changed the output"):
        optimize_for_inference(model)
