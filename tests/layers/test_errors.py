"""Bad arguments raise ValueError naming the argument, the value given and what is accepted."""
import re

import pytest
import torch
from torch import nn

from mobileconv.layers import (Conv2dSame, ConvNormAct, DepthwiseSeparableConv2d, GroupedConv2d, MixConv2d,
                               SpatialSeparableConv2d, SqueezeExcite, XSepConv2d, conv2d, create_act, create_conv2d,
                               exponential_split, get_act, set_layer_impl, xsep_padding_schedule)
from mobileconv.layers.helpers import split_channels

ODD = re.escape("positive odd integer (1, 3, 5, 7, ...)")
STRIDE = "stride must be 1 or 2, got "
ACTS = re.escape("['hard_sigmoid', 'hard_swish', 'hsigmoid', 'hswish', 'identity', 'relu', 'relu6', 'sigmoid', "
                 "'silu', 'swish']")
PADDINGS = re.escape("('right_top', 'right_bottom', 'left_top', 'left_bottom', 'symmetric')")

BAD_ARGUMENTS = {
    # MixConv2d
    "mix_even_kernel": (lambda: MixConv2d(8, [3, 4]), rf"kernel_sizes must be a {ODD} .*got \[3, 4\] \(bad value 4\)"),
    "mix_zero_kernel": (lambda: MixConv2d(8, [0, 3]), rf"kernel_sizes must be a {ODD} .*got \[0, 3\] \(bad value 0\)"),
    "mix_negative_kernel": (lambda: MixConv2d(8, -3), rf"kernel_sizes must be a {ODD} .*got -3"),
    "mix_no_kernel": (lambda: MixConv2d(8, []), r"kernel_sizes must be .* or a non-empty list of them, got \[\]"),
    "mix_too_many_groups": (lambda: MixConv2d(2, [3, 5, 7]),
                            r"channels=2 is fewer than the number of groups \(3\); need channels >= 3"),
    "mix_exponential_too_few": (lambda: MixConv2d(7, [3, 5, 7, 9], split="exponential"),
                                r"channels=7 is too few for an exponential split into 4 groups .*need channels >= 8"),
    "mix_split": (lambda: MixConv2d(8, [3, 5], split="uneven"),
                  r"split must be one of \('equal', 'exponential'\), got 'uneven'"),
    "mix_padding": (lambda: MixConv2d(8, [3, 5], padding="valid"),
                    r"padding must be one of \('', 'same', 'tf'\) .*got 'valid'"),
    "mix_stride": (lambda: MixConv2d(8, [3, 5], stride=3), STRIDE + "3"),
    "mix_stride_zero": (lambda: MixConv2d(8, [3, 5], stride=0), STRIDE + "0"),
    "mix_dilated_stride": (lambda: MixConv2d(8, [3, 5], stride=2, dilated=True),
                           r"stride must be 1 for a dilated MixConv \(dilated=True\), got stride=2"),
    "mix_channels": (lambda: MixConv2d(0, [3]), r"channels must be a positive integer, got 0"),
    "mix_impl": (lambda: MixConv2d(8, [3], impl="turbo"), r"impl must be one of \('fast', 'reference'\), got 'turbo'"),
    # create_conv2d: "same" padding needs an odd kernel (an even one would shrink the map by one pixel)
    "conv2d_even_kernel": (lambda: conv2d(8, 8, 2), rf"kernel_size must be a {ODD}, got 2"),
    "conv2d_stride": (lambda: conv2d(8, 8, 3, stride=3), STRIDE + "3"),
    "conv2d_dilation": (lambda: conv2d(8, 8, 3, dilation=0), r"dilation must be a positive integer, got 0"),
    "create_even_kernel": (lambda: create_conv2d(8, 8, 4), rf"kernel_size must be a {ODD} .*got 4 \(bad value 4\)"),
    "create_even_dw_list": (lambda: create_conv2d(8, 8, [4], depthwise=True),
                            rf"kernel_size must be a {ODD} .*got \[4\] \(bad value 4\)"),
    "cna_norm_layer": (lambda: ConvNormAct(8, 8, 3, norm_layer="batchnorm"),
                       r"norm_layer must be a callable taking the channel count .*got 'batchnorm'"),
    # GroupedConv2d
    "grouped_in": (lambda: GroupedConv2d(2, 8, [1, 1, 1]),
                   r"in_channels=2 is fewer than the number of groups \(3\); need in_channels >= 3"),
    "grouped_out": (lambda: GroupedConv2d(8, 2, [1, 1, 1]),
                    r"out_channels=2 is fewer than the number of groups \(3\); need out_channels >= 3"),
    "grouped_even_kernel": (lambda: GroupedConv2d(8, 8, [2, 2]), rf"kernel_sizes must be a {ODD}.*bad value 2"),
    "grouped_stride": (lambda: GroupedConv2d(8, 8, [1, 1], 4), STRIDE + "4"),
    "grouped_padding": (lambda: GroupedConv2d(8, 8, [1], padding="SAME"), r"padding must be one of .*got 'SAME'"),
    # XSepConv2d
    "xsep_even_kernel": (lambda: XSepConv2d(8, 4), rf"kernel_size must be a {ODD}, got 4"),
    "xsep_zero_kernel": (lambda: XSepConv2d(8, 0), rf"kernel_size must be a {ODD}, got 0"),
    "xsep_padding": (lambda: XSepConv2d(8, 5, padding="up"), rf"padding must be one of {PADDINGS} .*got 'up'"),
    "xsep_symmetric_channels": (lambda: XSepConv2d(3, 5), r"channels=3 is fewer than 4: padding='symmetric' .*"
                                                          r"need channels >= 4 or a one-sided padding"),
    "xsep_act": (lambda: XSepConv2d(8, 5, act_layer="mish"),
                 rf"act_layer must be one of {ACTS}, a module class or None; got unknown activation 'mish'"),
    "xsep_stride": (lambda: XSepConv2d(8, 5, 3), STRIDE + "3"),
    "xsep_channels": (lambda: XSepConv2d(-1, 5), r"channels must be a positive integer, got -1"),
    "schedule_negative": (lambda: xsep_padding_schedule(-1), r"n must be a non-negative number of 2x2 layers, got -1"),
    # ConvNormAct
    "cna_even_kernel": (lambda: ConvNormAct(4, 8, 2), rf"kernel_size must be a {ODD}, got 2"),
    "cna_more_groups_than_channels": (lambda: ConvNormAct(4, 8, 3, groups=8),
                                      r"groups=8 must divide in_channels=4 and out_channels=8"),
    "cna_groups_zero": (lambda: ConvNormAct(4, 8, 3, groups=0), r"groups must be a positive integer, got 0"),
    "cna_act": (lambda: ConvNormAct(4, 8, 3, act_layer="gelu"), r"act_layer must be one of .*got unknown activation 'gelu'"),
    "cna_stride": (lambda: ConvNormAct(4, 8, 3, stride=-1), STRIDE + "-1"),
    "cna_padding": (lambda: ConvNormAct(4, 8, 3, padding="valid"), r"padding must be one of .*got 'valid'"),
    "cna_in_channels": (lambda: ConvNormAct(0, 8, 3), r"in_channels must be a positive integer, got 0"),
    # separable convs
    "dws_even_kernel": (lambda: DepthwiseSeparableConv2d(4, 8, 4), rf"kernel_size must be a {ODD}, got 4"),
    "dws_stride": (lambda: DepthwiseSeparableConv2d(4, 8, 3, 3), STRIDE + "3"),
    "dws_act": (lambda: DepthwiseSeparableConv2d(4, 8, act_layer="swishh"), r"act_layer must be one of .*'swishh'"),
    "dws_out_channels": (lambda: DepthwiseSeparableConv2d(4, 0), r"out_channels must be a positive integer, got 0"),
    "sps_kernel": (lambda: SpatialSeparableConv2d(4, 8, 0), rf"kernel_size must be a {ODD}, got 0"),
    "sps_stride": (lambda: SpatialSeparableConv2d(4, 8, 3, 5), STRIDE + "5"),
    # SE, activations, impl switch
    "se_reduced": (lambda: SqueezeExcite(8, 0), r"reduced_channels must be a positive integer, got 0"),
    "se_act": (lambda: SqueezeExcite(8, 2, act_layer="nope"), r"act_layer must be one of .*got unknown activation 'nope'"),
    "se_gate": (lambda: SqueezeExcite(8, 2, gate_layer="nope"), r"gate_layer must be one of .*'nope'"),
    "cna_act_instance": (lambda: ConvNormAct(4, 8, 3, act_layer=nn.ReLU()),
                         r"act_layer must be a module class, a name or None, not a module instance; "
                         r"pass ReLU rather than ReLU\(\)"),
    "se_gate_instance": (lambda: SqueezeExcite(8, 2, gate_layer=nn.Sigmoid()), r"gate_layer must be a module class.*"
                                                                              r"pass Sigmoid rather than Sigmoid\(\)"),
    "get_act": (lambda: get_act("mish"), rf"activation must be one of {ACTS}, a module class or None; got .*'mish'"),
    "create_act": (lambda: create_act("Mish"), r"activation must be one of .*'Mish'"),
    "exponential_split_zero_groups": (lambda: exponential_split(8, 0), r"num_groups must be a positive integer, got 0"),
    "split_channels_zero_groups": (lambda: split_channels(8, 0), r"num_groups must be a positive integer, got 0"),
    "mix_float_stride": (lambda: MixConv2d(8, [3, 5], stride=2.0), STRIDE + "2.0"),
    "cna_norm_instance": (lambda: ConvNormAct(4, 8, 3, norm_layer=nn.BatchNorm2d(8)),
                          r"norm_layer must be .* not a module instance; pass BatchNorm2d rather than BatchNorm2d\(\.\.\.\)"),
    "exponential_split": (lambda: exponential_split(3, 3), r"channels=3 is too few .*\[1, 0, 2\].*need channels >= 4"),
    "set_layer_impl": (lambda: set_layer_impl(nn.ReLU(), "turbo"),
                       r"impl must be one of \('fast', 'reference'\), got 'turbo'"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGUMENTS))
def test_bad_argument_message(case):
    make, message = BAD_ARGUMENTS[case]
    with pytest.raises(ValueError, match=message):
        make()


OPERATORS = {
    "ConvNormAct": lambda: ConvNormAct(4, 8, 3),
    "GroupedConv2d": lambda: GroupedConv2d(4, 8, [1, 3]),
    "DepthwiseSeparableConv2d": lambda: DepthwiseSeparableConv2d(4, 8),
    "SpatialSeparableConv2d": lambda: SpatialSeparableConv2d(4, 8, 3),
    "MixConv2d": lambda: MixConv2d(4, [3, 5]),
    "XSepConv2d": lambda: XSepConv2d(4, 5),
    "SqueezeExcite": lambda: SqueezeExcite(4, 2),
    "Conv2dSame": lambda: Conv2dSame(4, 8, 3, 2),
}


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("name", sorted(OPERATORS))
@pytest.mark.parametrize("shape", [(1, 5, 8, 8), (1, 3, 8, 8), (4, 8, 8)])
def test_wrong_input_channels_at_forward(name, impl, shape):
    m = set_layer_impl(OPERATORS[name](), impl)
    expected = re.escape(f"{name}: input x must have shape (N, 4, H, W), i.e. 4 channels, got shape {list(shape)}")
    with pytest.raises(ValueError, match=expected):
        m(torch.zeros(shape))
