"""Efficient convolution operators, usable as drop-in ``nn.Module``s."""
from torch import nn

from .activations import create_act, get_act
from .conv import Conv2dSame, conv2d, create_conv2d
from .conv_norm_act import ConvNormAct
from .grouped import GroupedConv2d
from .helpers import IMPLS, make_divisible, split_channels
from .mixconv import MixConv2d, exponential_split
from .separable import DepthwiseSeparableConv2d, SpatialSeparableConv2d
from .squeeze_excite import SqueezeExcite
from .xsepconv import XSepConv2d, xsep_padding_schedule


def set_layer_impl(model: nn.Module, impl: str) -> nn.Module:
    """Switch every MixConv2d / XSepConv2d / GroupedConv2d in ``model`` to ``"fast"`` or ``"reference"``."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    for m in model.modules():
        if isinstance(m, (MixConv2d, XSepConv2d, GroupedConv2d)):
            m.impl = impl
    return model


__all__ = [
    "Conv2dSame", "ConvNormAct", "DepthwiseSeparableConv2d", "GroupedConv2d", "MixConv2d", "SpatialSeparableConv2d",
    "SqueezeExcite", "XSepConv2d", "conv2d", "create_act", "create_conv2d", "exponential_split", "get_act",
    "make_divisible", "set_layer_impl", "split_channels", "xsep_padding_schedule",
]
