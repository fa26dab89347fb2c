"""optimize_for_inference audit (s12): hooks that keep tensors, squeeze-excites with convs of their own, and
weights a forward reads outside their modules.

Oracle: the eval-mode model itself (plain PyTorch modules and ops), never anything the optimiser computed.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mobileconv
from mobileconv.deploy.optimize import InplaceSqueezeExcite, optimize_for_inference
from mobileconv.layers import MixConv2d, SqueezeExcite

from .test_optimize import assert_close_to_scale


def randomize_bns(model: nn.Module) -> nn.Module:
    """Random BN statistics and affine terms, so that a folded BN changes its conv's output; eval mode."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


def inputs(*shapes):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(*s, generator=g) for s in shapes]


# --- a hook that keeps a tensor (features[name] = output) without reading it ------------------------------

class FeaturesThenBN(nn.Module):
    """``features`` ends in a conv; the BN and activation after it are outside it (a hook on ``features``)."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1))
        self.bn, self.act = nn.BatchNorm2d(8), act

    def forward(self, x):
        return self.act(self.bn(self.features(x))).mean((2, 3))


class ConvThenPost(nn.Module):
    """The BN and activation sit in a wrapper whose pre-hook keeps its input (the raw conv output)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.post = nn.Conv2d(3, 8, 3, padding=1), nn.Sequential(nn.BatchNorm2d(8), nn.ReLU())

    def forward(self, x):
        return self.post(self.conv(x))


@pytest.mark.parametrize("case", ["forward_hook_relu", "forward_hook_inplace_relu", "pre_hook"])
def test_a_hook_that_keeps_a_tensor_keeps_the_eval_model_values(case):
    torch.manual_seed(0)
    if case == "pre_hook":
        model = randomize_bns(ConvThenPost())
        register = lambda m, kept: m.post.register_forward_pre_hook(  # noqa: E731
            lambda mod, args: kept.append(args[0]))
    else:
        model = randomize_bns(FeaturesThenBN(nn.ReLU(inplace=case.endswith("inplace_relu"))))
        register = lambda m, kept: m.features.register_forward_hook(  # noqa: E731
            lambda mod, a, out: kept.append(out))
    kept: list[torch.Tensor] = []
    register(model, kept)  # on the model while it is optimised, as a feature extractor is
    fast = optimize_for_inference(model)
    for x in inputs((2, 3, 32, 32), (1, 3, 24, 40)):
        kept.clear()
        with torch.no_grad():
            expected = model(x.clone())
            want = kept.pop().clone()
            got = fast(x.clone())
        assert_close_to_scale(got, expected)
        assert_close_to_scale(kept.pop(), want)  # the raw conv output, not the BN's or ReLU's


def test_a_hook_that_keeps_the_squeeze_excite_input_sees_it_unscaled():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), SqueezeExcite(8, 4), nn.Conv2d(8, 4, 1)).eval()
    zoo = mobileconv.create_model("mobilenetv3_small_100", num_classes=10).eval()
    for m, module in ((model, model[1]), (zoo, zoo.blocks[0][0].act1)):  # zoo: the activation before the SE
        kept: list[torch.Tensor] = []
        module.register_forward_hook(lambda mod, args, out, kept=kept: kept.append(out))
        fast = optimize_for_inference(m)
        x = inputs((2, 3, 64, 64))[0]
        with torch.no_grad():
            m(x.clone())
            want = kept.pop().clone()
            fast(x.clone())
        assert_close_to_scale(kept.pop(), want)


def test_the_squeeze_excite_still_scales_in_place_without_hooks():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), SqueezeExcite(8, 4), nn.Conv2d(8, 4, 1)).eval()
    assert isinstance(optimize_for_inference(model)[2], InplaceSqueezeExcite)


# --- a squeeze-excite whose 1x1 convs are not plain ones ------------------------------------------------------

class StandardisedConv(nn.Conv2d):
    """Weight standardisation: a conv with a forward of its own."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


@pytest.mark.parametrize("conv", ["own_forward", "grouped"])
def test_a_squeeze_excite_with_a_conv_of_its_own_keeps_its_output(conv):
    torch.manual_seed(0)
    se = SqueezeExcite(8, 4)
    se.conv_reduce = StandardisedConv(8, 4, 1) if conv == "own_forward" else nn.Conv2d(8, 4, 1, groups=2)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), se, nn.Conv2d(8, 4, 1)).eval()
    fast = optimize_for_inference(model)  # verify on: no "changed the output" error, no shape error
    for x in inputs((2, 3, 32, 32), (3, 3, 17, 23)):
        with torch.no_grad():
            assert_close_to_scale(fast(x.clone()), model(x.clone()))


# --- weights and statistics a forward reads outside their modules -------------------------------------------

class TiedDecoder(nn.Module):
    """An autoencoder whose decoder reuses the encoder conv's weight: the weight must not be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x):
        return F.conv_transpose2d(F.relu(self.bn(self.conv(x))), self.conv.weight, padding=1)


class StatisticsReadAgain(nn.Module):
    """Uses the BN's running mean again: the BN must stay a BN."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x))) + self.bn.running_mean.view(1, -1, 1, 1)


class MixConvWeightReadAgain(nn.Module):
    """Reads a MixConv group's kernel outside the MixConv: the MixConv must stay one."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.mix, self.bn = nn.Conv2d(3, 8, 1), MixConv2d(8, [3, 5]), nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.bn(self.mix(self.stem(x)))
        return y * self.mix[0].weight.sum()


@pytest.mark.parametrize("make", [TiedDecoder, StatisticsReadAgain, MixConvWeightReadAgain],
                         ids=["tied_conv_weight", "bn_statistics", "mixconv_kernel"])
def test_parameters_read_outside_their_module_are_not_folded(make):
    torch.manual_seed(0)
    model = randomize_bns(make())
    fast = optimize_for_inference(model)  # verify on: it used to raise "changed the output" or fail to run
    for x in inputs((2, 3, 32, 32), (1, 3, 20, 28)):
        with torch.no_grad():
            assert_close_to_scale(fast(x.clone()), model(x.clone()))


def test_two_convs_sharing_one_weight_still_fold():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
    model[6].weight = model[3].weight  # one parameter, two convs, two BNs
    model = randomize_bns(model)
    fast = optimize_for_inference(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    for x in inputs((2, 3, 32, 32), (1, 3, 20, 28)):
        with torch.no_grad():
            assert_close_to_scale(fast(x.clone()), model(x.clone()))


def test_in_place_squeeze_excite_names_a_wrong_channel_count():
    """It ran F.linear on the pooled vector, whose shape error names no channels; it checks as SqueezeExcite does."""
    from mobileconv.deploy.optimize import InplaceSqueezeExcite
    from mobileconv.layers import SqueezeExcite

    se = InplaceSqueezeExcite.from_module(SqueezeExcite(8, 2))
    with pytest.raises(ValueError, match=r"SqueezeExcite: input x must have shape \(N, 8, H, W\), i.e. 8 channels"):
        se(torch.randn(1, 6, 4, 4))
