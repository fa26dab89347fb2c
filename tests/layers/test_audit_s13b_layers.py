"""Audit s13b: ``impl`` checked on assignment, NumPy integers accepted, fixed channel groups and layout.

Oracles are plain PyTorch (``F.conv2d`` per channel group, ``F.pad``, ``F.batch_norm``), never the library's own
``impl="reference"`` path.

* ``layer.impl = "Fast"`` (any string but ``"fast"`` / ``"reference"``) was stored unchecked, and the layer then
  silently ran its reference path; only the constructor and ``set_layer_impl`` checked it.
* NumPy integers (``np.int64(32)``, what ``nn.Conv2d`` takes) were refused as channel counts, kernel sizes,
  strides and group counts.
* ``append`` / ``extend`` / ``insert`` / ``+=`` / ``del`` / ``pop`` / ``layer[i] = conv`` on a MixConv2d or a
  GroupedConv2d left its convs out of step with its channel splits and kernel sizes (a wrong output or a
  shape error later); now refused, except replacing a conv by one of the same geometry (eager QAT and
  ``fuse_modules`` replace children with ``setattr``).
* The attributes the fused paths compute with (``stride``, ``padding``, ``kernel_sizes``, ``channels``...)
  could be reassigned after construction: the fused path then computed another conv than the child convs.
"""
from __future__ import annotations

import copy
import pickle
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobileconv.layers import (ConvNormAct, DepthwiseSeparableConv2d, GroupedConv2d, MixConv2d, SpatialSeparableConv2d,
                               SqueezeExcite, XSepConv2d, conv2d, create_conv2d, exponential_split,
                               xsep_padding_schedule)
from mobileconv.layers.helpers import split_channels

from .oracles import DIRECTION_PADS
from .oracles import grouped as _oracle_grouped
from .oracles import mixconv as _oracle_mixconv
from .oracles import seeded_randn as _x

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script, torch >= 2.9

IMPL_ERROR = r"impl must be one of \('fast', 'reference'\), got "


def _oracle_xsep(x, m):
    """XSepConv2d(norm_layer=None, act_layer=None): one-sided-padded 2x2 per channel group -> 1xK -> Kx1."""
    c, k, s = m.channels, m.kernel_size, m.stride
    splits = [c // 4 + c % 4] + [c // 4] * 3 if m.padding == "symmetric" else [c]
    directions = list(DIRECTION_PADS) if m.padding == "symmetric" else [m.padding]
    xs, ws = torch.split(x, splits, 1), torch.split(m.conv_2x2.weight, splits, 0)
    y = torch.cat([F.conv2d(F.pad(xi, DIRECTION_PADS[d]), wi, None, 1, 0, 1, wi.shape[0])
                   for xi, wi, d in zip(xs, ws, directions)], 1)
    y = F.conv2d(y, m.conv_1xk.weight, None, (1, s), (0, k // 2), 1, c)
    return F.conv2d(y, m.conv_kx1.weight, None, (s, 1), (k // 2, 0), 1, c)


def _mix():
    return MixConv2d(12, [3, 5, 7])


def _grouped():
    return GroupedConv2d(8, 12, [3, 3])


def _xsep():
    return XSepConv2d(8, 5, norm_layer=None, act_layer=None)


LAYERS = {"mixconv": _mix, "grouped": _grouped, "xsepconv": _xsep}
INPUT_CHANNELS = {"mixconv": 12, "grouped": 8, "xsepconv": 8}


def _check_against_oracle(name, m, x):
    with torch.no_grad():
        if name == "mixconv":
            want = _oracle_mixconv(x, [c.weight for c in m], stride=m.stride)
        elif name == "grouped":
            want = _oracle_grouped(x, [c.weight for c in m])
        else:
            want = _oracle_xsep(x, m)
        torch.testing.assert_close(m(x), want)


# -- impl is checked whenever it is assigned ---------------------------------------------------------------------

@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("bad", ["Fast", "turbo", "", None, 1])
def test_assigning_a_bad_impl_is_refused(name, bad):
    m = LAYERS[name]()
    with pytest.raises(ValueError, match=IMPL_ERROR):
        m.impl = bad  # was stored, and the layer silently ran its reference path
    assert m.impl == "fast"


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_assigned_impl_is_a_plain_attribute_and_both_values_compute_the_conv(name, mode):
    """No property: the forward reads ``impl`` at the cost of a dict look-up (README: < 1 us per call)."""
    m = getattr(LAYERS[name](), mode)()
    assert not hasattr(type(m), "impl") and type(m.__dict__["impl"]) is str
    x = _x(2, INPUT_CHANNELS[name], 7, 6)
    for impl in ("reference", "fast"):
        m.impl = impl
        assert m.__dict__["impl"] == impl
        _check_against_oracle(name, m, x)


@pytest.mark.parametrize("name", LAYERS)
def test_copies_keep_impl_and_still_check_it(name):
    m = LAYERS[name]()
    m.impl = "reference"
    x = _x(2, INPUT_CHANNELS[name], 6, 6)
    loaded = LAYERS[name]()
    loaded.load_state_dict(m.state_dict())
    loaded.impl = "reference"
    for other in (copy.deepcopy(m), pickle.loads(pickle.dumps(m)), loaded):
        assert other.impl == "reference"
        _check_against_oracle(name, other.eval(), x)
        with pytest.raises(ValueError, match=IMPL_ERROR):
            other.impl = "Reference"
    scripted = torch.jit.script(m.eval())
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), m(x))


# -- NumPy integers are integers ---------------------------------------------------------------------------------

I64, I32 = np.int64, np.int32

NUMPY_BUILDS = {
    "mixconv": lambda: MixConv2d(I64(12), [I64(3), I32(5)], I64(2)),
    "mixconv_int_kernel": lambda: MixConv2d(I64(12), I64(5)),
    "mixconv_exponential": lambda: MixConv2d(I64(12), (I64(3), I64(5)), split="exponential"),
    "grouped": lambda: GroupedConv2d(I64(8), I32(12), [I64(1), I64(1)], I64(1)),
    "xsepconv": lambda: XSepConv2d(I64(8), I64(5), I64(2)),
    "conv_norm_act": lambda: ConvNormAct(I64(8), I64(16), I64(3), I64(2), groups=I64(8), dilation=I64(1)),
    "conv2d": lambda: conv2d(I64(8), I64(8), I64(3), I64(1), I64(2), I64(8)),
    "create_conv2d": lambda: create_conv2d(I64(8), I64(8), I64(3), I64(2), depthwise=True),
    "create_conv2d_mix": lambda: create_conv2d(I64(8), I64(8), [I64(3), I64(5)], depthwise=True),
    "create_conv2d_grouped": lambda: create_conv2d(I64(8), I64(16), [I64(1), I64(1)]),
    "depthwise_separable": lambda: DepthwiseSeparableConv2d(I64(8), I64(16), I64(3), I64(2)),
    "spatial_separable": lambda: SpatialSeparableConv2d(I64(8), I64(16), I64(3), I64(2)),
    "squeeze_excite": lambda: SqueezeExcite(I64(8), I64(2)),
}

# the attributes each module keeps of its arguments: all Python ints (TorchScript infers their types)
INT_ATTRIBUTES = ("channels", "in_channels", "out_channels", "kernel_size", "kernel_sizes", "splits", "in_splits",
                  "out_splits", "stride", "max_kernel", "groups", "dilation", "padding")


def _ints_kept(module):
    for m in module.modules():
        for attr in INT_ATTRIBUTES:
            value = m.__dict__.get(attr)
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(v, np.generic):
                    return f"{type(m).__name__}.{attr} = {value!r}"
    return None


def test_nn_conv2d_takes_numpy_integers():
    """The premise: PyTorch's own conv takes them."""
    conv = nn.Conv2d(I64(8), I64(8), I64(3), I64(1), I64(1), groups=I64(8))
    assert conv(_x(1, 8, 5, 5)).shape == (1, 8, 5, 5)


@pytest.mark.parametrize("name", NUMPY_BUILDS)
def test_numpy_integers_are_accepted_and_stored_as_ints(name):
    m = NUMPY_BUILDS[name]()  # was "... must be a positive integer, got 8"
    assert _ints_kept(m) is None, _ints_kept(m)
    m.eval()
    x = _x(1, 12 if name.startswith("mixconv") else 8, 8, 8)
    with torch.no_grad():
        y = m(x)
        torch.testing.assert_close(torch.jit.script(m)(x), y)


def test_numpy_integer_mixconv_computes_the_mixed_conv():
    m = MixConv2d(I64(12), [I64(3), I32(5)], I64(2)).eval()
    x = _x(2, 12, 9, 8)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _oracle_mixconv(x, [c.weight for c in m], stride=2))


def test_numpy_integer_helpers():
    assert split_channels(I64(10), I64(3)) == [4, 3, 3]
    assert exponential_split(I64(16), I64(3)) == [8, 4, 4]
    assert xsep_padding_schedule(I64(5)) == ["right_top", "right_bottom", "left_top", "left_bottom", "symmetric"]
    for values in (split_channels(I64(10), I64(3)), exponential_split(I64(16), I64(3))):
        assert all(type(v) is int for v in values)


@pytest.mark.parametrize("make", [
    lambda: MixConv2d(True, 3), lambda: MixConv2d(8, [3, True]), lambda: MixConv2d(8, 3, stride=np.bool_(True)),
    lambda: GroupedConv2d(8.0, 8, [1, 1]), lambda: conv2d(8, 8, 3, groups=np.float64(8.0)),
    lambda: split_channels(8.0, 2), lambda: exponential_split(True, 1), lambda: xsep_padding_schedule(2.0),
])
def test_bools_and_floats_are_still_refused(make):
    with pytest.raises(ValueError):
        make()


# -- a MixConv2d / GroupedConv2d keeps its channel groups --------------------------------------------------------

def _conv_like(conv):
    """A fresh conv of ``conv``'s geometry, other weights."""
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, bias=False)
    with torch.no_grad():
        new.weight.copy_(_x(*new.weight.shape, seed=7))
    return new


MUTATIONS = {
    "append": lambda m: m.append(nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)),
    "extend": lambda m: m.extend([nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)]),
    "iadd": lambda m: m.__iadd__([nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)]),
    "insert": lambda m: m.insert(0, nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)),
    "delitem": lambda m: m.__delitem__(0),
    "delslice": lambda m: m.__delitem__(slice(1, None)),
    "pop": lambda m: m.pop(-1),
    "delattr": lambda m: delattr(m, "1"),
    "add_module": lambda m: m.add_module("extra", nn.Identity()),
    "register_module": lambda m: m.register_module(str(len(m)), nn.Identity()),
    "setattr_new_child": lambda m: setattr(m, "head", nn.Identity()),
    "set_to_none": lambda m: m.__setitem__(0, None),
}


@pytest.mark.parametrize("name", ["mixconv", "grouped"])
@pytest.mark.parametrize("mutation", MUTATIONS)
def test_adding_or_removing_a_conv_is_refused(name, mutation):
    m = LAYERS[name]()
    convs = list(m)
    with pytest.raises(TypeError, match=f"{type(m).__name__}: cannot .*fixed by the constructor.*build a new"):
        MUTATIONS[mutation](m)
    assert list(m) == convs and list(m._modules) == [str(i) for i in range(len(convs))]
    _check_against_oracle(name, m.train(), _x(2, INPUT_CHANNELS[name], 6, 5))


@pytest.mark.parametrize("name", ["mixconv", "grouped"])
@pytest.mark.parametrize("how", ["setitem", "setattr", "add_module"])
def test_replacing_a_conv_by_another_geometry_is_refused(name, how):
    m = LAYERS[name]()
    old = m[0]
    wrong = nn.Conv2d(old.in_channels, old.out_channels, 5, padding=2, groups=old.groups, bias=False)  # other kernel
    with pytest.raises(ValueError, match=r"conv '0' can only be replaced by a conv of the same geometry"):
        if how == "setitem":
            m[0] = wrong  # was accepted: the fast path then padded a 5x5 kernel as the 3x3 of kernel_sizes
        elif how == "setattr":
            setattr(m, "0", wrong)
        else:
            m.add_module("0", wrong)
    assert m[0] is old


@pytest.mark.parametrize("name", ["mixconv", "grouped"])
@pytest.mark.parametrize("how", ["setitem", "setattr"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_conv_can_be_replaced_by_one_of_the_same_geometry(name, how, mode):
    m = getattr(LAYERS[name](), mode)()
    new = _conv_like(m[1])
    if how == "setitem":
        m[1] = new
    else:
        setattr(m, "1", new)
    assert m[1] is new
    _check_against_oracle(name, m, _x(2, INPUT_CHANNELS[name], 6, 5))


def test_concatenating_gives_a_plain_module_list_and_leaves_the_layer_alone():
    m = _mix()
    extra = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    both = m + nn.ModuleList([extra])
    assert type(both) is nn.ModuleList and len(both) == 4 and len(m) == 3


def test_fuse_modules_replaces_a_mixconv_conv_through_setattr():
    """``torch.ao.quantization.fuse_modules`` sets the fused conv on the MixConv with ``setattr`` (eval: a conv of
    the same geometry with the BN folded in; QAT: a ``ConvBn2d`` wrapper, no conv geometry of its own)."""
    import torch.ao.quantization as tq

    class Host(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = MixConv2d(12, [3, 5])
            self.bn = nn.BatchNorm2d(6)  # on the first group's channels

        def forward(self, x):
            y = self.mix(x)
            return torch.cat([self.bn(y[:, :6]), y[:, 6:]], 1)

    torch.manual_seed(0)
    host = Host()
    with torch.no_grad():
        host.bn.running_mean.uniform_(-1, 1)
        host.bn.running_var.uniform_(0.5, 2)
        host.bn.weight.uniform_(0.5, 2)
    host.eval()
    x = _x(2, 12, 7, 7)
    w0, w1 = host.mix[0].weight.detach().clone(), host.mix[1].weight.detach().clone()
    bn = host.bn
    y0 = F.batch_norm(F.conv2d(x[:, :6], w0, None, 1, 1, 1, 6), bn.running_mean, bn.running_var, bn.weight, bn.bias,
                      False, 0.0, bn.eps)
    want = torch.cat([y0, F.conv2d(x[:, 6:], w1, None, 1, 2, 1, 6)], 1)
    fused = tq.fuse_modules(copy.deepcopy(host), [["mix.0", "bn"]])
    assert type(fused.mix[0]) is nn.Conv2d and fused.mix[0].bias is not None and isinstance(fused.bn, nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), want)
    qat = tq.fuse_modules_qat(copy.deepcopy(host).train(), [["mix.0", "bn"]])
    assert isinstance(qat.mix[0], nn.Sequential)  # intrinsic ConvBn2d, run as a module
    with torch.no_grad():
        torch.testing.assert_close(qat.eval()(x), want)


def test_qat_conv_replacement_is_a_conv_of_the_same_geometry():
    import torch.ao.nn.qat as nnqat
    import torch.ao.quantization as tq

    m = _mix()
    conv = m[2]
    conv.qconfig = tq.get_default_qat_qconfig("fbgemm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qat = nnqat.Conv2d.from_float(conv)
    m[2] = qat
    assert m[2] is qat


# -- what the fused paths compute with is fixed by the constructor ------------------------------------------------

REASSIGNMENTS = {
    "mixconv": {"stride": 2, "padding": "tf", "kernel_sizes": [3, 5, 9], "splits": [4, 4, 4], "channels": 16,
                "dilated": True, "split": "exponential", "max_kernel": 9, "fusable": False},
    "grouped": {"stride": 2, "kernel_sizes": [5, 5], "in_splits": [6, 2], "out_splits": [6, 6], "in_channels": 10,
                "out_channels": 16, "single_conv": False},
    "xsepconv": {"stride": 2, "padding": "left_top", "kernel_size": 3, "channels": 12, "splits": [8],
                 "directions": ["left_top"], "pads": [[1, 0, 1, 0]]},
}


@pytest.mark.parametrize("name, attr", [(n, a) for n, attrs in REASSIGNMENTS.items() for a in attrs])
def test_layout_attributes_are_fixed_after_construction(name, attr):
    m = LAYERS[name]()
    before = m.__dict__[attr]
    with pytest.raises(AttributeError, match=rf"{type(m).__name__}\.{attr} is fixed by the constructor"):
        setattr(m, attr, REASSIGNMENTS[name][attr])  # was accepted: the fast path computed another conv
    assert m.__dict__[attr] == before
    _check_against_oracle(name, m.train(), _x(2, INPUT_CHANNELS[name], 6, 5))


def test_xsepconv_children_replaced_only_by_the_same_geometry():
    m = _xsep()
    with pytest.raises(ValueError, match=r"conv 'conv_2x2' can only be replaced by a conv of the same geometry"):
        m.conv_2x2 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)  # the fused path would embed it as a 2x2
    with pytest.raises(ValueError, match=r"conv 'conv_1xk' can only be replaced"):
        m.conv_1xk = nn.Conv2d(8, 8, (1, 3), padding=(0, 1), groups=8, bias=False)
    m.conv_2x2 = _conv_like(m.conv_2x2)
    m.bn1 = nn.Identity()  # what fold_batchnorms does to a folded BN
    m.extra = nn.ReLU()  # unlike a MixConv's list of convs, an XSepConv's children are named: a new one is harmless
    _check_against_oracle("xsepconv", m.train(), _x(2, 8, 6, 5))


# -- the fused-weight cache under the nn.Module API (audited: no defect; pinned) ---------------------------------

def _init_normal(module):
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight)


MODULE_API = {
    "apply_init": lambda m: m.apply(_init_normal),
    "channels_last": lambda m: m.to(memory_format=torch.channels_last),
    "double": lambda m: m.double(),
    "bfloat16": lambda m: m.bfloat16(),
    "requires_grad_false": lambda m: m.requires_grad_(False),
    "zero_grad": lambda m: m.zero_grad(),
}


@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("call", MODULE_API)
def test_cached_fused_kernel_follows_the_module_api(call, swap):
    """The eval-mode fast MixConv caches its fused kernel under ``no_grad``; ``swap=True`` converts parameters
    with ``torch.utils.swap_tensors`` (the same Parameter objects, their contents swapped)."""
    m = MixConv2d(12, [3, 5, 7]).eval()
    x = _x(2, 12, 7, 6)
    with torch.no_grad():
        m(x)  # fills the cache
    before = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(swap)
    try:
        MODULE_API[call](m)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(before)
    x = x.to(m[0].weight.dtype)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _oracle_mixconv(x, [c.weight for c in m]))
    assert [n for n, _ in m.named_modules()] == ["", "0", "1", "2"]  # the cache is no module...
    assert set(m.state_dict()) == {"0.weight", "1.weight", "2.weight"}  # ...and no state
