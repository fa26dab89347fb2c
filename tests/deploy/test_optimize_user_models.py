"""optimize_for_inference on user models that break the usual patterns: every rewrite must keep
the output (compared with the eval-mode model, not with anything the optimiser computed) or be
skipped, and the caller's tensors must stay untouched."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

from mobileconv.deploy.onednn import onednn_available
from mobileconv.deploy.optimize import optimize_for_inference
from mobileconv.layers import MixConv2d, SqueezeExcite

from .test_optimize import assert_close_to_scale, randomize


class BatchStatStage(nn.Module):
    """Batch statistics written as F.batch_norm (transductive BN): each image's output depends on the others."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return F.relu(F.batch_norm(self.conv(x), None, None, training=True))


class BatchStatNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 3, padding=1)
        self.blocks = nn.Sequential(BatchStatStage(64), BatchStatStage(64))
        self.fc = nn.Linear(64, 5)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def test_stages_with_batch_statistics_are_not_micro_batched():
    torch.manual_seed(0)
    model = BatchStatNet().eval()
    fast = optimize_for_inference(model)
    assert type(fast.blocks) is nn.Sequential
    x = torch.randn(20, 3, 64, 64)  # more images than one chunk would hold
    with torch.no_grad():
        assert_close_to_scale(fast(x), model(x))


class RawAlsoReturned(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()

    def forward(self, x):
        y = self.conv(x)
        return self.act(self.bn(y)), y  # the raw conv output leaves the model: no BN fold, no fused act


class SEInputAlsoReturned(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.se = nn.Conv2d(3, 8, 3, padding=1), SqueezeExcite(8, 4)

    def forward(self, x):
        y = F.relu(self.conv(x))
        return self.se(y), y


class SEInputViewReadLater(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.se = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), SqueezeExcite(8, 4)

    def forward(self, x):
        y = self.c2(F.relu(self.c1(x)))
        skip = y[:, :4]  # a view taken before the squeeze-excite, read after it
        return self.se(y)[:, :4] + skip


@pytest.mark.parametrize("cls", [RawAlsoReturned, SEInputAlsoReturned, SEInputViewReadLater])
def test_tensors_read_after_a_rewrite_keep_their_values(cls):
    torch.manual_seed(0)
    model = randomize(cls())
    fast = optimize_for_inference(model, verify=False)  # the check here is the test's own
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected, got = model(x), fast(x)
    expected, got = (expected, got) if isinstance(expected, tuple) else ((expected,), (got,))
    for e, g in zip(expected, got):
        assert_close_to_scale(g, e, 1e-5)


class SEOnTheInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.se = SqueezeExcite(3, 2)

    def forward(self, x):
        return self.se(x.contiguous(memory_format=torch.channels_last))  # no copy for channels_last input


def test_the_callers_input_is_never_overwritten():
    fast = optimize_for_inference(SEOnTheInput().eval())
    for x in (torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)):
        before = x.clone()
        with torch.no_grad():
            fast(x)
        assert torch.equal(x, before)


def test_channels_last_false_keeps_nchw():
    model = randomize(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()))
    fast = optimize_for_inference(model, channels_last=False)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        y = fast(x)
        assert y.is_contiguous()
        assert_close_to_scale(y, model(x), 1e-5)
    with pytest.raises(ValueError, match="onednn=True needs channels_last=True"):
        optimize_for_inference(model, channels_last=False, onednn=True)


class Base(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)


class DictOut(Base):
    def forward(self, x):
        return {"out": self.bn(self.conv(x)), "n": 3}


class TupleWithNone(Base):
    def forward(self, x):
        return self.bn(self.conv(x)), None


class MaskedLogits(Base):
    def forward(self, x):
        y = self.bn(self.conv(x)).mean((2, 3))
        y[:, 0] = float("-inf")
        return y


@pytest.mark.parametrize("cls", [DictOut, TupleWithNone, MaskedLogits])
def test_verify_accepts_outputs_of_any_structure(cls):
    model = randomize(cls())
    fast = optimize_for_inference(model)  # verify=True: no false alarm
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected, got = model(x), fast(x)
    if isinstance(expected, dict):
        assert got["n"] == 3
        assert_close_to_scale(got["out"], expected["out"], 1e-5)
    elif isinstance(expected, tuple):
        assert got[1] is None
        assert_close_to_scale(got[0], expected[0], 1e-5)
    else:
        assert torch.equal(got[:, 0], expected[:, 0])
        assert_close_to_scale(got[:, 1:], expected[:, 1:], 1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_verify_tolerance_follows_the_dtype(dtype):
    torch.manual_seed(0)
    model = randomize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))).to(dtype)
    fast = optimize_for_inference(model)  # rounding alone exceeds 1e-4 of the scale in half precision
    x = torch.randn(2, 3, 16, 16, dtype=dtype)
    with torch.no_grad():
        reference = model.float()(x.float())
        # as accurate as the unoptimised half-precision model, against float32
        unoptimised_err = (model.to(dtype)(x).float() - reference).abs().max().item() / reference.abs().max().item()
        assert_close_to_scale(fast(x).float(), reference, 4 * max(unoptimised_err, 1e-3))


def test_verify_still_catches_a_wrong_output(monkeypatch):
    import mobileconv.deploy.optimize as optimize

    monkeypatch.setattr(optimize, "_fold", lambda conv, bn: None)  # "fold" that drops the BN
    with pytest.raises(RuntimeError, match="changed the output"):
        optimize_for_inference(randomize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))))


@pytest.mark.parametrize("parametrization", [weight_norm, spectral_norm])
def test_parametrized_convs_keep_their_bn(parametrization):
    torch.manual_seed(0)
    model = randomize(nn.Sequential(parametrization(nn.Conv2d(3, 8, 3, padding=1)), nn.BatchNorm2d(8),
                                        nn.ReLU()))
    fast = optimize_for_inference(model)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert_close_to_scale(fast(x), model(x), 1e-5)


NORMS = {  # weight computed from other tensors: a property (parametrize) or an attribute a forward pre-hook sets
    "parametrizations.weight_norm": weight_norm,
    "parametrizations.spectral_norm": spectral_norm,
    "hook_spectral_norm": nn.utils.spectral_norm,
    "hook_weight_norm": nn.utils.weight_norm,
}


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")
@pytest.mark.parametrize("trained", [False, True], ids=["fresh", "after_a_training_step"])
@pytest.mark.parametrize("norm", NORMS)
def test_convs_with_computed_weights_keep_their_bn(norm, trained):
    torch.manual_seed(0)
    wrap = NORMS[norm]
    mix = MixConv2d(12, [3, 5], impl="reference")  # reference: its convs' own hooks run
    wrap(mix[1])
    model = nn.Sequential(wrap(nn.Conv2d(3, 12, 3, padding=1)), nn.BatchNorm2d(12), nn.ReLU(),
                          mix, nn.BatchNorm2d(12), nn.ReLU(), nn.Conv2d(12, 5, 1), nn.BatchNorm2d(5))
    randomize(model)
    if trained:  # a forward pass with grad: a hook-based norm leaves an autograd graph in the weight attribute
        model.train()(torch.randn(4, 3, 16, 16)).sum().backward()
        model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = optimize_for_inference(model)
    assert isinstance(fast[1], nn.BatchNorm2d)
    assert isinstance(fast[7], nn.Identity)  # the plain conv's BN is still folded
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert_close_to_scale(fast(x), model(x))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)  # the caller's model is left alone


@pytest.mark.skipif(not onednn_available(), reason="the message is OneDNNConv2d's")
def test_wrong_channel_count_names_the_channels():
    fast = optimize_for_inference(randomize(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))))
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, H, W\), got \(2, 4, 16, 16\)"):
        fast(torch.randn(2, 4, 16, 16))


def test_micro_batch_true_that_cannot_apply_says_so():
    model = randomize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)))
    with pytest.warns(UserWarning, match=r"micro_batch=True\): left out"):
        optimize_for_inference(model, micro_batch=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimize_for_inference(model)  # the default (None) only applies it where it can: no warning
