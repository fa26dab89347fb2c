"""MixConv2d's fast path reuses its fused kernel when no autograd graph is recorded: it must never be stale.

Oracle: the same layer with ``impl="reference"`` (split / conv per group / concat), kept equal by
the same edits.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mobileconv.layers import MixConv2d


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


@pytest.mark.parametrize("edit", [_edit_in_place, _replace_parameter, _assign_data, _load_state_dict])
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_cached_kernel_follows_every_kind_of_weight_change(edit, mode):
    fast, ref = _pair()
    x = _x()
    with mode():
        torch.testing.assert_close(fast(x), ref(x))  # fills the cache
        edit(fast)
        edit(ref)
        torch.testing.assert_close(fast(x), ref(x))


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
