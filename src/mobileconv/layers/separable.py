"""Depthwise-separable and spatially separable convolutions (MobileNetV1, Sec. 3.1)."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .activations import ActLayer, create_act
from .conv import conv2d
from .helpers import check_input_channels, check_kernel_size, check_norm_layer, check_positive, check_stride


def check_bias(bias: object, name: str = "bias") -> bool:
    """``bias`` must be a bool (a truthy string such as ``"no"`` would silently add a bias)."""
    if not isinstance(bias, bool):
        raise ValueError(f"{name} must be True or False, got {bias!r}")
    return bias


class DepthwiseSeparableConv2d(nn.Module):
    """``k x k depthwise -> BN -> act -> 1x1 pointwise -> BN -> act`` (MobileNetV1, Fig. 3).

    Cost relative to a dense ``k x k`` conv: ``1 / out_channels + 1 / k^2`` (MobileNetV1, Eq. 5).
    ``norm_layer`` is a callable taking the channel count (``nn.BatchNorm2d`` by default), or ``None``
    for no normalisation (each BN is then an ``nn.Identity``; the convs stay bias-free).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, *,
                 norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d, act_layer: ActLayer = nn.ReLU,
                 padding: str = "") -> None:
        super().__init__()
        in_channels = check_positive(in_channels, "in_channels")
        out_channels = check_positive(out_channels, "out_channels")
        k = check_kernel_size(kernel_size)
        stride = check_stride(stride)
        check_norm_layer(norm_layer)
        norm_layer = nn.Identity if norm_layer is None else norm_layer  # nn.Identity(channels) ignores its argument
        self.in_channels, self.out_channels = in_channels, out_channels
        self.conv_dw = conv2d(in_channels, in_channels, k, stride, groups=in_channels, padding=padding)
        self.bn1 = norm_layer(in_channels)
        self.act1 = create_act(act_layer, inplace=True, arg_name="act_layer")
        self.conv_pw = conv2d(in_channels, out_channels, 1)
        self.bn2 = norm_layer(out_channels)
        self.act2 = create_act(act_layer, inplace=True, arg_name="act_layer")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_channels(x, self.in_channels, "DepthwiseSeparableConv2d")
        x = self.act1(self.bn1(self.conv_dw(x)))
        return self.act2(self.bn2(self.conv_pw(x)))


class SpatialSeparableConv2d(nn.Module):
    """A ``k x k`` conv factored into ``k x 1`` then ``1 x k`` (``2k`` weights per filter instead of ``k^2``).

    With ``stride=2`` the ``k x 1`` conv strides vertically and the ``1 x k`` conv horizontally.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, *,
                 bias: bool = False) -> None:
        super().__init__()
        in_channels = check_positive(in_channels, "in_channels")
        out_channels = check_positive(out_channels, "out_channels")
        k = check_kernel_size(kernel_size)
        stride = check_stride(stride)
        check_bias(bias)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.conv_kx1 = nn.Conv2d(in_channels, out_channels, (k, 1), (stride, 1), (k // 2, 0), bias=False)
        self.conv_1xk = nn.Conv2d(out_channels, out_channels, (1, k), (1, stride), (0, k // 2), bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_channels(x, self.in_channels, "SpatialSeparableConv2d")
        return self.conv_1xk(self.conv_kx1(x))
