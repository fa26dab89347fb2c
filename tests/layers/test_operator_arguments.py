"""Operator arguments: norm_layer / bias / activation given in a form the operator cannot use.

Each is refused with a ValueError naming what is expected, instead of an AttributeError /
TypeError from deep inside, or a silently wrong layer (``bias="no"`` is truthy).
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobileconv.layers import ConvNormAct, DepthwiseSeparableConv2d, SpatialSeparableConv2d, SqueezeExcite, create_act


@pytest.mark.parametrize("norm_layer, message", [
    (nn.BatchNorm2d(8), r"norm_layer must be .* not a module instance; pass BatchNorm2d rather than BatchNorm2d\(\.\.\.\)"),
    ("batchnorm", r"norm_layer must be a callable taking the channel count .*got 'batchnorm'"),
])
def test_depthwise_separable_refuses_a_bad_norm_layer(norm_layer, message):
    with pytest.raises(ValueError, match=message):
        DepthwiseSeparableConv2d(8, 16, norm_layer=norm_layer)


def test_depthwise_separable_without_norm_is_dw_act_pw_act():
    # norm_layer=None, as for ConvNormAct and XSepConv2d: no normalisation, bias-free convs.
    torch.manual_seed(0)
    m = DepthwiseSeparableConv2d(4, 6, 5, 2, norm_layer=None, act_layer="relu6").eval()
    assert sum(p.numel() for p in m.parameters()) == 4 * 25 + 4 * 6
    x = torch.randn(2, 4, 9, 8)
    y = F.relu6(F.conv2d(x, m.conv_dw.weight, None, 2, 2, 1, 4))
    expected = F.relu6(F.conv2d(y, m.conv_pw.weight))
    torch.testing.assert_close(m(x), expected)
    assert m(x).shape == (2, 6, 5, 4)


@pytest.mark.parametrize("make", [
    lambda bias: ConvNormAct(4, 8, 3, bias=bias),
    lambda bias: SpatialSeparableConv2d(4, 8, 3, bias=bias),
], ids=["ConvNormAct", "SpatialSeparableConv2d"])
@pytest.mark.parametrize("bias", ["no", 0, 1.0])
def test_bias_must_be_a_bool(make, bias):
    with pytest.raises(ValueError, match=rf"bias must be True(, False or None| or False).*got {bias!r}"):
        make(bias)


def test_bias_flags_still_work():
    assert ConvNormAct(4, 8, 3, bias=True).conv.bias is not None
    assert ConvNormAct(4, 8, 3).conv.bias is None
    assert ConvNormAct(4, 8, 3, norm_layer=None).conv.bias is not None
    assert SpatialSeparableConv2d(4, 8, 3, bias=True).conv_1xk.bias is not None


def test_activation_factory_must_build_a_module():
    with pytest.raises(ValueError, match=r"act_layer must build an nn.Module .* returned int"):
        SqueezeExcite(8, 2, act_layer=lambda: 1)
    with pytest.raises(ValueError, match=r"activation must build an nn.Module"):
        create_act(lambda **kwargs: torch.relu)
    assert isinstance(create_act(nn.Sigmoid, inplace=True), nn.Sigmoid)  # no inplace argument: built without it
    # a function where a module class belongs (F.relu for nn.ReLU) used to leak relu()'s TypeError
    with pytest.raises(ValueError, match=r"act_layer must build an nn.Module when called .* not a function such "
                                         r"as F.relu.*missing 1 required positional argument"):
        SqueezeExcite(8, 2, act_layer=torch.nn.functional.relu)
