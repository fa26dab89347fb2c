"""Figures that benchmarks/README.md and the benchmark scripts state, against an independent count."""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import mobileconv
from mobileconv.layers import set_layer_impl

ROOT = Path(__file__).resolve().parents[2]


class _DepthwiseMacs(TorchDispatchMode):
    """Multiply-adds of every depthwise ``aten.convolution`` (groups == input channels > 1) run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.convolution.default:
            x, w, groups = args[0], args[1], args[8]
            if groups > 1 and groups == x.shape[1]:
                self.macs += out.numel() * w.shape[-2] * w.shape[-1]  # one input channel per output channel
        return out


def test_mixnet_s_depthwise_macs_fused_and_true_are_as_stated():
    model = mobileconv.create_model("mixnet_s").eval()
    counted = {}
    for impl in ("fast", "reference"):  # fused (zero-padded kernels) / split, each group at its own size
        with torch.no_grad(), _DepthwiseMacs() as mode:
            set_layer_impl(model, impl)(torch.zeros(1, 3, 224, 224))
        counted[impl] = mode.macs / 1e6
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    fused, true = map(int, re.search(r"executes\s+(\d+)M depthwise MACs per image, of which about (\d+)M are true "
                                     r"MACs", readme).groups())
    script = (ROOT / "benchmarks" / "depthwise_kernel.py").read_text()
    fused_doc, true_doc = map(int, re.search(r"executes (\d+)M depthwise multiply-adds per image where (\d+)M",
                                             script).groups())
    assert (fused, true) == (fused_doc, true_doc) == (round(counted["fast"]), round(counted["reference"])), counted
