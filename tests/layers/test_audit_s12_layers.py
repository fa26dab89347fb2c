"""Audit s12: the fused paths must honour what the child convs do when called, a stale-cache corner, repr, Conv2dSame.

Oracles are plain PyTorch (``F.conv2d`` per channel group, ``F.pad``, ``torch.cat``), never the library's
own ``impl="reference"`` path.

* ``impl="fast"`` MixConv2d / GroupedConv2d (training) and both impls of XSepConv2d's 2x2 conv read the
  child convs' ``weight`` and run one ``F.conv2d`` themselves, so a child conv's hooks and own forward
  never ran: ``torch.nn.utils.prune`` (and the hook-based ``weight_norm`` / ``spectral_norm``), which
  computes ``weight`` in a forward pre-hook, crashed the second training step ("Trying to backward
  through the graph a second time") or used a stale weight; eager QAT (``prepare_qat``) skipped the
  weight fake-quantization and the output observers; forward hooks on a child never fired.
* ``DerivedTensorCache`` (MixConv2d's cached fused kernel in eager inference) missed a ``.data``
  assignment of another view of the same memory (same address, other strides).
* ``MixConv2d`` / ``GroupedConv2d`` defined ``extra_repr`` but ``nn.ModuleList.__repr__`` never shows it.
* ``Conv2dSame`` refused ``nn.Conv2d``'s positional signature (``padding`` given twice) and silently
  ignored ``padding_mode`` (always zero padding).
"""
from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as prune
from torch import nn

from mobileconv.layers import Conv2dSame, GroupedConv2d, MixConv2d, XSepConv2d

from .oracles import DIRECTION_PADS
from .oracles import equal_split as _equal_split
from .oracles import grouped as _oracle_grouped
from .oracles import mixconv as _oracle_mixconv
from .oracles import seeded_randn as _x


def _oracle_xsep_2x2(x, weight, directions):
    """The 2x2 depthwise conv of XSepConv: each channel group padded one-sidedly towards its direction."""
    splits = _equal_split(x.shape[1], len(directions))
    xs, ws = torch.split(x, splits, 1), torch.split(weight, splits, 0)
    return torch.cat([F.conv2d(F.pad(xi, DIRECTION_PADS[d]), wi, None, 1, 0, 1, wi.shape[0])
                      for xi, wi, d in zip(xs, ws, directions)], 1)


def _pruned(m):
    for c in m.modules():
        if isinstance(c, nn.Conv2d):
            prune.l1_unstructured(c, "weight", amount=0.5)
    return m


def _train(m, x, steps=2):
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        m(x).square().mean().backward()
        opt.step()


# -- pruned / hooked / QAT child convs ------------------------------------------------------------------------


@pytest.mark.parametrize("stride", [1, 2])
def test_pruned_mixconv_trains_and_infers_with_the_masked_weights(stride):
    torch.manual_seed(0)
    m = _pruned(MixConv2d(12, [3, 5, 7], stride))
    x = _x(2, 12, 9, 8)
    _train(m, x)  # the second step crashed: the fused path reused weight_orig * mask from pruning time
    masked = [c.weight_orig * c.weight_mask for c in m]
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(x), _oracle_mixconv(x, masked, stride=stride))
    # gradients reach weight_orig through the mask, as with a plain conv
    m.train()
    origs = [c.weight_orig for c in m]
    got = torch.autograd.grad(m(x).square().sum(), origs)
    leaves = [o.detach().clone().requires_grad_(True) for o in origs]
    want = torch.autograd.grad(_oracle_mixconv(x, [o * c.weight_mask for o, c in zip(leaves, m)], stride=stride)
                               .square().sum(), leaves)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_pruned_grouped_conv_trains_with_the_masked_weights():
    torch.manual_seed(0)
    m = _pruned(GroupedConv2d(8, 12, [3, 3]))  # even split, equal kernels: fused while training
    x = _x(2, 8, 7, 6)
    _train(m, x)
    masked = [c.weight_orig * c.weight_mask for c in m]
    torch.testing.assert_close(m.train()(x), _oracle_grouped(x, masked))


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("padding", ["symmetric", "left_top", "right_bottom"])
def test_pruned_xsepconv_2x2_trains_with_the_masked_weights(impl, padding):
    torch.manual_seed(0)
    m = _pruned(XSepConv2d(8, 5, padding=padding, norm_layer=None, act_layer=None, impl=impl))
    x = _x(2, 8, 7, 6)
    _train(m, x)  # both impls read conv_2x2.weight directly: the second step crashed
    directions = list(DIRECTION_PADS) if padding == "symmetric" else [padding]
    w2 = m.conv_2x2.weight_orig * m.conv_2x2.weight_mask
    y = _oracle_xsep_2x2(x, w2, directions)
    c1, c2 = m.conv_1xk, m.conv_kx1
    y = F.conv2d(y, c1.weight_orig * c1.weight_mask, None, 1, (0, 2), 1, 8)
    y = F.conv2d(y, c2.weight_orig * c2.weight_mask, None, 1, (2, 0), 1, 8)
    with torch.no_grad():
        torch.testing.assert_close(m(x), y)


def _double_group_1(module, args, output):
    return output * 2


@pytest.mark.parametrize("grad", [True, False])
def test_forward_hook_on_a_mixconv_child_is_run(grad):
    m = MixConv2d(12, [3, 5, 7])
    m[1].register_forward_hook(_double_group_1)
    x = _x(2, 12, 8, 9)
    ws = [c.weight.detach() * (2.0 if i == 1 else 1.0) for i, c in enumerate(m)]
    with torch.set_grad_enabled(grad):
        torch.testing.assert_close(m(x), _oracle_mixconv(x, ws))


def test_forward_hook_on_a_grouped_conv_child_is_run_in_training():
    m = GroupedConv2d(8, 8, [1, 1]).train()
    m[1].register_forward_hook(_double_group_1)
    x = _x(2, 8, 5, 5)
    ws = [c.weight.detach() * (2.0 if i == 1 else 1.0) for i, c in enumerate(m)]
    torch.testing.assert_close(m(x), _oracle_grouped(x, ws))


@pytest.mark.parametrize("padding", ["symmetric", "right_top"])
def test_forward_pre_hook_on_xsepconv_2x2_conv_is_run(padding):
    m = XSepConv2d(8, 3, padding=padding, norm_layer=None, act_layer=None)
    seen = []
    m.conv_2x2.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    with torch.no_grad():
        m.conv_1xk.weight.zero_()[:, :, :, 1] = 1.0
        m.conv_kx1.weight.zero_()[:, :, 1, :] = 1.0  # both identity: the output is the 2x2 conv's
    x = _x(2, 8, 6, 7)
    directions = list(DIRECTION_PADS) if padding == "symmetric" else [padding]
    with torch.no_grad():
        torch.testing.assert_close(m(x), _oracle_xsep_2x2(x, m.conv_2x2.weight, directions))
    # one direction: the conv sees its one-sided padding; symmetric: padded by one all round (documented)
    assert seen == [torch.Size([2, 8, 8, 9]) if padding == "symmetric" else torch.Size([2, 8, 7, 8])]


def test_backward_hook_on_a_mixconv_child_is_run():
    m = MixConv2d(12, [3, 5])
    seen = []
    m[0].register_full_backward_hook(lambda module, gin, gout: seen.append(gout[0].shape))
    m(_x(2, 12, 6, 6).requires_grad_(True)).sum().backward()
    assert seen == [torch.Size([2, 6, 6, 6])]


def test_eager_qat_mixconv_fake_quantizes_like_its_convs():
    import torch.ao.quantization as tq

    class Host(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = MixConv2d(12, [3, 5, 7])

        def forward(self, x):
            return self.mix(x)

    torch.manual_seed(0)
    host = Host().train()
    host.qconfig = tq.get_default_qat_qconfig("fbgemm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        host = tq.prepare_qat(host)
    x = _x(2, 12, 8, 8)
    host(x)  # calibrate the observers, then freeze them
    host.apply(tq.disable_observer)
    mix = host.mix
    xs = torch.split(x, mix.splits, 1)
    expected = torch.cat([c.activation_post_process(
        F.conv2d(xi, c.weight_fake_quant(c.weight), None, c.stride, c.padding, c.dilation, c.groups))
        for c, xi in zip(mix, xs)], 1)
    torch.testing.assert_close(host(x), expected)


def test_plain_children_still_take_the_fused_path(monkeypatch):
    """The fallback is only for hooked / subclassed convs: plain (and parametrized) ones stay fused."""
    from torch.nn.utils import parametrizations

    m = MixConv2d(12, [3, 5, 7]).eval()
    parametrizations.weight_norm(m[2])  # a property, read like any weight
    calls = []
    real = F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = _x(1, 12, 6, 6)
    with torch.no_grad():
        y = m(x)
    assert len(calls) == 1
    torch.testing.assert_close(y, _oracle_mixconv(x, [c.weight.detach() for c in m]))


# -- the cached fused kernel and a .data view at the same address ----------------------------------------------


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_cached_kernel_follows_a_transposed_data_view(mode):
    m = MixConv2d(12, [3, 5, 7]).eval()
    x = _x(2, 12, 9, 8)
    with mode():
        m(x)  # fills the cache
        w = m[2].weight
        w.data = w.data.transpose(2, 3)  # same memory, same address, same version: only the strides differ
        torch.testing.assert_close(m(x), _oracle_mixconv(x, [c.weight.detach() for c in m]))


# -- repr ------------------------------------------------------------------------------------------------------


def test_repr_shows_kernels_and_splits():
    assert "k=3,5,7 splits=4,4,4 dilated stride=1" in repr(MixConv2d(12, [3, 5, 7], dilated=True))
    assert "k=1,3 splits=4,4" in repr(GroupedConv2d(8, 8, [1, 3]))
    assert "(1): Conv2d(4, 4, kernel_size=(3, 3)" in repr(GroupedConv2d(8, 8, [1, 3]))


# -- Conv2dSame ------------------------------------------------------------------------------------------------


def _tf_same(x, weight, stride, dilation, groups=1, bias=None):
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        k = weight.shape[-1]
        total = max((math.ceil(size / stride) - 1) * stride + (k - 1) * dilation + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    return F.conv2d(F.pad(x, pads), weight, bias, stride, 0, dilation, groups)


def test_conv2d_same_takes_nn_conv2d_positional_arguments():
    conv = Conv2dSame(4, 8, 3, 2, 0, 2, 2, False)  # in, out, k, stride, padding, dilation, groups, bias
    assert conv.dilation == (2, 2) and conv.groups == 2 and conv.bias is None and conv.padding == (0, 0)
    x = _x(1, 4, 10, 9)
    torch.testing.assert_close(conv(x), _tf_same(x, conv.weight, 2, 2, 2))
    assert copy.deepcopy(conv).dilation == (2, 2)


@pytest.mark.parametrize("kwargs, message", [
    ({"padding_mode": "reflect"}, r"padding_mode must be 'zeros', got 'reflect'"),
    ({"padding": 1}, r"padding must be 0 or 'same', got 1"),
])
def test_conv2d_same_refuses_what_it_would_ignore(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Conv2dSame(4, 8, 3, 2, **kwargs)
