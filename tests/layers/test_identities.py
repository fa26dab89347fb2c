"""Each operator against the same computation written with plain PyTorch ops (nn.Conv2d, F.conv2d,
F.pad, F.batch_norm), never against mobileconv's own code."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobileconv.layers import (IMPLS, ConvNormAct, DepthwiseSeparableConv2d, GroupedConv2d, MixConv2d,
                               SpatialSeparableConv2d, SqueezeExcite, XSepConv2d, create_conv2d, set_layer_impl)

from .oracles import DIRECTION_ORDER, conv_same, direction_pads, equal_split, randomize_bn

TOL = dict(rtol=1e-5, atol=1e-5)


def _x(c, h=9, w=10, n=2, seed=0):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def _bn(x, bn):
    """Eval-mode batch norm with plain ops."""
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


# --- MixConv ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("k, stride, size", [(3, 1, 9), (5, 2, 9), (5, 2, 10), (7, 1, 1), (1, 2, 4)])
def test_one_kernel_mixconv_is_depthwise_conv(impl, k, stride, size):
    c = 6
    mix = MixConv2d(c, [k], stride, impl=impl)
    dw = nn.Conv2d(c, c, k, stride, padding=k // 2, groups=c, bias=False)
    with torch.no_grad():
        dw.weight.copy_(mix[0].weight)
    x = _x(c, size, size + 1)
    torch.testing.assert_close(mix(x), dw(x), **TOL)


def _mixconv_by_slices(x, kernels, splits, stride, tf=False):
    """MDConv (MixConv paper, Eq. 2) with hand-written slicing: one F.conv2d per channel group."""
    outs, start = [], 0
    for w, c in zip(kernels, splits):
        outs.append(conv_same(x[:, start:start + c], w, stride, groups=c, tf=tf))
        start += c
    assert start == x.shape[1]
    return torch.cat(outs, 1)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("channels, ks, stride, split, tf, size", [
    (10, [3, 5, 7], 1, "equal", False, (9, 10)),        # 10 = 4 + 3 + 3: remainder to the first group
    (10, [3, 5, 7], 2, "equal", False, (9, 10)),
    (16, [3, 5, 7, 9], 2, "exponential", False, (8, 8)),  # 8 + 4 + 2 + 2
    (13, [3, 5, 7], 2, "exponential", True, (10, 7)),   # 6 + 3 + 4
    (12, [3, 5, 7, 9], 2, "equal", True, (8, 11)),
    (5, [1, 3], 2, "equal", True, (8, 8)),              # 1x1 kernel + TF SAME, stride 2, even input
    (7, [3, 5, 9, 11, 13], 1, "equal", True, (1, 1)),
])
def test_mixconv_equals_per_slice_convs(impl, channels, ks, stride, split, tf, size):
    m = MixConv2d(channels, ks, stride, split=split, padding="tf" if tf else "", impl=impl)
    if split == "equal":
        splits = equal_split(channels, len(ks))
    else:
        splits = [channels // 2 ** (i + 1) for i in range(len(ks) - 1)]
        splits.append(channels - sum(splits))
    x = _x(channels, *size)
    expected = _mixconv_by_slices(x, [conv.weight for conv in m], splits, stride, tf=tf)
    torch.testing.assert_close(m(x), expected, **TOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_dilated_mixconv_equals_dilated_per_slice_convs(impl):
    channels, ks = 12, [3, 5, 7, 9]
    m = MixConv2d(channels, ks, dilated=True, impl=impl)
    x = _x(channels, 11, 12)
    outs, start = [], 0
    for conv, c, k in zip(m, equal_split(channels, 4), ks):
        d = (k - 1) // 2 if k > 3 else 1  # SPEC: k x k becomes 3x3 with dilation (k - 1) // 2
        assert conv.weight.shape[-1] == 3
        outs.append(F.conv2d(x[:, start:start + c], conv.weight, None, 1, d, d, c))
        start += c
    torch.testing.assert_close(m(x), torch.cat(outs, 1), **TOL)


# --- grouped conv ----------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cin, cout, g, k, stride", [(8, 12, 2, 1, 1), (9, 6, 3, 1, 2), (8, 8, 4, 3, 2), (6, 4, 2, 5, 1)])
def test_even_grouped_conv_is_groups_g(impl, cin, cout, g, k, stride):
    m = GroupedConv2d(cin, cout, [k] * g, stride, impl=impl)
    ref = nn.Conv2d(cin, cout, k, stride, k // 2, groups=g, bias=False)
    with torch.no_grad():
        ref.weight.copy_(torch.cat([conv.weight for conv in m], 0))
    x = _x(cin)
    torch.testing.assert_close(m(x), ref(x), **TOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_uneven_grouped_conv_equals_per_slice_convs(impl):
    cin, cout, ks = 11, 7, [1, 3, 1]  # splits 5+3+3 -> 3+2+2: not expressible with groups=3
    m = GroupedConv2d(cin, cout, ks, 2, impl=impl)
    x = _x(cin)
    outs, start = [], 0
    for conv, ci in zip(m, equal_split(cin, 3)):
        outs.append(conv_same(x[:, start:start + ci], conv.weight, 2))
        start += ci
    out = m(x)
    torch.testing.assert_close(out, torch.cat(outs, 1), **TOL)
    assert [conv.weight.shape[0] for conv in m] == equal_split(cout, 3)


# --- XSepConv --------------------------------------------------------------------------------------

def _xsep_by_hand(x, m, padding, stride, act=F.relu):
    """2x2 dw (one-sided F.pad) -> BN -> act -> 1xK dw (stride (1, s)) -> BN -> act -> Kx1 dw (stride (s, 1)) -> BN."""
    c, k = x.shape[1], m.conv_1xk.weight.shape[-1]
    w2 = m.conv_2x2.weight
    if padding == "symmetric":  # four channel groups, one direction each
        parts, start = [], 0
        for direction, ci in zip(DIRECTION_ORDER, equal_split(c, 4)):
            xi = F.pad(x[:, start:start + ci], direction_pads(direction))
            parts.append(F.conv2d(xi, w2[start:start + ci], None, 1, 0, 1, ci))
            start += ci
        y = torch.cat(parts, 1)
    else:
        y = F.conv2d(F.pad(x, direction_pads(padding)), w2, None, 1, 0, 1, c)
    y = act(_bn(y, m.bn1))
    y = act(_bn(F.conv2d(y, m.conv_1xk.weight, None, (1, stride), (0, k // 2), 1, c), m.bn2))
    return _bn(F.conv2d(y, m.conv_kx1.weight, None, (stride, 1), (k // 2, 0), 1, c), m.bn3)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", [*DIRECTION_ORDER, "symmetric"])
def test_xsepconv_equals_composition(impl, stride, padding):
    c = 10  # symmetric: 4 + 2 + 2 + 2 channels
    m = XSepConv2d(c, 5, stride, padding=padding, impl=impl)
    randomize_bn(m)
    m.eval()
    x = _x(c, 9, 12)
    torch.testing.assert_close(m(x), _xsep_by_hand(x, m, padding, stride), **TOL)


def test_xsepconv_act_layer_and_train_mode():
    c = 8
    m = XSepConv2d(c, 3, 2, padding="left_bottom", act_layer="hswish").train()
    x = _x(c, 7, 8)
    expected = _xsep_by_hand(x, m.eval(), "left_bottom", 2, act=lambda t: t * torch.clamp(t + 3, 0, 6) / 6)
    torch.testing.assert_close(m.eval()(x), expected, **TOL)
    # train mode normalises with the batch statistics
    m.train()
    y = m(x)
    assert torch.allclose(y.mean((0, 2, 3)), m.bn3.bias.detach(), atol=1e-5)


# --- separable convs, SE, ConvNormAct --------------------------------------------------------------

@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_separable_equals_composition(stride):
    cin, cout, k = 6, 10, 5
    m = DepthwiseSeparableConv2d(cin, cout, k, stride)
    randomize_bn(m)
    m.eval()
    x = _x(cin)
    y = F.relu(_bn(F.conv2d(x, m.conv_dw.weight, None, stride, k // 2, 1, cin), m.bn1))
    y = F.relu(_bn(F.conv2d(y, m.conv_pw.weight), m.bn2))
    assert m.conv_dw.weight.shape == (cin, 1, k, k) and m.conv_pw.weight.shape == (cout, cin, 1, 1)
    torch.testing.assert_close(m(x), y, **TOL)


@pytest.mark.parametrize("stride", [1, 2])
def test_spatial_separable_is_rank_one_kxk_conv(stride):
    """k x 1 then 1 x k with one channel = one k x k conv whose kernel is the outer product."""
    k = 5
    m = SpatialSeparableConv2d(1, 1, k, stride)
    x = _x(1, 11, 8)
    kernel = m.conv_kx1.weight.reshape(k, 1) @ m.conv_1xk.weight.reshape(1, k)
    expected = F.conv2d(x, kernel.view(1, 1, k, k), None, stride, k // 2)
    torch.testing.assert_close(m(x), expected, **TOL)


def test_spatial_separable_equals_composition():
    cin, cout, k = 3, 4, 3
    m = SpatialSeparableConv2d(cin, cout, k, 2)
    x = _x(cin)
    y = F.conv2d(F.conv2d(x, m.conv_kx1.weight, None, (2, 1), (1, 0)), m.conv_1xk.weight, None, (1, 2), (0, 1))
    torch.testing.assert_close(m(x), y, **TOL)


@pytest.mark.parametrize("act, gate, act_fn, gate_fn", [
    ("swish", "sigmoid", lambda t: t * torch.sigmoid(t), torch.sigmoid),                      # MixNet
    ("relu", "hsigmoid", F.relu, lambda t: torch.clamp(t + 3, 0, 6) / 6),                     # MobileNetV3
])
def test_squeeze_excite_equals_composition(act, gate, act_fn, gate_fn):
    c, r = 12, 3
    m = SqueezeExcite(c, r, act, gate)
    x = _x(c)
    s = x.mean((2, 3), keepdim=True)
    s = F.conv2d(act_fn(F.conv2d(s, m.conv_reduce.weight, m.conv_reduce.bias)), m.conv_expand.weight, m.conv_expand.bias)
    torch.testing.assert_close(m(x), x * gate_fn(s), **TOL)


@pytest.mark.parametrize("norm, act", [(True, True), (True, False), (False, True), (False, False)])
def test_conv_norm_act_equals_composition(norm, act):
    cin, cout, k, g = 4, 8, 3, 2
    m = ConvNormAct(cin, cout, k, 2, groups=g, norm_layer=nn.BatchNorm2d if norm else None,
                    act_layer="relu6" if act else None)
    randomize_bn(m)
    m.eval()
    x = _x(cin)
    y = F.conv2d(x, m.conv.weight, m.conv.bias, 2, 1, 1, g)
    if norm:
        y = _bn(y, m.bn)
    if act:
        y = torch.clamp(y, 0, 6)
    torch.testing.assert_close(m(x), y, **TOL)
    assert [name for name, _ in m.named_children()] == ["conv"] + ["bn"] * norm + ["act"] * act


def test_conv_norm_act_tf_padding_stride2():
    m = ConvNormAct(3, 5, 3, 2, norm_layer=None, act_layer=None, padding="tf")
    x = _x(3, 8, 9)
    torch.testing.assert_close(m(x), conv_same(x, m.conv.weight, 2, tf=True) + m.conv.bias.view(1, -1, 1, 1), **TOL)


# --- factory and impl switch -----------------------------------------------------------------------

def test_create_conv2d_dispatch():
    assert isinstance(create_conv2d(8, 8, [3, 5], depthwise=True), MixConv2d)
    assert isinstance(create_conv2d(8, 16, [1, 1]), GroupedConv2d)
    dw = create_conv2d(8, 8, 3, depthwise=True)
    assert isinstance(dw, nn.Conv2d) and dw.groups == 8
    dense = create_conv2d(8, 16, [3])
    assert isinstance(dense, nn.Conv2d) and dense.groups == 1


def test_set_layer_impl_switches_every_operator():
    model = nn.Sequential(MixConv2d(8, [3, 5]), XSepConv2d(8, 5), GroupedConv2d(8, 8, [1, 1]), nn.ReLU())
    assert set_layer_impl(model, "reference") is model
    assert [m.impl for m in model[:3]] == ["reference"] * 3
    set_layer_impl(model, "fast")
    assert [m.impl for m in model[:3]] == ["fast"] * 3
