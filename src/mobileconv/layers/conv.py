"""Plain convolutions with PyTorch or TensorFlow "same" padding, and the one conv factory.

``create_conv2d`` decides dense / grouped / depthwise / MixConv from its arguments, so
blocks never branch on operator types (timm's ``create_conv2d`` pattern).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .helpers import check_kernel_sizes, check_stride, tf_same_pad

PADDING_MODES = ("", "same", "tf")


def check_padding_mode(padding: str) -> str:
    if padding not in PADDING_MODES:
        raise ValueError(f"padding must be one of {PADDING_MODES} ('' or 'same' = symmetric PyTorch padding, "
                         f"'tf' = TensorFlow SAME padding), got {padding!r}")
    return padding


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding computed from the input size.

    For stride 2 on an even input TF puts the extra row / column at the bottom / right,
    which checkpoints ported from the official TF MixNet / EfficientNet release rely on.
    The state_dict is that of ``nn.Conv2d``.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs["padding"] = 0
        super().__init__(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph = tf_same_pad(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        pw = tf_same_pad(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        x = F.pad(x, [pw[0], pw[1], ph[0], ph[1]])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def conv2d(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
           groups: int = 1, bias: bool = False, padding: str = "") -> nn.Conv2d:
    """A single conv with "same" padding: symmetric ``(k - 1) // 2 * d`` or TF SAME (``padding='tf'``)."""
    check_padding_mode(padding)
    if padding == "tf" and stride > 1:
        return Conv2dSame(in_channels, out_channels, kernel_size, stride, dilation=dilation,
                          groups=groups, bias=bias)
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=(kernel_size - 1) // 2 * dilation,
                     dilation=dilation, groups=groups, bias=bias)


def create_conv2d(in_channels: int, out_channels: int, kernel_size: int | Sequence[int], stride: int = 1,
                  dilation: int = 1, depthwise: bool = False, bias: bool = False, padding: str = "",
                  split: str = "equal", dilated: bool = False) -> nn.Module:
    """The conv factory used by every block.

    * ``kernel_size`` a list and ``depthwise`` -> :class:`MixConv2d` (one kernel per channel group);
    * ``kernel_size`` a list, not depthwise -> :class:`GroupedConv2d` (MixNet's grouped 1x1 conv);
    * an int -> a dense or depthwise ``nn.Conv2d``.
    """
    from .grouped import GroupedConv2d
    from .mixconv import MixConv2d

    check_stride(stride)
    check_kernel_sizes(kernel_size, "kernel_size")  # odd: "same" padding is symmetric
    if isinstance(kernel_size, int):
        groups = in_channels if depthwise else 1
        if depthwise and in_channels != out_channels:
            raise ValueError(f"a depthwise conv needs in_channels == out_channels, got {in_channels} -> {out_channels}")
        return conv2d(in_channels, out_channels, kernel_size, stride, dilation, groups, bias, padding)
    kernel_sizes = list(kernel_size)
    if depthwise:
        if in_channels != out_channels:
            raise ValueError(f"a MixConv is depthwise: in_channels == out_channels, got {in_channels} -> {out_channels}")
        if len(kernel_sizes) == 1:
            return conv2d(in_channels, out_channels, kernel_sizes[0], stride, dilation, in_channels, bias, padding)
        return MixConv2d(in_channels, kernel_sizes, stride, split=split, dilated=dilated, padding=padding)
    if len(kernel_sizes) == 1:
        return conv2d(in_channels, out_channels, kernel_sizes[0], stride, dilation, 1, bias, padding)
    return GroupedConv2d(in_channels, out_channels, kernel_sizes, stride, padding=padding)
