"""MixConv2d's fast path reuses its fused kernel when no autograd graph is recorded: it must never be stale.

Oracle: the same layer with ``impl="reference"`` (split / conv per group / concat), kept equal by
the same edits.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mobileconv.layers import MixConv2d, XSepConv2d


def _pair():
    fast = MixConv2d(12, [3, 5, 7], padding="").eval()
    ref = copy.deepcopy(fast)
    ref.impl = "reference"
    return fast, ref


def _x(dtype=torch.float32):
    return torch.randn(2, 12, 9, 8, generator=torch.Generator().manual_seed(0), dtype=dtype)


def _edit_in_place(m):
    m[1].weight.mul_(-2.0)


def _replace_parameter(m):
    m[2].weight = nn.Parameter(torch.full_like(m[2].weight, 0.5))


def _assign_data(m):
    m[0].weight.data = torch.full_like(m[0].weight, -0.25)


def _load_state_dict(m):
    m.load_state_dict({k: torch.full_like(v, 0.1) for k, v in m.state_dict().items()})


def _assign_another_view(m):
    # ``.data`` set to views of one storage: the same storage, the version counter kept, another address
    w = m[1].weight
    flat = torch.arange(2.0 * w.numel()) / w.numel()
    w.data = flat[:w.numel()].view_as(w)
    m(_x())  # the cached kernel is built from this view
    w.data = flat[w.numel():].view_as(w)


def _fused_optimizer_step(m):
    # fused optimizers write the parameters in place without bumping their version counters
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    torch.optim.AdamW(m.parameters(), lr=0.1, fused=True).step()


@pytest.mark.parametrize("edit", [_edit_in_place, _replace_parameter, _assign_data, _load_state_dict,
                                  _assign_another_view, _fused_optimizer_step])
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_cached_kernel_follows_every_kind_of_weight_change(edit, mode):
    fast, ref = _pair()
    x = _x()
    with mode():
        torch.testing.assert_close(fast(x), ref(x))  # fills the cache
        edit(fast)
        edit(ref)
        torch.testing.assert_close(fast(x), ref(x))


def _train_and_validate(m, x):
    """Validation passes (the fast path caches its kernel) between training steps of a fused optimizer."""
    opt = torch.optim.SGD(m.parameters(), lr=0.5, momentum=0.9, fused=True)
    outs = []
    for _ in range(3):
        with torch.no_grad():
            outs.append(m.eval()(x))
        m.train()(x).square().mean().backward()
        opt.step()  # fused=True: the weights change, their version counters do not
    return outs


def test_cached_kernel_follows_the_training_steps_of_a_fused_optimizer():
    fast, ref = _pair()
    for got, expected in zip(_train_and_validate(fast, _x()), _train_and_validate(ref, _x())):
        torch.testing.assert_close(got, expected)


def test_cached_kernel_follows_dtype_conversion_and_autograd_still_works():
    fast, ref = _pair()
    with torch.no_grad():
        fast(_x())
    fast, ref = fast.double(), ref.double()
    x = _x(torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x))
    xg = x.clone().requires_grad_()
    fast(xg).sum().backward()  # with grad: the kernel is rebuilt in the graph, weights get gradients
    assert all(conv.weight.grad is not None for conv in fast)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_a_trace_builds_the_kernel_from_the_parameters():
    fast, _ = _pair()
    x = _x()
    with torch.no_grad():
        fast(x)  # a warm cache must not be baked into the trace as a constant
        traced = torch.jit.trace(fast, x)
        doubled = copy.deepcopy(fast)
        for module in (traced, doubled):
            for conv in module.children():
                conv.weight.mul_(2.0)
        torch.testing.assert_close(traced(x), doubled(x))


def _count_builds(monkeypatch, cls, method):
    calls = []
    original = getattr(cls, method)

    def counted(self):
        calls.append(1)
        return original(self)

    monkeypatch.setattr(cls, method, counted)
    return calls


def test_frozen_weights_reuse_the_kernel_while_the_input_gets_its_gradient(monkeypatch):
    """Fine-tuning with a frozen backbone: grad mode on, the MixConv's weights frozen."""
    fast, ref = _pair()
    for m in (fast, ref):
        m.train().requires_grad_(False)
    builds = _count_builds(monkeypatch, MixConv2d, "fused_weight")
    grads = []
    for m in (fast, fast, ref):
        x = _x().requires_grad_()
        m(x).square().sum().backward()
        grads.append(x.grad)
    assert len(builds) == 1  # built once, reused by the second call
    torch.testing.assert_close(grads[0], grads[2])
    torch.testing.assert_close(grads[1], grads[2])
    for m in (fast, ref):  # unfrozen: no cached kernel, the weight gets its gradient
        m[0].weight.requires_grad_(True)
        m(_x()).square().sum().backward()
    torch.testing.assert_close(fast[0].weight.grad, ref[0].weight.grad)


@pytest.mark.parametrize("padding", ["symmetric", "left_top"])
def test_xsepconv_reuses_its_embedded_2x2_kernel_in_inference(monkeypatch, padding):
    fast = XSepConv2d(8, 5, padding=padding).eval()
    ref = copy.deepcopy(fast)
    ref.impl = "reference"
    builds = _count_builds(monkeypatch, XSepConv2d, "embedded_2x2_weight")
    x = torch.randn(2, 8, 7, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x))
        torch.testing.assert_close(fast(x), ref(x))
        assert len(builds) == 1
        for m in (fast, ref):
            m.conv_2x2.weight.mul_(-3.0)  # an in-place change: rebuilt
        torch.testing.assert_close(fast(x), ref(x))
        assert len(builds) == 2
    y = fast(x.clone().requires_grad_())  # grad mode, a trainable weight: built in the graph
    y.sum().backward()
    assert fast.conv_2x2.weight.grad is not None and len(builds) == 3
