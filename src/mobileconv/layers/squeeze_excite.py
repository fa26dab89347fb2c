"""Squeeze-and-excitation (Hu et al. 2018) as MixNet and MobileNetV3 use it."""
from __future__ import annotations

import torch
from torch import nn

from .activations import ActLayer, create_act
from .helpers import check_input_channels, check_positive


class SqueezeExcite(nn.Module):
    """``global avg pool -> 1x1 conv (bias) -> act -> 1x1 conv (bias) -> gate -> scale``.

    MixNet: ``reduced_channels = max(1, int(block_in_channels * se_ratio))``, swish, sigmoid.
    MobileNetV3 (paper, Fig. 4): ``reduced_channels = make_divisible(channels / 4, 8)``, ReLU,
    hard-sigmoid. Sub-modules ``conv_reduce`` / ``conv_expand`` follow timm's names.
    """

    def __init__(self, channels: int, reduced_channels: int, act_layer: ActLayer = nn.ReLU,
                 gate_layer: ActLayer = nn.Sigmoid) -> None:
        super().__init__()
        channels = check_positive(channels, "channels")
        reduced_channels = check_positive(reduced_channels, "reduced_channels")
        self.channels = channels
        self.conv_reduce = nn.Conv2d(channels, reduced_channels, 1, bias=True)
        self.act1 = create_act(act_layer, inplace=True, arg_name="act_layer")
        self.conv_expand = nn.Conv2d(reduced_channels, channels, 1, bias=True)
        self.gate = create_act(gate_layer, arg_name="gate_layer")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_channels(x, self.channels, "SqueezeExcite")
        s = x.mean((2, 3), keepdim=True)
        s = self.conv_expand(self.act1(self.conv_reduce(s)))
        return x * self.gate(s)
