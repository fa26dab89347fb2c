"""mixify / xsepify replace only plain ``nn.Conv2d`` depthwise convs.

A subclass or a hooked conv computes something the new operator would drop: before, a
weight-standardised depthwise conv became a MixConv with a different output (the "same function
until trained" promise broken), a QAT conv lost its fake quantisation, a pruned conv its mask.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.nn.qat import Conv2d as QATConv2d
from torch.ao.quantization import get_default_qat_qconfig
from torch.nn.utils import parametrizations, prune

import mobileconv
from mobileconv.layers import MixConv2d, XSepConv2d


class StdConv2d(nn.Conv2d):
    """Weight-standardised conv (BiT / NFNet style): a subclass with its own forward."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _dw(k=5):
    return nn.Conv2d(8, 8, k, padding=k // 2, groups=8, bias=False)


def _qat(k=5):
    return QATConv2d(8, 8, k, padding=k // 2, groups=8, bias=False, qconfig=get_default_qat_qconfig("fbgemm"))


def _hooked(k=5):
    conv = _dw(k)
    conv.register_forward_hook(lambda m, args, out: out * 2)
    return conv


SPECIAL = {
    "subclass": lambda: StdConv2d(8, 8, 5, padding=2, groups=8, bias=False),
    "qat": _qat,
    "parametrized": lambda: parametrizations.weight_norm(_dw()),
    "pruned": lambda: prune.l1_unstructured(_dw(), "weight", amount=0.5),
    "forward_hook": _hooked,
}


@pytest.mark.parametrize("kind", sorted(SPECIAL))
@pytest.mark.parametrize("convert", ["mixify", "xsepify"])
def test_special_convs_are_left_alone_and_plain_ones_converted(kind, convert):
    torch.manual_seed(0)
    special = SPECIAL[kind]()
    model = nn.Sequential(special, nn.ReLU(), _dw()).eval()
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        before = model[0](x)
    getattr(mobileconv, convert)(model)
    assert model[0] is special
    assert isinstance(model[2], MixConv2d if convert == "mixify" else XSepConv2d)
    with torch.no_grad():
        torch.testing.assert_close(model[0](x), before)


def test_mixify_keeps_the_function_of_a_model_with_a_weight_standardised_conv():
    torch.manual_seed(0)
    model = nn.Sequential(StdConv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(), _dw(3)).eval()
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        before = model(x)
        mobileconv.mixify(model, (3, 5, 7))
        torch.testing.assert_close(model(x), before)
