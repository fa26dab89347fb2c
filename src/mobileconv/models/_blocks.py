"""The three blocks every family in the zoo is made of.

* :class:`DepthwiseSeparableBlock` -- ``dw -> BN -> act -> [SE] -> pw -> BN [-> act]``
  (MobileNetV1, Fig. 3; the first block of MobileNetV2 / V3 and MixNet).
* :class:`InvertedResidual` -- ``pw expand -> BN -> act -> dw -> BN -> act -> [SE] -> pw project -> BN``
  with an identity skip (MobileNetV2, Table 1 / Fig. 3c; MobileNetV3, Fig. 4; MixNet).
* :class:`ConvBnActBlock` -- ``conv -> BN -> act`` (MobileNetV3's last 1x1 stage).

Sub-modules carry timm's names (``conv_pw, bn1, conv_dw, bn2, se, conv_pwl, bn3``), so
timm checkpoints load by key. The convs come from :func:`create_dw_conv` and
:func:`mobileconv.layers.create_conv2d`; blocks never branch on operator types.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..layers import XSepConv2d, create_act, create_conv2d

NormLayer = Callable[[int], nn.Module]
SELayer = Callable[[int, int, str], nn.Module]  # (channels, reduced channels, block act) -> module


def create_dw_conv(channels: int, kernel_size: int | Sequence[int], stride: int, *, padding: str = "",
                   xsep_padding: str | None = None, act_layer: str = "relu",
                   norm_layer: NormLayer = nn.BatchNorm2d) -> nn.Module:
    """The depthwise-conv factory: XSepConv when ``xsep_padding`` is given, else depthwise / MixConv.

    ``xsep_padding`` is the 2x2 conv's padding direction (see
    :func:`mobileconv.layers.xsep_padding_schedule`); the XSepConv then uses ``act_layer`` and
    ``norm_layer`` for its inner activations / BNs. Its last BN (after the Kx1 conv) is the
    block's own ``bn2``, which follows it, so it has none of its own (``last_norm=False``).
    """
    if xsep_padding is not None:
        if not isinstance(kernel_size, int):
            raise ValueError(f"XSepConv takes one kernel size, got {kernel_size!r}")
        return XSepConv2d(channels, kernel_size, stride, padding=xsep_padding, act_layer=act_layer,
                          norm_layer=norm_layer, last_norm=False)
    return create_conv2d(channels, channels, kernel_size, stride, depthwise=True, padding=padding)


class DropPath(nn.Module):
    """Stochastic depth on the residual branch (Huang et al. 2016); identity in eval mode or at rate 0."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {rate!r}")
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = [x.shape[0]] + [1] * (x.dim() - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep


class DepthwiseSeparableBlock(nn.Module):
    """``k x k depthwise -> BN -> act -> [SE] -> 1x1 pointwise -> BN [-> act]`` (MobileNetV1, Fig. 3).

    With ``pw_act=False`` and a skip this is the first block of MobileNetV2 / V3 and MixNet;
    with ``pw_act=True`` and no skip it is MobileNetV1's layer.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int], stride: int, *,
                 act_layer: str, se_channels: int = 0, se_layer: SELayer | None = None, pw_act: bool = False,
                 use_skip: bool = True, norm_layer: NormLayer = nn.BatchNorm2d, padding: str = "",
                 xsep_padding: str | None = None, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.use_skip = use_skip and stride == 1 and in_channels == out_channels
        self.conv_dw = create_dw_conv(in_channels, kernel_size, stride, padding=padding, xsep_padding=xsep_padding,
                                      act_layer=act_layer, norm_layer=norm_layer)
        self.bn1 = norm_layer(in_channels)
        self.act1 = create_act(act_layer, inplace=True)
        self.se = se_layer(in_channels, se_channels, act_layer) if se_channels else nn.Identity()
        self.conv_pw = create_conv2d(in_channels, out_channels, 1, padding=padding)
        self.bn2 = norm_layer(out_channels)
        self.act2 = create_act(act_layer if pw_act else None, inplace=True)
        self.drop_path = DropPath(drop_path_rate) if self.use_skip else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.se(self.act1(self.bn1(self.conv_dw(x))))
        x = self.act2(self.bn2(self.conv_pw(x)))
        return shortcut + self.drop_path(x) if self.use_skip else x


class InvertedResidual(nn.Module):
    """Inverted residual with linear bottleneck (MobileNetV2, Table 1; MobileNetV3, Fig. 4; MixNet, Fig. 4).

    ``1x1 expand -> BN -> act -> k x k depthwise / MixConv -> BN -> act -> [SE] -> 1x1 project -> BN``,
    plus the identity when ``stride == 1`` and the widths match. ``exp_kernels`` / ``pwl_kernels``
    with more than one entry make the 1x1 convs MixNet's grouped convs (``a1.1`` / ``p1.1``).
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                 stride: int, *, act_layer: str, se_channels: int = 0, se_layer: SELayer | None = None,
                 exp_kernels: Sequence[int] = (1,), pwl_kernels: Sequence[int] = (1,), use_skip: bool = True,
                 norm_layer: NormLayer = nn.BatchNorm2d, padding: str = "", xsep_padding: str | None = None,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.in_channels, self.mid_channels, self.out_channels = in_channels, mid_channels, out_channels
        self.use_skip = use_skip and stride == 1 and in_channels == out_channels
        self.conv_pw = create_conv2d(in_channels, mid_channels, list(exp_kernels), padding=padding)
        self.bn1 = norm_layer(mid_channels)
        self.act1 = create_act(act_layer, inplace=True)
        self.conv_dw = create_dw_conv(mid_channels, kernel_size, stride, padding=padding, xsep_padding=xsep_padding,
                                      act_layer=act_layer, norm_layer=norm_layer)
        self.bn2 = norm_layer(mid_channels)
        self.act2 = create_act(act_layer, inplace=True)
        self.se = se_layer(mid_channels, se_channels, act_layer) if se_channels else nn.Identity()
        self.conv_pwl = create_conv2d(mid_channels, out_channels, list(pwl_kernels), padding=padding)
        self.bn3 = norm_layer(out_channels)
        self.drop_path = DropPath(drop_path_rate) if self.use_skip else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv_pw(x)))
        x = self.se(self.act2(self.bn2(self.conv_dw(x))))
        x = self.bn3(self.conv_pwl(x))
        return shortcut + self.drop_path(x) if self.use_skip else x


class ConvBnActBlock(nn.Module):
    """``conv -> BN -> act`` (MobileNetV3's final 1x1 conv to 960 / 576 channels, Tables 1-2)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, *, act_layer: str,
                 norm_layer: NormLayer = nn.BatchNorm2d, padding: str = "") -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.conv = create_conv2d(in_channels, out_channels, kernel_size, stride, padding=padding)
        self.bn1 = norm_layer(out_channels)
        self.act1 = create_act(act_layer, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv(x)))
