"""Audit of README "Speed": conv / BN subclasses with a forward of their own, re-optimising, and
OneDNNConv2d's residual + ReLU in bfloat16.

Oracles: the eval-mode model itself, and ``F.conv2d`` + ``+`` + ``F.relu`` (plain ops).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobileconv.deploy import onednn
from mobileconv.deploy.onednn import OneDNNConv2d, onednn_available
from mobileconv.deploy.optimize import optimize_for_inference

from .test_optimize import assert_close_to_scale


class StdConv2d(nn.Conv2d):
    """Weight standardisation (timm's ``StdConv2d``, BiT): a BN scale folded into the weight is normalised away."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.var((1, 2, 3), keepdim=True, unbiased=False) + 1e-6).sqrt()
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class BatchNormAct2d(nn.BatchNorm2d):
    """A BN with its activation inside (timm's ``BatchNormAct2d``): folding it into the conv drops the ReLU."""

    def forward(self, x):
        return F.relu(super().forward(x))


class ConvBnNet(nn.Module):
    def __init__(self, conv=nn.Conv2d, bn=nn.BatchNorm2d) -> None:
        super().__init__()
        self.c1, self.b1 = conv(3, 8, 3, padding=1, bias=False), bn(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), bn(8)

    def forward(self, x):
        return self.b2(self.c2(self.b1(self.c1(x))))


def _random_stats(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.5, generator=g)
    return model.eval()


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("kind", [dict(conv=StdConv2d), dict(bn=BatchNormAct2d)], ids=["std_conv", "bn_act"])
def test_subclasses_with_their_own_forward_are_not_folded(kind, verify):
    torch.manual_seed(0)
    model = _random_stats(ConvBnNet(**kind))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
    fast = optimize_for_inference(model, example_input=x, verify=verify)  # was: RuntimeError / a wrong output
    with torch.no_grad():
        assert_close_to_scale(fast(x), expected)


def test_an_optimised_model_can_be_optimised_again():
    # conv -> ReLU -> BN: the first pass fuses the ReLU into a OneDNNConv2d; its output is no conv output to fold into
    torch.manual_seed(0)
    model = _random_stats(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 1)))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
    again = optimize_for_inference(optimize_for_inference(model, example_input=x), example_input=x, verify=False)
    with torch.no_grad():
        assert_close_to_scale(again(x), expected)


@pytest.mark.skipif(not onednn_available() or torch.bfloat16 not in onednn._DTYPES,
                    reason="no oneDNN bfloat16 conv here")
@pytest.mark.parametrize("groups", [1, 2, 8])
def test_bfloat16_residual_then_relu(groups):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups).to(torch.bfloat16)
    fused = OneDNNConv2d.from_conv(conv, nn.ReLU())
    x, residual = torch.randn(2, 8, 9, 9, dtype=torch.bfloat16), torch.randn(2, 8, 9, 9, dtype=torch.bfloat16)
    with torch.no_grad():
        got = fused(x, residual=residual)  # was: "Unsupported datatype for add_relu" for groups > 1
        expected = F.relu(F.conv2d(x.float(), conv.weight.float(), conv.bias.float(), 1, 1, 1, groups)
                          + residual.float())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, rtol=2e-2, atol=5e-2)


@pytest.mark.parametrize("model", [
    nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8)),  # one input channel, no in_chans attribute
    nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.Flatten(), nn.Linear(8 * 112 * 112, 10)),  # 224x224 only
], ids=["channels", "size"])
@pytest.mark.parametrize("verify", [True, False])
def test_a_model_that_fails_on_the_default_example_input_names_example_input(model, verify):
    with pytest.raises(ValueError, match=r"default a random one of shape \(2, 3, 64, 64\).*pass example_input="):
        optimize_for_inference(model, verify=verify)
