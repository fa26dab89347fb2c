"""fold_batchnorms then fuse_operators (the public steps, in the other order than optimize_for_inference
takes them): the folded BN's bias must survive the MixConv / grouped conv becoming one conv."""
import copy

import pytest
import torch
from torch import nn

from mobileconv.deploy.optimize import fold_batchnorms, fuse_operators
from mobileconv.layers import GroupedConv2d, MixConv2d, set_layer_impl

from ..layers.oracles import randomize_bn


@pytest.mark.parametrize("make, channels", [
    (lambda: MixConv2d(24, [3, 5, 7]), 24),
    (lambda: MixConv2d(24, [3, 5], stride=2, padding="tf"), 24),
    (lambda: GroupedConv2d(24, 32, [1, 1]), 32),
    (lambda: GroupedConv2d(48, 64, [3, 3]), 64),
], ids=["mix357", "mix35_tf_s2", "grouped1x1", "grouped3x3"])
def test_folded_bias_survives_fusing(make, channels):
    torch.manual_seed(0)
    conv = make()
    model = nn.Sequential(conv, nn.BatchNorm2d(channels)).eval()
    randomize_bn(model)
    x = torch.randn(2, conv[0].in_channels * len(conv) if isinstance(conv, GroupedConv2d) else 24, 15, 15)
    with torch.no_grad():
        want = set_layer_impl(copy.deepcopy(model), "reference")(x)  # split / conv per group / concat, then BN
    fold_batchnorms(model, x)
    fuse_operators(model, x)
    assert isinstance(model[0], nn.Conv2d) and model[0].bias is not None
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)
