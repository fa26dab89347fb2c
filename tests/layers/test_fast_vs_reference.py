"""impl="fast" against impl="reference" (split / conv per group / concat, F.pad): forward and gradients
(input and every parameter) to 1e-5 in float32, and the fast path really launches fewer convs."""
import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mobileconv.layers import GroupedConv2d, MixConv2d, XSepConv2d

from .oracles import count_conv2d_calls, randomize_bn

TOL = dict(rtol=1e-5, atol=1e-5)


def _fast_and_reference(module):
    fast = module
    fast.impl = "fast"
    ref = copy.deepcopy(module)
    ref.impl = "reference"
    return fast, ref


def _forward_backward(module, x, seed=1):
    x = x.clone().requires_grad_(True)
    y = module(x)
    # a random cotangent, so that every output element contributes to the gradients
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
    (y * g).sum().backward()
    return y.detach(), x.grad, {n: p.grad for n, p in module.named_parameters()}


def assert_fast_equals_reference(module, x):
    fast, ref = _fast_and_reference(module)
    y_fast, gx_fast, gp_fast = _forward_backward(fast, x)
    y_ref, gx_ref, gp_ref = _forward_backward(ref, x)
    torch.testing.assert_close(y_fast, y_ref, **TOL)
    torch.testing.assert_close(gx_fast, gx_ref, **TOL)
    assert gp_fast.keys() == gp_ref.keys()
    for name in gp_ref:
        assert gp_fast[name] is not None, name
        torch.testing.assert_close(gp_fast[name], gp_ref[name], **TOL, msg=name)


def _x(c, h, w, seed=0):
    return torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(seed))


MIXCONV_CASES = {
    "equal_s1": dict(channels=12, ks=[3, 5, 7], stride=1),
    "equal_s2_odd": dict(channels=13, ks=[3, 5, 7, 9], stride=2, size=(11, 9)),
    "exponential_s2": dict(channels=16, ks=[3, 5, 7, 9], stride=2, split="exponential"),
    "exponential_s1": dict(channels=10, ks=[3, 5, 7], stride=1, split="exponential"),
    "dilated": dict(channels=12, ks=[3, 5, 7, 9], stride=1, dilated=True),
    "dilated_exponential": dict(channels=8, ks=[3, 5, 7], stride=1, dilated=True, split="exponential"),
    "tf_s1": dict(channels=9, ks=[3, 5, 7], stride=1, padding="tf"),
    "tf_s2_even": dict(channels=9, ks=[3, 5, 7], stride=2, padding="tf", size=(10, 12)),
    "tf_s2_odd": dict(channels=9, ks=[3, 5, 7], stride=2, padding="tf", size=(9, 11)),
    "tf_s2_with_1x1": dict(channels=6, ks=[1, 3, 5], stride=2, padding="tf", size=(8, 10)),
    "one_pixel": dict(channels=6, ks=[3, 5], stride=2, size=(1, 1)),
}


@pytest.mark.parametrize("case", sorted(MIXCONV_CASES))
def test_mixconv_fast_equals_reference(case):
    kw = dict(MIXCONV_CASES[case])
    channels, ks, size = kw.pop("channels"), kw.pop("ks"), kw.pop("size", (10, 11))
    m = MixConv2d(channels, ks, **kw)
    assert_fast_equals_reference(m, _x(channels, *size))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", ["symmetric", "right_top", "right_bottom", "left_top", "left_bottom"])
def test_xsepconv_fast_equals_reference(padding, stride):
    c = 9
    m = XSepConv2d(c, 5, stride, padding=padding, act_layer="hswish").train()  # BN on batch statistics
    randomize_bn(m)
    assert_fast_equals_reference(m, _x(c, 9, 10))


@pytest.mark.parametrize("cin, cout, ks, stride, padding", [
    (8, 12, [1, 1], 1, ""),      # even split, equal kernels: one groups=2 conv on the fast path
    (9, 6, [3, 3, 3], 2, ""),
    (8, 8, [1, 1, 1, 1], 2, "tf"),
    (7, 5, [1, 1], 1, ""),       # uneven split
    (8, 8, [3, 5], 2, ""),       # different kernels
])
def test_grouped_fast_equals_reference(cin, cout, ks, stride, padding):
    m = GroupedConv2d(cin, cout, ks, stride, padding=padding)
    assert_fast_equals_reference(m, _x(cin, 8, 9))


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), stride=st.sampled_from([1, 2]),
       ks=st.lists(st.sampled_from([1, 3, 5, 7]), min_size=1, max_size=4), extra=st.integers(0, 5),
       split=st.sampled_from(["equal", "exponential"]), dilated=st.booleans(), tf=st.booleans())
def test_mixconv_fast_equals_reference_property(h, w, stride, ks, extra, split, dilated, tf):
    channels = (len(ks) if split == "equal" else 2 ** (len(ks) - 1)) + extra
    m = MixConv2d(channels, ks, stride, split=split, dilated=dilated and stride == 1, padding="tf" if tf else "")
    assert_fast_equals_reference(m, _x(channels, h, w))


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), stride=st.sampled_from([1, 2]), k=st.sampled_from([1, 3, 5, 7]),
       extra=st.integers(0, 5),
       padding=st.sampled_from(["symmetric", "right_top", "right_bottom", "left_top", "left_bottom"]))
def test_xsepconv_fast_equals_reference_property(h, w, stride, k, extra, padding):
    c = 4 + extra
    m = XSepConv2d(c, k, stride, padding=padding).eval()
    randomize_bn(m)
    assert_fast_equals_reference(m, _x(c, h, w))


@pytest.mark.parametrize("make, channels, fast_convs, reference_convs", [
    (lambda: MixConv2d(12, [3, 5, 7]), 12, 1, 3),
    (lambda: MixConv2d(12, [3, 5, 7], 2, padding="tf"), 12, 1, 3),
    (lambda: MixConv2d(12, [3, 5, 7, 9], dilated=True), 12, 1, 4),
    (lambda: XSepConv2d(8, 5, padding="symmetric"), 8, 3, 6),   # 2x2 (x4 groups), 1xK, Kx1
    (lambda: XSepConv2d(8, 5, padding="left_top"), 8, 3, 3),
    (lambda: GroupedConv2d(8, 8, [1, 1]).train(), 8, 1, 2),  # fused while training only
], ids=["mixconv", "mixconv_tf_s2", "mixconv_dilated", "xsep_symmetric", "xsep_left_top", "grouped_even"])
def test_fast_path_launches_fewer_convs(make, channels, fast_convs, reference_convs):
    m = make()
    if not isinstance(m, GroupedConv2d):
        m.eval()
    x = _x(channels, 8, 8)
    m.impl = "fast"
    assert count_conv2d_calls(m, x) == fast_convs
    m.impl = "reference"
    assert count_conv2d_calls(m, x) == reference_convs


def test_grouped_conv_in_eval_mode_runs_per_group_and_matches_the_split_form_bitwise():
    """Eval mode keeps the per-group convs, so outputs equal the split form exactly (timm parity)."""
    m = GroupedConv2d(40, 240, [1, 1]).eval()
    x = _x(40, 9, 9)
    assert count_conv2d_calls(m, x) == 2
    expected = torch.cat([F.conv2d(xi, conv.weight) for xi, conv in zip(torch.split(x, 20, 1), m)], 1)
    assert torch.equal(m(x), expected)
