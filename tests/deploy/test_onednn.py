"""OneDNNConv2d and the conv + activation / residual fusion passes of optimize_for_inference.

Oracles: ``F.conv2d`` followed by PyTorch's own activation functions and ``+`` (plain ops), and
the eval-mode model with ``impl="reference"``.
"""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mobileconv
from mobileconv.deploy.onednn import OneDNNConv2d, onednn_available
from mobileconv.deploy.optimize import (fuse_conv_activations, fuse_residual_adds, optimize_for_inference,
                                        trace_pairs)
from mobileconv.layers import Conv2dSame, SqueezeExcite

from .test_optimize import assert_close_to_scale, batch, randomize, reference_output

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning", "ignore::torch.jit.TracerWarning")
needs_onednn = pytest.mark.skipif(not onednn_available(), reason="PyTorch built without oneDNN")

ACTS = [
    (None, lambda y: y),
    (nn.ReLU, F.relu),
    (nn.ReLU6, F.relu6),
    (nn.SiLU, F.silu),
    (nn.Hardswish, F.hardswish),
    (nn.Sigmoid, torch.sigmoid),
    (nn.Hardsigmoid, F.hardsigmoid),
]
ACT_TYPES = tuple(a for a, _ in ACTS if a is not None)
# (in, out, kernel, stride, padding, groups, dilation)
CONVS = [
    (8, 16, 1, 1, 0, 1, 1),  # pointwise
    (12, 12, 5, 2, 2, 12, 1),  # depthwise, strided
    (16, 16, (1, 5), 1, (0, 2), 16, 1),  # XSepConv's 1xK
    (8, 12, 3, 1, 1, 2, 1),  # grouped
    (6, 6, 3, 1, 2, 6, 2),  # dilated depthwise
    (3, 8, 3, 2, 1, 1, 1),  # a stem
]


def make_conv(spec, seed: int = 0) -> nn.Conv2d:
    cin, cout, k, s, p, g, d = spec
    torch.manual_seed(seed)
    return nn.Conv2d(cin, cout, k, s, p, d, g, bias=True).eval()


def plain(conv: nn.Conv2d, fn, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    y = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return fn(y if residual is None else y + residual)


@needs_onednn
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("spec", CONVS)
@pytest.mark.parametrize("act, fn", ACTS)
def test_conv_act_matches_plain_ops(spec, act, fn, channels_last):
    conv = make_conv(spec)
    fused = OneDNNConv2d.from_conv(copy.deepcopy(conv), None if act is None else act())
    x = batch(2, spec[0], 11)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
        fused = fused.to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = plain(conv, fn, x)
        got = fused(x)
        residual = torch.randn_like(expected)
        got_res = fused(x, residual=residual)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_res, plain(conv, fn, x, residual), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_the_fast_path_is_the_onednn_op_and_shares_parameters():
    conv = make_conv(CONVS[1])
    fused = OneDNNConv2d.from_conv(conv, nn.SiLU())
    assert fused.weight is conv.weight and fused.bias is conv.bias
    assert set(fused.state_dict()) == {"weight", "bias"}
    x = batch(1, 12, 9)
    with torch.no_grad(), torch.profiler.profile() as prof:
        fused(x)
    names = {e.name for e in prof.events()}
    assert "mkldnn::_convolution_pointwise" in names and "aten::silu" not in names and "aten::silu_" not in names


@needs_onednn
def test_packed_weight_follows_every_change_of_the_weight():
    conv = make_conv(CONVS[0])
    fused = OneDNNConv2d.from_conv(conv)
    x = batch(2, 8, 6)
    with torch.no_grad():
        fused(x)
        conv.weight.mul_(2)  # in place
        torch.testing.assert_close(fused(x), plain(conv, lambda y: y, x))
        fused.weight = nn.Parameter(torch.randn_like(conv.weight))  # replaced
        torch.testing.assert_close(fused(x), plain(fused, lambda y: y, x))
        fused.double()  # cast: the fallback runs float64 with plain ops
        torch.testing.assert_close(fused(x.double()), plain(fused, lambda y: y, x.double()))
        fused.float()
        fused.bias.add_(1)  # the bias is kept with the packed weight: in place
        torch.testing.assert_close(fused(x), plain(fused, lambda y: y, x))
        fused.bias = nn.Parameter(torch.randn_like(fused.bias))  # replaced
        torch.testing.assert_close(fused(x), plain(fused, lambda y: y, x))
        x2 = batch(3, 8, 13)  # another input shape
        torch.testing.assert_close(fused(x2), plain(fused, lambda y: y, x2))
    with torch.inference_mode():  # weights made under inference_mode have no version counter
        inf = OneDNNConv2d.from_conv(make_conv(CONVS[0]))
        inf.weight = nn.Parameter(torch.randn(16, 8, 1, 1), requires_grad=False)
        inf(x)
        inf.weight.mul_(3)
        torch.testing.assert_close(inf(x), plain(inf, lambda y: y, x))


@needs_onednn
def test_packed_weight_follows_changes_that_keep_the_version_counter():
    conv = make_conv(CONVS[0])
    fused = OneDNNConv2d.from_conv(conv, nn.ReLU())
    x = batch(2, 8, 6)
    n = conv.weight.numel()
    flat = torch.randn(2 * n, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        conv.weight.data = flat[:n].view_as(conv.weight)
        fused(x)  # packs this view
        conv.weight.data = flat[n:].view_as(conv.weight)  # same storage and version counter, other memory
        torch.testing.assert_close(fused(x), plain(conv, F.relu, x))
    for p in conv.parameters():
        p.grad = torch.randn_like(p)
    torch.optim.Adam(conv.parameters(), lr=0.5, fused=True).step()  # writes without a version bump
    with torch.no_grad():
        torch.testing.assert_close(fused(x), plain(conv, F.relu, x))


def test_autograd_tracing_and_scripting_see_plain_ops():
    conv = make_conv(CONVS[1])
    fused = OneDNNConv2d.from_conv(copy.deepcopy(conv), nn.Hardswish())
    x = batch(2, 12, 9).requires_grad_()
    out = fused(x)
    out.sum().backward()
    x2 = x.detach().clone().requires_grad_()
    F.hardswish(conv(x2)).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(fused.weight.grad, conv.weight.grad)

    x = x.detach()
    traced = torch.jit.trace(fused.eval(), x)
    assert "mkldnn" not in str(traced.inlined_graph)
    scripted = torch.jit.script(fused)
    for m in (traced, scripted):
        torch.testing.assert_close(m(x), F.hardswish(conv(x)), rtol=1e-5, atol=1e-5)


def test_alternating_batch_sizes_pack_once_per_shape(monkeypatch):
    # a micro-batched model calls each conv with its chunk size and a smaller last chunk
    fused = OneDNNConv2d.from_conv(make_conv(CONVS[0]), nn.ReLU())
    packs = []
    reorder = torch._C._nn.mkldnn_reorder_conv2d_weight
    monkeypatch.setattr(torch._C._nn, "mkldnn_reorder_conv2d_weight",
                        lambda *args: packs.append(tuple(args[-1])) or reorder(*args))
    big, small = batch(3, 8, 5), batch(2, 8, 5)
    with torch.no_grad():
        for x in (big, small, big, small, big):
            torch.testing.assert_close(fused(x), F.relu(fused._conv_forward(x, fused.weight, fused.bias)))
        assert packs == [tuple(big.shape), tuple(small.shape)]
        fused.weight.mul_(2)  # a changed weight drops every packed copy
        fused(big)
    assert packs[2:] == [tuple(big.shape)]


def test_copy_and_pickle_drop_the_packed_weight():
    fused = OneDNNConv2d.from_conv(make_conv(CONVS[0]), nn.ReLU())
    x = batch(2, 8, 5)
    with torch.no_grad():
        expected = fused(x)  # packs
        assert list(fused._packed.entries) == [tuple(x.shape)]
        for clone in (copy.deepcopy(fused), pickle.loads(pickle.dumps(fused))):
            assert not clone._packed.entries
            torch.testing.assert_close(clone(x), expected)


def test_from_conv_rejects_what_it_cannot_fuse():
    with pytest.raises(ValueError, match="plain nn.Conv2d with numeric zero padding"):
        OneDNNConv2d.from_conv(Conv2dSame(3, 3, 3, 2))
    with pytest.raises(ValueError, match="plain nn.Conv2d with numeric zero padding"):
        OneDNNConv2d.from_conv(nn.Conv2d(3, 3, 3, padding="same"))
    with pytest.raises(ValueError, match="plain nn.Conv2d with numeric zero padding"):
        OneDNNConv2d.from_conv(nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="parameters as weight and bias"):  # computed by a pre-forward hook
        OneDNNConv2d.from_conv(nn.utils.spectral_norm(nn.Conv2d(3, 3, 3, padding=1)))
    with pytest.raises(ValueError, match=r"activation must be nn.Identity or one of .*got GELU"):
        OneDNNConv2d.from_conv(nn.Conv2d(3, 3, 1), nn.GELU())


# --- the passes --------------------------------------------------------------------------------

class ConvThenAct(nn.Module):
    """conv -> act, where ``raw_skip`` also adds the raw conv output and ``in_place`` picks the act."""

    def __init__(self, in_place: bool, raw_skip: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=in_place)
        self.raw_skip, self.in_place = raw_skip, in_place

    def forward(self, x):
        y = self.conv(x)
        if self.raw_skip and not self.in_place:
            return self.act(y) + y  # the raw output is read again: the act must stay separate
        if self.raw_skip:
            z = y * 2  # read before the in-place act: fusing would change z
            return self.act(y) + z
        return self.act(y) * 3  # the (in-place) act is the first and only reader


@pytest.mark.parametrize("in_place, raw_skip, fused", [(False, False, True), (True, False, True),
                                                       (False, True, False), (True, True, False)])
def test_an_activation_is_fused_only_when_nothing_else_reads_the_raw_conv_output(in_place, raw_skip, fused):
    m = ConvThenAct(in_place, raw_skip).eval()
    x = batch(2, 4, 6)
    pairs = trace_pairs(m, x, lambda mod: type(mod) is nn.Conv2d, lambda mod: isinstance(mod, nn.ReLU),
                        in_place_consumer=True)
    assert (pairs == [("conv", "act")]) is fused
    with torch.no_grad():
        expected = m(x)
        fast = copy.deepcopy(m)
        assert (fuse_conv_activations(fast, x) == [("conv", "act")]) is fused
        assert isinstance(fast.conv, OneDNNConv2d)
        assert isinstance(fast.act, nn.Identity) is fused
        torch.testing.assert_close(fast(x), expected)


@needs_onednn
@pytest.mark.parametrize("name", ["mixnet_s", "mobilenetv3_large_100", "xsep_mobilenetv3_small_100"])
def test_optimized_models_fuse_activations_and_residual_adds(name):
    model = randomize(mobileconv.create_model(name))
    # every activation outside squeeze-excite follows a conv (SE runs as linear layers), and every
    # block with a skip connection ends in a conv without activation
    in_se = {id(m) for se in model.modules() if isinstance(se, SqueezeExcite) for m in se.modules()}
    activations = sum(type(m) in ACT_TYPES and id(m) not in in_se for m in model.modules())
    adds = sum(getattr(m, "use_skip", False) for m in model.modules())
    assert activations > 20 and adds > 5
    fast = optimize_for_inference(model)
    convs = [m for m in fast.modules() if isinstance(m, OneDNNConv2d)]
    assert sum(c.post_op[0] != "none" for c in convs) == activations
    fused_acts = {id(c.act) for c in convs}
    fast_se = {id(m) for se in fast.modules() if isinstance(se, SqueezeExcite) for m in se.modules()}
    assert [m for m in fast.modules() if type(m) in ACT_TYPES and id(m) not in fused_acts | fast_se] == []
    assert sum(type(m).__name__.startswith("_FusedAdd") for m in fast.modules()) == adds
    assert not any(type(m) is nn.Conv2d and m.kernel_size != (1, 1) for m in fast.modules())
    x = batch(2, 3, 64)
    assert_close_to_scale(fast(x), reference_output(model, x))
    plain_fast = optimize_for_inference(model, onednn=False)
    assert not any(isinstance(m, OneDNNConv2d) for m in plain_fast.modules())
    assert_close_to_scale(plain_fast(x), reference_output(model, x))
    scripted = torch.jit.script(fast)  # TorchScript runs the plain ops
    assert_close_to_scale(scripted(x), reference_output(model, x))


def test_a_residual_block_with_an_activation_after_its_last_conv_keeps_its_add():
    # MobileNetV1-style DS block with pw_act: the add comes after the activation, not inside the conv
    from mobileconv.models._blocks import DepthwiseSeparableBlock

    block = DepthwiseSeparableBlock(8, 8, 3, 1, act_layer="relu", pw_act=True).eval()
    x = batch(2, 8, 6)
    fast = optimize_for_inference(block, example_input=x)
    assert type(fast) is DepthwiseSeparableBlock
    assert fuse_residual_adds(fast) == []
    with torch.no_grad():
        torch.testing.assert_close(fast(x), block(x), rtol=1e-5, atol=1e-5)


def test_an_optimized_model_exports_to_onnx_with_plain_convs(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from mobileconv.deploy.export import export_onnx

    model = randomize(mobileconv.create_model("mixnet_s_cifar"), size=32)
    fast = optimize_for_inference(model)
    assert any(isinstance(m, OneDNNConv2d) for m in fast.modules())
    path = tmp_path / "m.onnx"
    export_onnx(fast, batch(2, 3, 32), path)
    x = batch(3, 3, 32, seed=5)  # another batch size: a dynamic batch axis
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    assert_close_to_scale(got, reference_output(model, x))


def test_autocast_gets_the_plain_conv():
    conv = make_conv(CONVS[0])
    fused = OneDNNConv2d.from_conv(conv, nn.ReLU())
    x = batch(2, 8, 6)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, expected = fused(x), torch.relu(conv(x))
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected)


@needs_onednn
def test_bfloat16_runs_the_onednn_call_where_supported():
    from mobileconv.deploy import onednn

    if torch.bfloat16 not in onednn._DTYPES:
        pytest.skip("oneDNN has no bfloat16 conv on this CPU")
    conv = make_conv(CONVS[1]).to(torch.bfloat16)
    fused = OneDNNConv2d.from_conv(copy.deepcopy(conv), nn.SiLU())
    x = batch(2, 12, 9).to(torch.bfloat16)
    with torch.no_grad(), torch.profiler.profile() as prof:
        got = fused(x)
    assert "mkldnn::_convolution_pointwise" in {e.name for e in prof.events()}
    assert got.dtype == torch.bfloat16
    expected = F.silu(F.conv2d(x.float(), conv.weight.float(), conv.bias.float(), 2, 2, 1, 12))
    torch.testing.assert_close(got.float(), expected, rtol=2e-2, atol=2e-2)
