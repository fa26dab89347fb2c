"""XSepConv2d with norm_layer=None (no BNs) and act_layer=None: three bias-free depthwise convs,
checked against plain F.pad / F.conv2d, fast against reference, and through optimize_for_inference."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mobileconv
from mobileconv.layers import XSepConv2d

from .oracles import DIRECTION_ORDER, direction_pads, equal_split

ACTS = {None: lambda x: x, "relu": F.relu, "hswish": F.hardswish}


def xsep_oracle(x, w2, w1k, wk1, padding, stride, act):
    """2x2 conv (one-sided F.pad per channel group) -> act -> 1xK (stride along W) -> act -> Kx1 (along H)."""
    groups = equal_split(x.shape[1], 4) if padding == "symmetric" else [x.shape[1]]
    directions = DIRECTION_ORDER if padding == "symmetric" else [padding]
    y = torch.cat([F.conv2d(F.pad(xi, direction_pads(d)), wi, groups=wi.shape[0])
                   for xi, wi, d in zip(x.split(groups, 1), w2.split(groups, 0), directions)], 1)
    k = w1k.shape[-1]
    y = F.conv2d(ACTS[act](y), w1k, stride=(1, stride), padding=(0, k // 2), groups=y.shape[1])
    return F.conv2d(ACTS[act](y), wk1, stride=(stride, 1), padding=(k // 2, 0), groups=y.shape[1])


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("act", [None, "relu", "hswish"])
@pytest.mark.parametrize("padding, stride", [("symmetric", 1), ("right_top", 1), ("left_bottom", 2),
                                             ("symmetric", 2)])
def test_xsepconv_without_norm_is_three_bias_free_convs(padding, stride, act, impl):
    torch.manual_seed(0)
    c, k = 10, 5
    m = XSepConv2d(c, k, stride, padding=padding, norm_layer=None, act_layer=act, impl=impl).train()
    assert all(type(getattr(m, n)) is nn.Identity for n in ("bn1", "bn2", "bn3"))
    assert all(type(getattr(m, n)) is nn.Identity for n in ("act1", "act2")) == (act is None)
    assert sorted(m.state_dict()) == ["conv_1xk.weight", "conv_2x2.weight", "conv_kx1.weight"]
    assert sum(p.numel() for p in m.parameters()) == c * (4 + 2 * k)
    x = torch.randn(2, c, 9, 10)
    expected = xsep_oracle(x, m.conv_2x2.weight, m.conv_1xk.weight, m.conv_kx1.weight, padding, stride, act)
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act", [None, "relu"])
def test_xsepconv_without_norm_fast_equals_reference(act):
    torch.manual_seed(0)
    fast = XSepConv2d(9, 7, padding="symmetric", norm_layer=None, act_layer=act)
    ref = copy.deepcopy(fast)
    ref.impl = "reference"
    x = torch.randn(2, 9, 11, 8)
    grads = []
    for m in (fast, ref):
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        (y * torch.randn(y.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
        grads.append((y.detach(), xi.grad, *[p.grad for p in m.parameters()]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_xsepconv_norm_layer_must_be_callable_or_none():
    with pytest.raises(ValueError, match=r"norm_layer must be a callable .* or None for no normalisation, got 'bn'"):
        XSepConv2d(8, 5, norm_layer="bn")


class XSepNet(nn.Module):
    """Stem, then XSepConvs without norm: one followed by a BN (folds into its Kx1 conv), one strided
    without activations, one with h-swish; a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.xsep1 = XSepConv2d(16, 5, padding="right_top", norm_layer=None)
        self.bn = nn.BatchNorm2d(16)
        self.xsep2 = XSepConv2d(16, 7, 2, norm_layer=None, act_layer=None)
        self.xsep3 = XSepConv2d(16, 3, padding="left_bottom", norm_layer=None, act_layer="hswish")
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.xsep3(self.xsep2(F.relu(self.bn(self.xsep1(self.stem(x))))))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("onednn", [None, False])
def test_optimize_for_inference_with_xsepconv_without_norm(onednn):
    torch.manual_seed(0)
    model = XSepNet()
    with torch.no_grad():
        model.bn.weight.uniform_(0.5, 2)
        model.bn.bias.uniform_(-1, 1)
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    model.eval()
    x = torch.randn(4, 3, 20, 20)
    with torch.no_grad():
        expected = model(x)
        out = mobileconv.optimize_for_inference(model, onednn=onednn)(x)
    assert (out - expected).abs().max() <= 1e-4 * expected.abs().max()
