"""The CPU training fast path of MixConv2d (mobileconv.layers.depthwise_grad) against autograd.

Oracle: ``torch.autograd.grad`` through a plain ``F.conv2d`` (float64), and the reference
split / conv / concat MixConv. Both weight-gradient branches (oneDNN per group, and the
depthwise-forward formulation) are forced in turn through ``SWAP_MAX_PIXELS``.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from mobileconv.layers import MixConv2d
from mobileconv.layers import depthwise_grad


def _randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("k, stride, size", [(1, 1, (5, 6)), (3, 2, (7, 8)), (5, 1, (6, 6)), (7, 2, (9, 4)),
                                              (9, 1, (3, 5)), (11, 2, (1, 1))])
def test_depthwise_weight_grad_matches_autograd(k, stride, size):
    n, c = 3, 5
    x = _randn(n, c, *size)
    w = _randn(c, 1, k, k, seed=1).requires_grad_()
    y = F.conv2d(x, w, None, stride, k // 2, 1, c)
    g = _randn(*y.shape, seed=2)
    (expected,) = torch.autograd.grad(y, w, g)
    got = depthwise_grad.depthwise_weight_grad(x.transpose(0, 1).contiguous(), g.transpose(0, 1).contiguous(),
                                               k, stride, k // 2)
    torch.testing.assert_close(got, expected)


def test_depthwise_weight_grad_negative_padding_crops():
    # a 3x3 kernel centred in a 7x7 one on a pre-padded input: padding 0 - (7 - 3) // 2 = -2
    n, c, k, big, stride = 2, 4, 3, 7, 2
    x = _randn(n, c, 12, 11)
    w = _randn(c, 1, k, k, seed=1).requires_grad_()
    y = F.conv2d(x, F.pad(w, [2, 2, 2, 2]), None, stride, 0, 1, c)  # the fused 7x7 conv, no padding
    g = _randn(*y.shape, seed=2)
    (expected,) = torch.autograd.grad(y, w, g)
    got = depthwise_grad.depthwise_weight_grad(x.transpose(0, 1).contiguous(), g.transpose(0, 1).contiguous(),
                                               k, stride, -(big - k) // 2)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("swap_max_pixels", [0, 10**9], ids=["onednn", "depthwise_forward"])
@pytest.mark.parametrize("ks, stride, padding, size", [
    ([3, 5, 7], 1, "", (9, 10)),
    ([3, 5, 7, 9, 11], 2, "", (12, 13)),
    ([3, 5, 7, 9], 2, "tf", (10, 12)),
    ([1, 3, 5], 1, "tf", (7, 9)),
])
def test_mixconv_training_fast_path_equals_reference(monkeypatch, swap_max_pixels, ks, stride, padding, size):
    monkeypatch.setattr(depthwise_grad, "SWAP_MAX_PIXELS", swap_max_pixels)
    calls = []
    real_apply = depthwise_grad.MixedDepthwiseConv.apply
    monkeypatch.setattr(depthwise_grad.MixedDepthwiseConv, "apply",
                        lambda *a: calls.append(1) or real_apply(*a))
    c = 13
    fast = MixConv2d(c, ks, stride, padding=padding)
    ref = copy.deepcopy(fast)
    ref.impl = "reference"
    x = _randn(2, c, *size, seed=3, dtype=torch.float32).contiguous(memory_format=torch.channels_last)
    outs = []
    for m in (fast, ref):
        xi = x.clone().requires_grad_()
        y = m(xi)
        (y * _randn(*y.shape, seed=4, dtype=torch.float32)).sum().backward()
        outs.append([y.detach(), xi.grad] + [conv.weight.grad for conv in m])
    assert calls, "the fast path did not use MixedDepthwiseConv"
    for got, expected in zip(*outs):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_fast_path_is_not_used_without_grad_or_under_autocast():
    m = MixConv2d(6, [3, 5])
    x = _randn(2, 6, 8, 8, dtype=torch.float32)
    weights = [conv.weight for conv in m]
    assert depthwise_grad.use_grouped_weight_grad(x, weights)
    with torch.no_grad():
        assert not depthwise_grad.use_grouped_weight_grad(x, weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not depthwise_grad.use_grouped_weight_grad(x, weights)
    frozen = [w.detach() for w in weights]
    assert not depthwise_grad.use_grouped_weight_grad(x, frozen)


def _count_fast_path_calls(monkeypatch) -> list:
    calls = []
    real_apply = depthwise_grad.MixedDepthwiseConv.apply
    monkeypatch.setattr(depthwise_grad.MixedDepthwiseConv, "apply", lambda *a: calls.append(1) or real_apply(*a))
    return calls


@pytest.mark.parametrize("k, padding", [(5, 2), (7, -1)])
def test_depthwise_weight_grad_of_an_empty_batch_is_zero(k, padding):
    c, stride = 4, 2
    x = _randn(0, c, 9, 8)
    w = _randn(c, 1, k, k, seed=1).requires_grad_()
    y = F.conv2d(x[..., max(-padding, 0):, max(-padding, 0):], w, None, stride, max(padding, 0), 1, c)
    (expected,) = torch.autograd.grad(y, w, torch.zeros_like(y))  # autograd: zeros for an empty batch
    got = depthwise_grad.depthwise_weight_grad(x.transpose(0, 1).contiguous(), y.detach().transpose(0, 1).contiguous(),
                                               k, stride, padding)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("swap_max_pixels", [0, 10**9], ids=["onednn", "depthwise_forward"])
@pytest.mark.parametrize("padding", ["", "tf"])
def test_mixconv_training_fast_path_on_an_empty_batch(monkeypatch, swap_max_pixels, padding):
    monkeypatch.setattr(depthwise_grad, "SWAP_MAX_PIXELS", swap_max_pixels)
    calls = _count_fast_path_calls(monkeypatch)
    fast = MixConv2d(9, [3, 5, 7], 2, padding=padding)
    ref = copy.deepcopy(fast)
    ref.impl = "reference"
    outs = []
    for m in (fast, ref):
        x = torch.zeros(0, 9, 10, 11, requires_grad=True)
        y = m(x)
        y.sum().backward()
        outs.append([y.detach(), x.grad] + [conv.weight.grad for conv in m])
    assert calls, "the fast path did not use MixedDepthwiseConv"
    for got, expected in zip(*outs):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("ks, stride, padding", [([1, 3, 5], 1, "tf"), ([3, 5], 2, "tf"), ([3, 7], 2, "")])
def test_mixconv_training_fast_path_gradgradcheck(monkeypatch, ks, stride, padding):
    calls = _count_fast_path_calls(monkeypatch)
    m = MixConv2d(5, ks, stride, padding=padding).double()
    weights = tuple(conv.weight.detach().clone().requires_grad_() for conv in m)

    def f(x, *ws):
        return torch.func.functional_call(m, {f"{i}.weight": w for i, w in enumerate(ws)}, (x,))

    x = _randn(2, 5, 5, 6, seed=3).requires_grad_()
    assert torch.autograd.gradgradcheck(f, (x, *weights), eps=1e-6, atol=1e-6, rtol=1e-4)
    assert calls, "the fast path did not use MixedDepthwiseConv"


def test_mixconv_training_fast_path_gradient_penalty_equals_reference(monkeypatch):
    # double backward, as in a gradient penalty: grad(loss, create_graph=True), then backward through it
    calls = _count_fast_path_calls(monkeypatch)
    fast = MixConv2d(10, [3, 5, 7], padding="").double()
    ref = copy.deepcopy(fast)
    ref.impl = "reference"
    outs = []
    for m in (fast, ref):
        x = _randn(2, 10, 8, 9, seed=3).requires_grad_()
        weights = [conv.weight for conv in m]
        grads = torch.autograd.grad(m(x).square().sum(), [x, *weights], create_graph=True)
        sum(g.square().sum() for g in grads).backward()
        outs.append([g.detach() for g in grads] + [x.grad] + [w.grad for w in weights])
    assert calls, "the fast path did not use MixedDepthwiseConv"
    for got, expected in zip(*outs):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("setting", ["autocast", "bfloat16_model"])
def test_low_precision_cpu_training_runs_the_split_as_the_reference_does(setting, monkeypatch):
    """bfloat16 CPU training: the fused conv's weight gradient at the largest kernel ran oneDNN's generic kernel
    (mixnet_s step 1.9x the reference's); the split computes each group at its own size, bit for bit the reference."""
    fast = MixConv2d(12, [3, 5, 7, 9], stride=1, padding="tf")
    ref = copy.deepcopy(fast)
    ref.impl = "reference"
    x = _randn(2, 12, 9, 10, dtype=torch.float32)
    if setting == "bfloat16_model":
        fast, ref, x = fast.bfloat16(), ref.bfloat16(), x.bfloat16()
    widths = []  # output channels of each conv call: 12 for the fused conv, 3 for a group's
    real_conv2d = F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda inp, w, *a, **k: widths.append(w.shape[0]) or real_conv2d(inp, w, *a, **k))
    outs, grads = [], []
    for m in (fast, ref):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=setting == "autocast"):
            y = m(x)
        y.float().square().sum().backward()
        outs.append(y)
        grads.append([conv.weight.grad for conv in m])
    assert widths == [3] * 8  # both layers ran the split: four group convs each
    assert depthwise_grad.low_precision_cpu_training(x, [fast[0].weight]) == (setting == "bfloat16_model")
    assert torch.equal(outs[0], outs[1])
    for g_fast, g_ref in zip(*grads):
        assert torch.equal(g_fast, g_ref)
    with torch.no_grad():  # inference keeps the fused conv
        assert not depthwise_grad.low_precision_cpu_training(x, [fast[0].weight])
