"""optimize_for_inference: BN folding, fused MixConv / XSepConv, channels_last, registry-wide numerics.

Oracles: the eval-mode model itself with ``impl="reference"`` (PyTorch's own BatchNorm and the
split / conv-per-group / concat operators), and BN / MixConv formulas written out here with plain
``F.conv2d`` / tensor arithmetic.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mobileconv
from mobileconv.deploy.optimize import (InplaceSqueezeExcite, fold_batchnorms, optimize_for_inference,
                                        trace_conv_bn_pairs)
from mobileconv.layers import GroupedConv2d, MixConv2d, SqueezeExcite, XSepConv2d, set_layer_impl

REL_TOL = 1e-4  # of the output scale (the acceptance bound)


def randomize(model: nn.Module, in_chans: int = 3, seed: int = 0, size: int = 64) -> nn.Module:
    """Random BN affine terms and a unit-scale classifier, BN statistics calibrated on random data.

    A fresh model has identity BNs and a near-zero classifier, and made-up running statistics
    let the signal die out (the output would not depend on early layers): here every BN sees
    statistics of its actual input, so dropping or mis-folding any one of them changes the
    logits by far more than the tolerance (checked by hand: >= 10% for every BN of mixnet_s).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batch
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features ** 0.5)
        model.train()(torch.randn(24, in_chans, size, size, generator=g))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    return model.eval()


def reference_output(model: nn.Module, x: torch.Tensor):
    ref = set_layer_impl(copy.deepcopy(model), "reference").eval()
    with torch.no_grad():
        return ref(x)


def assert_close_to_scale(got: torch.Tensor, expected: torch.Tensor, rel: float = REL_TOL) -> None:
    assert got.shape == expected.shape
    scale = expected.abs().max().item()
    err = (got - expected).abs().max().item()
    assert scale > 1e-2, f"output scale {scale} too small for a meaningful comparison"
    assert err <= rel * scale, f"max abs diff {err:.3g} > {rel} x output scale {scale:.3g}"


def batch(n: int, c: int, h: int, w: int | None = None, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, c, h, h if w is None else w, generator=torch.Generator().manual_seed(seed))


def bn_oracle(y: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Eval-mode BN written out: gamma * (y - mu) / sqrt(var + eps) + beta."""
    v = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
    return v(bn.weight) * (y - v(bn.running_mean)) / torch.sqrt(v(bn.running_var) + bn.eps) + v(bn.bias)


# --- registry-wide -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", mobileconv.list_models())
def test_registered_model_matches_eval_model(name):
    torch.manual_seed(0)
    model = randomize(mobileconv.create_model(name)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = optimize_for_inference(model)

    # output: the eval-mode reference model is the oracle, at the calibration size and at odd sizes
    # (TF SAME pads asymmetrically for stride 2), batch 2 and batch 1
    for x in (batch(2, 3, 64), batch(1, 3, 57, 62, seed=2)):
        assert_close_to_scale(fast(x), reference_output(model, x))

    # what the copy is: eval mode, no BN / MixConv / XSepConv left, frozen, channels_last weights
    assert not fast.training
    kinds = {type(m) for m in fast.modules()}
    assert nn.BatchNorm2d not in kinds and XSepConv2d not in kinds
    assert all(not m.fusable for m in fast.modules() if isinstance(m, MixConv2d))
    assert all(not p.requires_grad for p in fast.parameters())
    convs = [m for m in fast.modules() if isinstance(m, nn.Conv2d) and m.weight.shape[-1] > 1]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)

    # the input model is untouched: same weights, still in train mode, still the fast operators
    assert model.training
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name", ["tf_mixnet_s", "xsep_mobilenetv3_small_100"])
def test_model_contract_survives(name):
    model = randomize(mobileconv.create_model(name, num_classes=7))
    fast = optimize_for_inference(model)
    x = batch(2, 3, 48)
    ref = set_layer_impl(copy.deepcopy(model), "reference").eval()
    with torch.no_grad():
        assert_close_to_scale(fast.forward_features(x), ref.forward_features(x))
        assert_close_to_scale(fast.forward_head(fast.forward_features(x), pre_logits=True),
                              ref.forward_head(ref.forward_features(x), pre_logits=True))
    assert fast(x).shape == (2, 7)


def test_features_only_model():
    model = randomize(mobileconv.create_model("mixnet_s", features_only=True))
    x = batch(1, 3, 64)
    fast = optimize_for_inference(model)
    got, expected = fast(x), reference_output(model, x)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert_close_to_scale(g, e)


def test_channels_last_off_keeps_nchw_weights():
    model = randomize(mobileconv.create_model("mixnet_s_cifar"))
    fast = optimize_for_inference(model, channels_last=False)
    assert all(m.weight.is_contiguous() for m in fast.modules() if isinstance(m, nn.Conv2d))
    x = batch(2, 3, 32)
    assert_close_to_scale(fast(x), reference_output(model, x))


# --- the rewrites, against formulas ----------------------------------------------------------------

class ConvBN(nn.Module):
    def __init__(self, conv: nn.Module, channels: int) -> None:
        super().__init__()
        self.conv, self.bn = conv, nn.BatchNorm2d(channels)

    def forward(self, x):
        return self.bn(self.conv(x))


def test_conv_bn_folds_to_the_formula():
    m = randomize(ConvBN(nn.Conv2d(3, 5, 3, padding=1, bias=True), 5)).eval()
    with torch.no_grad():
        m.conv.bias.normal_()
    fast = optimize_for_inference(m)
    assert isinstance(fast.bn, nn.Identity)
    s = m.bn.weight / torch.sqrt(m.bn.running_var + m.bn.eps)
    torch.testing.assert_close(fast.conv.weight, m.conv.weight * s.view(-1, 1, 1, 1))
    torch.testing.assert_close(fast.conv.bias, (m.conv.bias - m.bn.running_mean) * s + m.bn.bias)
    x = batch(2, 3, 9)
    with torch.no_grad():
        expected = bn_oracle(F.conv2d(x, m.conv.weight, m.conv.bias, padding=1), m.bn)
    assert_close_to_scale(fast(x), expected)


@pytest.mark.parametrize("ks, stride, padding, size", [
    ([3, 5, 7], 1, "", (9, 9)),
    ([3, 5, 7, 9, 11], 2, "", (12, 11)),
    ([3, 5, 7, 9], 2, "tf", (10, 13)),
])
def test_mixconv_bn_becomes_one_depthwise_conv(ks, stride, padding, size):
    c = 14
    m = randomize(ConvBN(MixConv2d(c, ks, stride, padding=padding), c), c).eval()
    fast = optimize_for_inference(m, example_input=batch(2, c, *size))
    convs = [mod for mod in fast.modules() if isinstance(mod, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].groups == c and convs[0].weight.shape[-2:] == (max(ks),) * 2

    # oracle weight: every group's kernel centred in a K x K zero kernel, times gamma / sqrt(var + eps)
    big = max(ks)
    oracle = torch.zeros(c, 1, big, big)
    start = 0
    for conv, k in zip(m.conv, ks):
        n, o = conv.weight.shape[0], (big - k) // 2
        oracle[start:start + n, :, o:o + k, o:o + k] = conv.weight.detach()
        start += n
    s = m.bn.weight / torch.sqrt(m.bn.running_var + m.bn.eps)
    torch.testing.assert_close(convs[0].weight.detach(), oracle * s.view(-1, 1, 1, 1))

    # oracle output: split / per-group F.conv2d / concat, then the BN formula
    x = batch(2, c, *size, seed=3)
    outs, start = [], 0
    for conv, k in zip(m.conv, ks):
        n = conv.weight.shape[0]
        xi = x[:, start:start + n]
        if padding == "tf":
            ph = max((-(-size[0] // stride) - 1) * stride + k - size[0], 0)
            pw = max((-(-size[1] // stride) - 1) * stride + k - size[1], 0)
            xi = F.pad(xi, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
            outs.append(F.conv2d(xi, conv.weight, None, stride, 0, 1, n))
        else:
            outs.append(F.conv2d(xi, conv.weight, None, stride, k // 2, 1, n))
        start += n
    with torch.no_grad():
        expected = bn_oracle(torch.cat(outs, 1), m.bn)
    assert_close_to_scale(fast(x), expected)


@pytest.mark.parametrize("padding", ["symmetric", "right_top", "left_bottom"])
@pytest.mark.parametrize("stride", [1, 2])
def test_xsepconv_bns_fold_including_a_following_bn(padding, stride):
    c = 12
    m = randomize(ConvBN(XSepConv2d(c, 5, stride, padding=padding, act_layer="hswish"), c), c).eval()
    x = batch(2, c, 11, 10)
    fast = optimize_for_inference(m, example_input=x)
    assert not any(isinstance(mod, (nn.BatchNorm2d, XSepConv2d)) for mod in fast.modules())
    # four BNs (three inside, one after) fold into three convs
    assert sum(isinstance(mod, nn.Conv2d) for mod in fast.modules()) == 3
    assert_close_to_scale(fast(x), reference_output(m, x))


@pytest.mark.parametrize("cin, cout, dense", [(16, 96, True), (72, 24, False)])
def test_even_grouped_1x1_conv_becomes_one_conv(cin, cout, dense):
    m = randomize(ConvBN(GroupedConv2d(cin, cout, [1, 1]), cout), cin).eval()
    x = batch(2, cin, 5)
    fast = optimize_for_inference(m, example_input=x)
    assert isinstance(fast.conv, nn.Conv2d) and fast.conv.groups == (1 if dense else 2)
    with torch.no_grad():  # oracle: one conv per half of the channels, concatenated
        expected = bn_oracle(torch.cat([F.conv2d(xi, conv.weight) for xi, conv in
                                        zip(torch.chunk(x, 2, 1), m.conv)], 1), m.bn)
    assert_close_to_scale(fast(x), expected)
    if dense:  # block-diagonal: the off-diagonal blocks are zero
        w = fast.conv.weight
        assert not w[:cout // 2, cin // 2:].any() and not w[cout // 2:, :cin // 2].any()


def test_uneven_grouped_conv_folds_into_its_groups():
    m = randomize(ConvBN(GroupedConv2d(7, 11, [1, 1, 1]), 11), 7).eval()  # splits 3,2,2 -> 5,3,3
    fast = optimize_for_inference(m, example_input=batch(2, 7, 6))
    assert isinstance(fast.conv, GroupedConv2d) and isinstance(fast.bn, nn.Identity)
    x = batch(2, 7, 6, seed=4)
    with torch.no_grad():
        expected = bn_oracle(torch.cat([F.conv2d(xi, conv.weight) for xi, conv in
                                        zip(torch.split(x, [3, 2, 2], 1), m.conv)], 1), m.bn)
    assert_close_to_scale(fast(x), expected)


def test_unfusable_mixconv_folds_into_its_groups():
    # TF SAME with a 1x1 kernel at stride 2 is not a centred crop of the 5x5 padding: kept split
    m = randomize(ConvBN(MixConv2d(9, [1, 3, 5], 2, padding="tf"), 9), 9).eval()
    x = batch(2, 9, 10, 12)
    fast = optimize_for_inference(m, example_input=x)
    assert isinstance(fast.conv, MixConv2d) and isinstance(fast.bn, nn.Identity)
    assert_close_to_scale(fast(x), reference_output(m, x))


# --- what must not be folded ----------------------------------------------------------------------

class ConvReadTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y  # the raw conv output is read twice


class InplaceBetween(ConvReadTwice):
    def forward(self, x):
        y = self.conv(x)
        y.relu_()  # same tensor object reaches the BN, but it is not the conv's output any more
        return self.bn(y)


class BatchStatsBN(ConvReadTwice):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(4, track_running_stats=False)  # batch statistics even in eval mode

    def forward(self, x):
        return self.bn(self.conv(x))


class SharedBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2, self.bn = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv2(self.bn(self.conv1(x))))  # one BN module after two convs


@pytest.mark.parametrize("make", [ConvReadTwice, InplaceBetween, BatchStatsBN, SharedBN])
def test_bn_is_kept_when_folding_would_change_the_result(make):
    m = randomize(make()).eval()
    x = batch(3, 3, 8)
    assert trace_conv_bn_pairs(m, x) == []
    fast = optimize_for_inference(m, example_input=x)
    assert isinstance(fast.bn, nn.BatchNorm2d)
    with torch.no_grad():
        assert_close_to_scale(fast(x), m(x))


def test_fold_batchnorms_reports_pairs():
    m = randomize(ConvBN(nn.Conv2d(3, 4, 1), 4)).eval()
    assert fold_batchnorms(m, batch(1, 3, 4)) == [("conv", "bn")]
    assert isinstance(m.bn, nn.Identity)


# --- bad input ------------------------------------------------------------------------------------

def test_rejects_a_non_module():
    with pytest.raises(ValueError, match="model must be a torch.nn.Module, got dict"):
        optimize_for_inference({})


def test_rejects_a_bad_example_input():
    message = r"example_input must be a 4-d tensor \(N, C, H, W\), got torch.Size\(\[3, 8\]\)"
    with pytest.raises(ValueError, match=message):
        optimize_for_inference(nn.Conv2d(3, 3, 1), example_input=torch.zeros(3, 8))
    # an empty batch used to turn every rewrite off without a word (all empty tensors look alike to the trace)
    with pytest.raises(ValueError, match=r"example_input must hold at least one image, got shape \(0, 3, 8, 8\)"):
        optimize_for_inference(nn.Conv2d(3, 3, 1), example_input=torch.zeros(0, 3, 8, 8))


# --- squeeze-excite in place ----------------------------------------------------------------------

class SEInputReadAgain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.se = nn.Conv2d(3, 8, 3, padding=1), SqueezeExcite(8, 4)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return self.se(y) + y  # the SE input is needed after the SE


class SEOnTheInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.se = SqueezeExcite(3, 2)

    def forward(self, x):
        return self.se(x)  # in place would overwrite the caller's tensor


@pytest.mark.parametrize("name, expected", [("mixnet_s", 13), ("mobilenetv3_large_100", 8)])
def test_every_block_se_scales_in_place(name, expected):
    fast = optimize_for_inference(mobileconv.create_model(name))
    assert sum(isinstance(m, InplaceSqueezeExcite) for m in fast.modules()) == expected
    assert not any(type(m) is SqueezeExcite for m in fast.modules())


@pytest.mark.parametrize("make", [SEInputReadAgain, SEOnTheInput])
def test_se_stays_out_of_place_when_its_input_is_needed(make):
    m = randomize(make()).eval()
    x = batch(2, 3, 8)
    fast = optimize_for_inference(m, example_input=x)
    assert not any(isinstance(mod, InplaceSqueezeExcite) for mod in fast.modules())
    x_before = x.clone()
    with torch.no_grad():
        assert_close_to_scale(fast(x), m(x))
    assert torch.equal(x, x_before)


def test_inplace_se_matches_the_formula_and_keeps_autograd():
    se = randomize(SqueezeExcite(6, 3, act_layer=nn.SiLU), 6).eval()
    fast = InplaceSqueezeExcite.from_module(se)
    x = batch(2, 6, 5)
    s = torch.sigmoid(F.conv2d(F.silu(F.conv2d(x.mean((2, 3), keepdim=True), se.conv_reduce.weight,
                                                se.conv_reduce.bias)), se.conv_expand.weight, se.conv_expand.bias))
    expected = (x * s).detach()
    xg = x.clone().requires_grad_()
    out = fast(xg)  # autograd recording: out of place, gradients flow
    torch.testing.assert_close(out.detach(), expected)
    out.sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    with torch.no_grad():
        y = x.clone()
        assert fast(y) is y  # in place
    torch.testing.assert_close(y, expected)
