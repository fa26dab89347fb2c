"""conv2d / create_conv2d / MixConv2d refuse channel counts and on/off flags they cannot use.

Before, ``create_conv2d(..., bias="no")`` built a conv *with* a bias, ``dilated="no"`` built a
dilated kernel (a different function), and ``in_channels=0`` built an empty conv: all silently.
The oracle is the documented contract (README "Operators": a ValueError naming the argument,
the value and what is accepted) and, for the accepted values, a plain ``nn.Conv2d``.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobileconv.layers import MixConv2d, conv2d, create_conv2d

BAD = {
    "create_bias_str": (lambda: create_conv2d(8, 8, 3, bias="no"), r"bias must be True or False, got 'no'"),
    "create_bias_int": (lambda: create_conv2d(8, 8, [3, 5], depthwise=True, bias=1), r"bias must be True or False, got 1"),
    "create_dilated_str": (lambda: create_conv2d(8, 8, 7, depthwise=True, dilated="no"),
                           r"dilated must be True or False, got 'no'"),
    "create_depthwise_str": (lambda: create_conv2d(8, 8, 3, depthwise="yes"),
                             r"depthwise must be True or False, got 'yes'"),
    "create_in_zero": (lambda: create_conv2d(0, 8, 3), r"in_channels must be a positive integer, got 0"),
    "create_out_zero": (lambda: create_conv2d(8, 0, 3), r"out_channels must be a positive integer, got 0"),
    "create_in_float": (lambda: create_conv2d(8.0, 8, 3), r"in_channels must be a positive integer, got 8.0"),
    "conv2d_bias_str": (lambda: conv2d(8, 8, 3, bias="False"), r"bias must be True or False, got 'False'"),
    "conv2d_in_zero": (lambda: conv2d(0, 8, 3), r"in_channels must be a positive integer, got 0"),
    "mix_dilated_str": (lambda: MixConv2d(8, [3, 5, 7], dilated="no"), r"dilated must be True or False, got 'no'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_flag_or_channel_count_is_a_clear_error(case):
    make, message = BAD[case]
    with pytest.raises(ValueError, match=message):
        make()


def test_good_flags_still_build_the_documented_convs():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 10)
    conv = create_conv2d(8, 8, 7, depthwise=True, dilated=False, bias=True)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, 1, 3, 1, 8))
    dil = create_conv2d(8, 8, 7, depthwise=True, dilated=True)  # 3x3 kernel with dilation (7 - 1) // 2
    assert type(dil) is nn.Conv2d and dil.kernel_size == (3, 3) and dil.dilation == (3, 3)
    torch.testing.assert_close(dil(x), F.conv2d(x, dil.weight, None, 1, 3, 3, 8))
    mix = MixConv2d(8, [3, 5], dilated=False).eval()
    with torch.no_grad():
        expected = torch.cat([F.conv2d(x[:, :4], mix[0].weight, None, 1, 1, 1, 4),
                              F.conv2d(x[:, 4:], mix[1].weight, None, 1, 2, 1, 4)], 1)
        torch.testing.assert_close(mix(x), expected)
