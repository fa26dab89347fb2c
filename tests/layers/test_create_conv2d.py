"""create_conv2d honours every argument or rejects it; an int kernel and a one-element list are the same conv.

Oracles: ``nn.Conv2d`` built directly from the documented formulas (padding ``(k - 1) // 2 * d``,
``dilated=True``: 3x3 with dilation ``(k - 1) // 2``), with the factory's weights copied in.
"""
import pytest
import torch
from torch import nn

from mobileconv.layers import GroupedConv2d, MixConv2d, create_conv2d

from .oracles import tf_same_pads

# (kwargs, (out_channels, oracle kernel, oracle dilation, groups)) for kernel_size=5 and in_channels=8
SINGLE_KERNEL_CASES = {
    "dense": (dict(out_channels=16), (16, 5, 1, 1)),
    "dense_bias_dilation": (dict(out_channels=16, bias=True, dilation=2), (16, 5, 2, 1)),
    "depthwise_bias": (dict(depthwise=True, bias=True), (8, 5, 1, 8)),
    "depthwise_stride2": (dict(depthwise=True, stride=2), (8, 5, 1, 8)),
    "depthwise_dilation": (dict(depthwise=True, dilation=3), (8, 5, 3, 8)),
    "depthwise_dilated": (dict(depthwise=True, dilated=True), (8, 3, 2, 8)),
    "depthwise_dilated_bias_tf": (dict(depthwise=True, dilated=True, bias=True, padding="tf"), (8, 3, 2, 8)),
    "depthwise_exponential": (dict(depthwise=True, split="exponential"), (8, 5, 1, 8)),
}


def oracle_conv(out_channels, k, d, groups, stride, bias):
    return nn.Conv2d(8, out_channels, k, stride, padding=(k - 1) // 2 * d, dilation=d, groups=groups, bias=bias)


@pytest.mark.parametrize("as_list", [False, True], ids=["int", "list"])
@pytest.mark.parametrize("case", SINGLE_KERNEL_CASES)
def test_single_kernel_matches_nn_conv2d(case, as_list):
    kwargs, (out, k, d, groups) = SINGLE_KERNEL_CASES[case]
    kwargs = dict(kwargs)
    out_channels = kwargs.pop("out_channels", 8)
    stride, bias = kwargs.get("stride", 1), kwargs.get("bias", False)
    torch.manual_seed(0)
    conv = create_conv2d(8, out_channels, [5] if as_list else 5, **kwargs)
    oracle = oracle_conv(out, k, d, groups, stride, bias)
    assert type(conv) is nn.Conv2d
    assert (conv.kernel_size, conv.dilation, conv.groups, conv.stride) == ((k, k), (d, d), groups, (stride, stride))
    assert (conv.bias is not None) == bias
    oracle.load_state_dict(conv.state_dict())
    x = torch.randn(2, 8, 13, 14)
    torch.testing.assert_close(conv(x), oracle(x))


def test_one_element_list_is_the_int_conv_with_tf_padding():
    # stride 2 "tf": TF SAME padding (extra pixel after), for the int and the one-element list alike
    torch.manual_seed(0)
    x = torch.randn(2, 8, 12, 13)
    for kernel in (5, [5]):
        conv = create_conv2d(8, 8, kernel, 2, depthwise=True, bias=True, padding="tf")
        ph, pw = tf_same_pads(12, 5, 2), tf_same_pads(13, 5, 2)
        padded = nn.functional.pad(x, [pw[0], pw[1], ph[0], ph[1]])
        oracle = nn.Conv2d(8, 8, 5, 2, groups=8)
        oracle.load_state_dict(conv.state_dict())
        torch.testing.assert_close(conv(x), oracle(padded))


def test_several_kernels_honour_split_dilated_and_padding():
    mix = create_conv2d(16, 16, [3, 5, 7], depthwise=True, split="exponential")
    assert isinstance(mix, MixConv2d) and mix.splits == [8, 4, 4]  # 16/2, 16/4, the rest
    dil = create_conv2d(12, 12, [3, 5, 7], depthwise=True, dilated=True)
    assert isinstance(dil, MixConv2d) and [(c.kernel_size[0], c.dilation[0]) for c in dil] == [(3, 1), (3, 2), (3, 3)]
    tf = create_conv2d(8, 8, [3, 5], 2, depthwise=True, padding="tf")
    assert tf.padding == "tf" and tf.stride == 2
    grouped = create_conv2d(8, 16, [1, 3], 2)
    assert isinstance(grouped, GroupedConv2d) and grouped.stride == 2 and grouped.out_splits == [8, 8]


BAD = {
    "bias_mixconv": (dict(in_channels=8, out_channels=8, kernel_size=[3, 5], depthwise=True, bias=True),
                     r"create_conv2d: bias=True is not supported with a list of kernel sizes \(MixConv2d has no bias"),
    "bias_grouped": (dict(in_channels=8, out_channels=16, kernel_size=[1, 1], bias=True),
                     r"bias=True is not supported with a list of kernel sizes \(GroupedConv2d has no bias"),
    "dilation_mixconv": (dict(in_channels=8, out_channels=8, kernel_size=[3, 5], depthwise=True, dilation=2),
                         r"create_conv2d: dilation=2 is not supported with a list of kernel sizes \(MixConv2d\)"),
    "dilation_grouped": (dict(in_channels=8, out_channels=16, kernel_size=[1, 3], dilation=2),
                         r"dilation=2 is not supported with a list of kernel sizes \(GroupedConv2d\)"),
    "dilation_zero": (dict(in_channels=8, out_channels=8, kernel_size=3, dilation=0),
                      r"dilation must be a positive integer, got 0"),
    "dilated_dense": (dict(in_channels=8, out_channels=16, kernel_size=5, dilated=True),
                      r"create_conv2d: dilated=True \(MixConv's dilated kernels\) needs depthwise=True"),
    "dilated_stride2": (dict(in_channels=8, out_channels=8, kernel_size=[5], stride=2, depthwise=True, dilated=True),
                        r"create_conv2d: dilated=True needs stride=1, got stride=2"),
    "dilated_and_dilation": (dict(in_channels=8, out_channels=8, kernel_size=5, depthwise=True, dilated=True,
                                  dilation=2), r"dilated=True sets the dilation itself, got dilation=2 too"),
    "split_int": (dict(in_channels=8, out_channels=8, kernel_size=3, split="uneven"),
                  r"split must be one of \('equal', 'exponential'\), got 'uneven'"),
    "split_grouped": (dict(in_channels=8, out_channels=16, kernel_size=[1, 1], split="exponential"),
                      r"create_conv2d: split='exponential' is not supported by GroupedConv2d"),
    "padding_int": (dict(in_channels=8, out_channels=8, kernel_size=3, padding="valid"),
                    r"padding must be one of \('', 'same', 'tf'\) .*got 'valid'"),
    "depthwise_list_channels": (dict(in_channels=8, out_channels=16, kernel_size=[3], depthwise=True),
                                r"a depthwise conv needs in_channels == out_channels, got 8 -> 16"),
}


@pytest.mark.parametrize("case", BAD)
def test_arguments_it_cannot_honour_are_errors(case):
    kwargs, message = BAD[case]
    with pytest.raises(ValueError, match=message):
        create_conv2d(**kwargs)
