"""Audit s13: scripted operators and hooks, conv biases in the fused paths, flag checks, slicing, global hooks.

Oracles are plain PyTorch (``F.conv2d`` per channel group, ``F.pad``, ``torch.cat``), never the library's own
``impl="reference"`` path.

* A ``torch.jit.script``-ed MixConv2d / GroupedConv2d / XSepConv2d ran its fused path whatever hooks its convs
  had, although TorchScript compiles those hooks and runs them wherever a module is called (a scripted
  ``nn.Sequential`` of convs honours them): a child's forward hook was silently dropped once scripted.
* The fused paths passed no bias: once a conv had one (``fold_batchnorms`` gives MixConv / GroupedConv convs
  a bias when it folds the following BN into them), the fast MixConv2d and the training-mode fast
  GroupedConv2d dropped it, and so did XSepConv2d's reference 2x2 conv.
* ``inplace`` of ``ConvNormAct`` / ``create_act`` took any truthy value (``inplace="no"`` ran in place).
* Slicing a ConvNormAct / MixConv2d / GroupedConv2d raised a TypeError from ``__init__`` (the containers
  rebuild ``self.__class__`` from the selected modules).
* ``mixify`` / ``xsepify`` replaced a depthwise conv with a backward hook (or backward pre-hook), dropping it.
* Global module hooks are deliberately not looked at (see :func:`mobileconv.layers.conv.runs_as_plain_conv`);
  ``test_global_hooks_see_the_operator_not_its_fused_convs`` pins that decision.
"""
from __future__ import annotations

from typing import Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.module import register_module_forward_hook

from mobileconv.layers import ConvNormAct, GroupedConv2d, MixConv2d, XSepConv2d, create_act

from .oracles import DIRECTION_PADS
from .oracles import equal_split as _equal_split
from .oracles import grouped as _oracle_grouped
from .oracles import mixconv as _oracle_mixconv
from .oracles import seeded_randn as _x

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script, torch >= 2.9


def _oracle_xsep(x, m, directions, bias=None, scale=1.0):
    """XSepConv without norm and activation: one-sided-padded 2x2 per channel group -> 1xK -> Kx1."""
    splits = _equal_split(x.shape[1], len(directions))
    xs, ws = torch.split(x, splits, 1), torch.split(m.conv_2x2.weight, splits, 0)
    y = torch.cat([F.conv2d(F.pad(xi, DIRECTION_PADS[d]), wi, None, 1, 0, 1, wi.shape[0])
                   for xi, wi, d in zip(xs, ws, directions)], 1)
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    y = y * scale
    k, s, c = m.kernel_size, m.stride, m.channels
    y = F.conv2d(y, m.conv_1xk.weight, None, (1, s), (0, k // 2), 1, c)
    return F.conv2d(y, m.conv_kx1.weight, None, (s, 1), (k // 2, 0), 1, c)


def _double_hook(module: nn.Module, inputs: Tuple[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
    return output * 2  # typed: torch.jit.script compiles the hook


# -- scripted operators honour their convs' hooks ---------------------------------------------------------------

def test_scripted_plain_sequential_runs_child_hooks():
    """The premise: TorchScript does not drop hooks, it compiles them (the oracle is plain F.conv2d)."""
    conv = nn.Conv2d(3, 3, 3, padding=1, groups=3, bias=False)
    conv.register_forward_hook(_double_hook)
    x = _x(1, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(nn.Sequential(conv))(x),
                                   2 * F.conv2d(x, conv.weight, None, 1, 1, 1, 3))


@pytest.mark.parametrize("grad", [False, True])
def test_scripted_mixconv_runs_a_hooked_conv_as_a_module(grad):
    m = MixConv2d(7, (3, 5, 7), impl="fast")
    m[1].register_forward_hook(_double_hook)
    scripted = torch.jit.script(m)
    x = _x(2, 7, 9, 8)
    with torch.set_grad_enabled(grad):
        y = scripted(x)
    weights = [c.weight.detach() for c in m]
    torch.testing.assert_close(y, _oracle_mixconv(x, weights, [None] * 3, scale=[1, 2, 1]), rtol=1e-5, atol=1e-5)


def test_scripted_grouped_conv_runs_a_hooked_conv_as_a_module_in_training():
    m = GroupedConv2d(8, 6, [3, 3], impl="fast").train()
    m[0].register_forward_hook(_double_hook)
    x = _x(2, 8, 7, 7)
    y = torch.jit.script(m)(x)
    weights = [c.weight.detach() for c in m]
    torch.testing.assert_close(y, _oracle_grouped(x, weights, [None] * 2, scale=[2, 1]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("padding", ["symmetric", "left_bottom"])
def test_scripted_xsepconv_runs_a_hooked_2x2_conv_as_a_module(impl, padding):
    m = XSepConv2d(8, 5, padding=padding, norm_layer=None, act_layer=None, impl=impl)
    m.conv_2x2.register_forward_hook(_double_hook)
    x = _x(2, 8, 7, 9)
    with torch.no_grad():
        y = torch.jit.script(m)(x)
        directions = list(DIRECTION_PADS) if padding == "symmetric" else [padding]
        torch.testing.assert_close(y, _oracle_xsep(x, m, directions, scale=2.0), rtol=1e-5, atol=1e-5)


# -- the convs' biases ------------------------------------------------------------------------------------------

def _give_biases(convs, seed=1):
    g = torch.Generator().manual_seed(seed)
    for i, conv in enumerate(convs):
        if i != 1:  # the second conv stays bias-free: zeros in the fused bias
            conv.bias = nn.Parameter(torch.randn(conv.out_channels, generator=g, dtype=conv.weight.dtype))


@pytest.mark.parametrize("mode", ["eval_no_grad", "eval_grad", "train_grad"])
def test_fast_mixconv_adds_its_convs_biases(mode):
    m = MixConv2d(7, (3, 5, 7), stride=2, impl="fast").train(mode == "train_grad")
    _give_biases(m)
    x = _x(2, 7, 9, 8).requires_grad_(mode != "eval_no_grad")
    with torch.set_grad_enabled(mode != "eval_no_grad"):
        y = m(x)
    weights = [c.weight.detach() for c in m]
    biases = [None if c.bias is None else c.bias.detach() for c in m]
    torch.testing.assert_close(y, _oracle_mixconv(x.detach(), weights, biases, 2), rtol=1e-5, atol=1e-5)
    if mode == "train_grad":  # the CPU training path (a custom autograd function) + the bias
        y.square().sum().backward()
        torch.testing.assert_close(m[0].bias.grad, (2 * y).detach()[:, :3].sum((0, 2, 3)))


def test_fast_mixconv_bias_gradcheck():
    m = MixConv2d(5, (3, 5), impl="fast").double().train()
    _give_biases(m)
    x = _x(1, 5, 4, 5, dtype=torch.float64).requires_grad_()
    params = [p for c in m for p in (c.weight, c.bias) if p is not None]
    assert torch.autograd.gradcheck(lambda x, *ps: m(x), (x, *params))


def test_scripted_mixconv_adds_its_convs_biases():
    m = MixConv2d(7, (3, 5), impl="fast")
    _give_biases(m)
    x = _x(1, 7, 6, 6)
    with torch.no_grad():
        weights = [c.weight for c in m]
        biases = [c.bias for c in m]
        torch.testing.assert_close(torch.jit.script(m)(x), _oracle_mixconv(x, weights, biases), rtol=1e-5, atol=1e-5)


def test_fast_grouped_conv_adds_its_convs_biases_in_training():
    m = GroupedConv2d(8, 6, [3, 3], impl="fast").train()
    _give_biases(m)
    x = _x(2, 8, 7, 7)
    with torch.no_grad():
        y = m(x)
        biases = [c.bias for c in m]  # the second conv stays bias-free
        torch.testing.assert_close(y, _oracle_grouped(x, [c.weight for c in m], biases), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("padding", ["symmetric", "right_top"])
def test_xsepconv_adds_the_2x2_conv_bias(impl, padding):
    m = XSepConv2d(8, 5, padding=padding, norm_layer=None, act_layer=None, impl=impl)
    m.conv_2x2.bias = nn.Parameter(_x(8, seed=3))
    x = _x(2, 8, 7, 9)
    with torch.no_grad():
        directions = list(DIRECTION_PADS) if padding == "symmetric" else [padding]
        torch.testing.assert_close(m(x), _oracle_xsep(x, m, directions, bias=m.conv_2x2.bias), rtol=1e-5, atol=1e-5)


# -- flags and slicing ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: ConvNormAct(4, 4, 3, inplace="no"),
    lambda: ConvNormAct(4, 4, 3, act_layer=None, inplace="no"),
    lambda: create_act("relu", inplace="no"),
    lambda: create_act("hswish", inplace=1),
])
def test_inplace_must_be_a_bool(make):
    with pytest.raises(ValueError, match="inplace must be True or False"):
        make()


def test_inplace_false_keeps_the_input():
    layer = ConvNormAct(4, 4, 3, norm_layer=None, act_layer="relu", inplace=False)
    assert not layer.act.inplace
    assert create_act("relu", inplace=True).inplace


def test_conv_norm_act_slice_is_a_sequential_of_those_layers():
    layer = ConvNormAct(4, 6, 3, act_layer="hswish").eval()
    head = layer[:2]
    assert type(head) is nn.Sequential and list(head) == [layer.conv, layer.bn]
    assert layer[-1] is layer.act and isinstance(layer[1:], nn.Sequential)
    x = _x(1, 4, 5, 5)
    with torch.no_grad():
        conv = F.conv2d(x, layer.conv.weight, None, 1, 1)
        expected = F.batch_norm(conv, layer.bn.running_mean, layer.bn.running_var, layer.bn.weight, layer.bn.bias,
                                False, 0.0, layer.bn.eps)
        torch.testing.assert_close(head(x), expected)


@pytest.mark.parametrize("make", [lambda: MixConv2d(9, (3, 5, 7)), lambda: GroupedConv2d(9, 6, [1, 3, 1])])
def test_mixconv_and_grouped_conv_slices_are_module_lists_of_their_convs(make):
    m = make()
    part = m[0:2]
    assert type(part) is nn.ModuleList and list(part) == [m[0], m[1]]
    assert list(m[::-1]) == [m[2], m[1], m[0]]
    assert m[-1] is m[2]


@pytest.mark.parametrize("make", [lambda: ConvNormAct(4, 6, 3), lambda: MixConv2d(9, (3, 5, 7))])
def test_scripted_layers_still_index_and_slice(make):
    layer = make()
    scripted = torch.jit.script(layer)  # indexing a scripted container gives the eager module, as in PyTorch
    assert scripted[0] is layer[0]
    assert list(scripted[0:2]) == [layer[0], layer[1]]


# -- global hooks: a decision, pinned ---------------------------------------------------------------------------

def test_global_hooks_see_the_operator_not_its_fused_convs():
    """As PyTorch's own fast paths, the fused path looks at the convs' hooks only (runs_as_plain_conv).

    Global hooks belong mostly to module trackers (FlopCounterMode, CommDebugMode), which must measure
    the fast path rather than switch the layer to the reference one. Hooking a conv makes it run.
    """
    m = MixConv2d(6, (3, 5), impl="fast")
    seen = []
    handle = register_module_forward_hook(lambda module, args, output: seen.append(type(module).__name__))
    try:
        x = _x(1, 6, 5, 5)
        with torch.no_grad():
            y = m(x)
            assert seen == ["MixConv2d"]
            m[0].register_forward_hook(lambda *args: None)
            seen.clear()
            torch.testing.assert_close(m(x), y)
            assert seen == ["Conv2d", "Conv2d", "MixConv2d"]
    finally:
        handle.remove()
    torch.testing.assert_close(y, _oracle_mixconv(x, [c.weight for c in m], [None, None]), rtol=1e-5, atol=1e-5)


# -- mixify / xsepify leave hooked convs alone, backward hooks included -----------------------------------------

@pytest.mark.parametrize("register", ["register_full_backward_hook", "register_full_backward_pre_hook"])
def test_mixify_and_xsepify_keep_a_conv_with_a_backward_hook(register):
    from mobileconv.models.convert_ops import mixify, xsepify

    for convert in (mixify, xsepify):
        conv = nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False)
        seen = []
        getattr(conv, register)(lambda *args: seen.append(1))
        model = convert(nn.Sequential(conv, nn.ReLU()))
        assert model[0] is conv  # replacing it would silently drop the hook
        model(_x(1, 8, 6, 6).requires_grad_()).sum().backward()
        assert seen == [1]
