"""Conv -> norm -> activation, torchvision's ``Conv2dNormActivation`` pattern."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn
from torch._jit_internal import _copy_to_script_wrapper

from .activations import ActLayer, create_act
from .conv import conv2d
from .helpers import (check_flag, check_input_channels, check_kernel_size, check_norm_layer, check_positive,
                      check_stride)


class ConvNormAct(nn.Sequential):
    """``conv -> norm -> act`` with "same" padding; ``norm_layer=None`` / ``act_layer=None`` drop a layer.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size.
        stride: 1 or 2.
        groups: conv groups (``in_channels`` for a depthwise conv).
        dilation: conv dilation (the padding keeps the size: ``(k - 1) // 2 * dilation``).
        norm_layer: a callable taking the channel count (``nn.BatchNorm2d`` by default) or ``None``.
        act_layer: an activation class or name (``"relu"``, ``"hswish"``...) or ``None``.
        bias: conv bias; defaults to ``norm_layer is None``.
        padding: ``""`` for symmetric padding, ``"tf"`` for TensorFlow SAME padding.
        inplace: run the activation in place.

    A slice (``layer[:2]``, conv and norm) is a plain ``nn.Sequential`` of those layers.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d, act_layer: ActLayer = nn.ReLU,
                 dilation: int = 1, bias: bool | None = None, padding: str = "", inplace: bool = True) -> None:
        in_channels = check_positive(in_channels, "in_channels")
        out_channels = check_positive(out_channels, "out_channels")
        kernel_size = check_kernel_size(kernel_size)
        stride = check_stride(stride)
        groups = check_positive(groups, "groups")
        dilation = check_positive(dilation, "dilation")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels} "
                             f"(use groups=1 for a dense conv, groups=in_channels for a depthwise one)")
        check_norm_layer(norm_layer)
        check_flag(inplace, "inplace")  # a truthy string such as "no" would silently run it in place
        if bias is None:
            bias = norm_layer is None
        elif not isinstance(bias, bool):  # a truthy string such as "no" would silently add a bias
            raise ValueError(f"bias must be True, False or None (None: a bias only without norm_layer), got {bias!r}")
        layers: dict[str, nn.Module] = {
            "conv": conv2d(in_channels, out_channels, kernel_size, stride, dilation, groups, bias, padding)}
        if norm_layer is not None:
            layers["bn"] = norm_layer(out_channels)
        if act_layer is not None:
            layers["act"] = create_act(act_layer, inplace=inplace, arg_name="act_layer")
        super().__init__(*[])
        for name, layer in layers.items():
            self.add_module(name, layer)
        self.in_channels, self.out_channels = in_channels, out_channels

    @_copy_to_script_wrapper  # as nn.ModuleList / nn.Sequential's: a scripted layer indexes the same way
    def __getitem__(self, idx):
        if isinstance(idx, slice):  # nn.Sequential would call ConvNormAct(OrderedDict(...))
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_channels(x, self.in_channels, "ConvNormAct")
        for layer in self:
            x = layer(x)
        return x
