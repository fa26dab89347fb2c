"""mixify(split="exponential") leaves alone a depthwise conv too narrow for the split, as README promises.

Before, a conv with at least ``len(kernel_sizes)`` channels but fewer than ``2^(g-1)`` raised from
inside MixConv2d halfway through the walk, leaving the model partly converted. Oracle: the
exponential split formula (group i gets ``C / 2^(i+1)``, the last the rest) and plain ``F.conv2d``
with the original kernels (every new kernel >= 3, so the function is unchanged).
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mobileconv
from mobileconv.layers import MixConv2d


def test_mixify_exponential_skips_convs_too_narrow_for_the_split():
    torch.manual_seed(0)
    wide, narrow = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.Conv2d(4, 4, 3, padding=1, groups=4)
    model = nn.Sequential(wide, nn.Conv2d(16, 4, 1), narrow).eval()
    w_wide, w_narrow, b_narrow = wide.weight.clone(), narrow.weight.clone(), narrow.bias.clone()
    x = torch.randn(2, 16, 9, 9)
    with torch.no_grad():
        expected = F.conv2d(model[1](F.conv2d(x, w_wide, None, 1, 1, 1, 16)), w_narrow, b_narrow, 1, 1, 1, 4)

    assert mobileconv.mixify(model, (3, 5, 7, 9), split="exponential") is model
    assert isinstance(model[0], MixConv2d) and model[0].splits == [16 // 2, 16 // 4, 16 // 8, 2]
    assert model[2] is narrow  # 4 channels < 2^3: left alone
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
    # a bare conv that is too narrow comes back unchanged
    assert mobileconv.mixify(narrow, (3, 5, 7, 9), split="exponential") is narrow


def test_mixify_bad_split_is_an_error_even_where_no_conv_qualifies():
    with pytest.raises(ValueError, match=r"split must be one of \('equal', 'exponential'\), got 'uneven'"):
        mobileconv.mixify(nn.Sequential(nn.Conv2d(3, 8, 1)), split="uneven")
