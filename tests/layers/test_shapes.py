"""Property tests: every operator gives "same" conv output sizes, ceil(H / stride) x ceil(W / stride),
for odd, even and 1-pixel inputs, stride 1 and 2, and any channel count >= the number of groups,
with both implementations. Parameter counts are checked against the papers' formulas."""
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mobileconv.layers import (IMPLS, ConvNormAct, DepthwiseSeparableConv2d, GroupedConv2d, MixConv2d,
                               SpatialSeparableConv2d, SqueezeExcite, XSepConv2d, set_layer_impl)

from .oracles import equal_split, same_size

PROPERTY = settings(max_examples=25, deadline=None)
sizes = st.integers(1, 13)
strides = st.sampled_from([1, 2])
odd_kernels = st.sampled_from([1, 3, 5, 7])
kernel_lists = st.lists(st.sampled_from([1, 3, 5, 7, 9]), min_size=1, max_size=4)


def _run(module, channels, h, w, impl="fast"):
    set_layer_impl(module, impl)
    x = torch.randn(2, channels, h, w)
    with torch.no_grad():
        return module.eval()(x)


def _n_params(module, kind=torch.nn.Conv2d):
    return sum(p.numel() for m in module.modules() if isinstance(m, kind) for p in m.parameters(recurse=False))


@PROPERTY
@given(h=sizes, w=sizes, stride=strides, g=st.integers(1, 4), cin_mult=st.integers(1, 3),
       cout_mult=st.integers(1, 3), k=odd_kernels, norm=st.booleans(), act=st.sampled_from(["relu", "hswish", None]))
@example(h=1, w=1, stride=2, g=1, cin_mult=1, cout_mult=1, k=3, norm=True, act="relu")
def test_conv_norm_act(h, w, stride, g, cin_mult, cout_mult, k, norm, act):
    cin, cout = g * cin_mult, g * cout_mult
    m = ConvNormAct(cin, cout, k, stride, groups=g, norm_layer=torch.nn.BatchNorm2d if norm else None, act_layer=act)
    assert _run(m, cin, h, w).shape == (2, cout, same_size(h, stride), same_size(w, stride))
    assert ("bn" in m._modules) == norm and ("act" in m._modules) == (act is not None)
    assert (m.conv.bias is not None) == (not norm)  # bias defaults to "no norm"
    assert m.conv.weight.numel() == cout * (cin // g) * k * k


@pytest.mark.parametrize("impl", IMPLS)
@PROPERTY
@given(h=sizes, w=sizes, stride=strides, ks=kernel_lists, extra_in=st.integers(0, 7),
       extra_out=st.integers(0, 7), tf=st.booleans())
@example(h=1, w=1, stride=2, ks=[1, 1], extra_in=0, extra_out=0, tf=False)
@example(h=4, w=6, stride=2, ks=[3, 3], extra_in=1, extra_out=3, tf=True)
def test_grouped_conv(h, w, stride, impl, ks, extra_in, extra_out, tf):
    g = len(ks)
    cin, cout = g + extra_in, g + extra_out
    m = GroupedConv2d(cin, cout, ks, stride, padding="tf" if tf else "")
    assert _run(m, cin, h, w, impl).shape == (2, cout, same_size(h, stride), same_size(w, stride))
    ins, outs = equal_split(cin, g), equal_split(cout, g)
    assert (m.in_splits, m.out_splits) == (ins, outs)
    assert _n_params(m) == sum(k * k * ci * co for k, ci, co in zip(ks, ins, outs))


@PROPERTY
@given(h=sizes, w=sizes, stride=strides, k=odd_kernels, cin=st.integers(1, 9), cout=st.integers(1, 9))
@example(h=1, w=1, stride=2, k=3, cin=1, cout=1)
def test_depthwise_separable(h, w, stride, k, cin, cout):
    m = DepthwiseSeparableConv2d(cin, cout, k, stride)
    assert _run(m, cin, h, w).shape == (2, cout, same_size(h, stride), same_size(w, stride))
    # MobileNetV1, Eq. 5: cost of the dw + pw pair vs a dense k x k conv is 1 / cout + 1 / k^2
    dense = k * k * cin * cout
    assert _n_params(m) / dense == pytest.approx(1 / cout + 1 / (k * k))


@PROPERTY
@given(h=sizes, w=sizes, stride=strides, k=odd_kernels, cin=st.integers(1, 9), cout=st.integers(1, 9))
@example(h=1, w=1, stride=2, k=5, cin=2, cout=3)
def test_spatial_separable(h, w, stride, k, cin, cout):
    m = SpatialSeparableConv2d(cin, cout, k, stride)
    assert _run(m, cin, h, w).shape == (2, cout, same_size(h, stride), same_size(w, stride))
    assert m.conv_kx1.weight.shape[-2:] == (k, 1) and m.conv_1xk.weight.shape[-2:] == (1, k)
    assert _n_params(m) == k * cin * cout + k * cout * cout  # 2k per filter (when cin == cout) instead of k^2


@pytest.mark.parametrize("impl", IMPLS)
@PROPERTY
@given(h=sizes, w=sizes, stride=strides, ks=kernel_lists, extra=st.integers(0, 9),
       split=st.sampled_from(["equal", "exponential"]), dilated=st.booleans(), tf=st.booleans())
@example(h=1, w=1, stride=2, ks=[3, 5, 7], extra=0, split="equal", dilated=False, tf=True)
@example(h=8, w=7, stride=2, ks=[1, 3], extra=0, split="equal", dilated=False, tf=True)
@example(h=5, w=6, stride=1, ks=[3, 5, 7, 9], extra=1, split="exponential", dilated=True, tf=False)
def test_mixconv(h, w, stride, impl, ks, extra, split, dilated, tf):
    g = len(ks)
    dilated = dilated and stride == 1  # dilation is defined for stride 1 only (tested in test_errors)
    channels = (g if split == "equal" else 2 ** (g - 1)) + extra
    m = MixConv2d(channels, ks, stride, split=split, dilated=dilated, padding="tf" if tf else "")
    assert _run(m, channels, h, w, impl).shape == (2, channels, same_size(h, stride), same_size(w, stride))
    if split == "equal":
        assert m.splits == equal_split(channels, g)
    else:  # group i gets floor(C / 2^(i+1)), the last group the rest
        assert m.splits[:-1] == [channels // 2 ** (i + 1) for i in range(g - 1)]
    assert sum(m.splits) == channels and min(m.splits) >= 1
    # weights stored per group, c_t x 1 x k_t x k_t (a dilated k > 3 kernel is a 3x3 one)
    convs = list(m.children())
    assert len(convs) == g
    stored = [3 if dilated and k > 3 else k for k in ks]
    assert [tuple(c.weight.shape) for c in convs] == [(c, 1, k, k) for c, k in zip(m.splits, stored)]
    assert sum(p.numel() for p in m.parameters()) == sum(c * k * k for c, k in zip(m.splits, stored))


@pytest.mark.parametrize("impl", IMPLS)
@PROPERTY
@given(h=sizes, w=sizes, stride=strides, k=odd_kernels, extra=st.integers(0, 6),
       padding=st.sampled_from(["symmetric", "right_top", "right_bottom", "left_top", "left_bottom"]))
@example(h=1, w=1, stride=2, k=5, extra=0, padding="symmetric")
@example(h=1, w=1, stride=1, k=3, extra=0, padding="left_top")
def test_xsepconv(h, w, stride, impl, k, extra, padding):
    channels = (4 if padding == "symmetric" else 1) + extra
    m = XSepConv2d(channels, k, stride, padding=padding)
    assert _run(m, channels, h, w, impl).shape == (2, channels, same_size(h, stride), same_size(w, stride))
    assert _n_params(m) == channels * (4 + 2 * k)  # XSepConv paper: 4 + 2K weights per channel instead of K^2


@PROPERTY
@given(h=sizes, w=sizes, channels=st.integers(1, 16), reduced=st.integers(1, 8))
@example(h=1, w=1, channels=1, reduced=1)
def test_squeeze_excite(h, w, channels, reduced):
    m = SqueezeExcite(channels, reduced)
    assert _run(m, channels, h, w).shape == (2, channels, h, w)
    assert _n_params(m) == 2 * channels * reduced + channels + reduced
