"""optimize_for_inference on user models it may not expect: the output must stay that of the eval-mode
model on every input shape tried (not only the traced one), with ``verify=False`` so that nothing but
the rewrites themselves is tested; otherwise a piece is left alone or a clear error raised.

Oracle: the eval-mode model itself (plain PyTorch), never anything the optimiser computed.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import mobileconv
from mobileconv.deploy.optimize import optimize_for_inference
from mobileconv.layers import MixConv2d, SqueezeExcite

from .test_optimize import assert_close_to_scale

# the default example batch is (2, 3, 64, 64); the others take other paths in the models below
SHAPES = [(2, 3, 64, 64), (1, 3, 64, 64), (1, 3, 32, 32), (3, 3, 40, 48)]


def calibrate(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Random BN affine terms and running statistics of the actual inputs, so that a dropped or
    mis-folded BN changes the output far beyond the tolerance; returned in eval mode."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                if m.affine and not parametrize.is_parametrized(m):
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                if m.track_running_stats:
                    m.reset_running_stats()
                    m.momentum = None  # the average over the calibration batch
        model.train()(torch.randn(16, 3, 64, 64, generator=g, dtype=dtype))
    return model.eval()


def assert_same_as_eval_model(model: nn.Module, fast: nn.Module, dtype: torch.dtype = torch.float32) -> None:
    g = torch.Generator().manual_seed(1)
    for shape in SHAPES:
        x = torch.randn(*shape, generator=g, dtype=dtype)
        with torch.no_grad():
            assert_close_to_scale(fast(x.clone()), model(x.clone()))


class BNThenUnfusable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x):
        return F.gelu(self.bn(self.conv(x))).cumsum(1) * 2 + 1


class SharedConvCalledTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.conv = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1)
        self.bn1, self.bn2, self.act = nn.BatchNorm2d(8), nn.BatchNorm2d(8), nn.ReLU()

    def forward(self, x):
        return self.bn2(self.conv(self.act(self.bn1(self.conv(self.stem(x))))))


class SharedBNCalledTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x):
        return self.bn(self.c2(F.relu(self.bn(self.c1(x)))))


class ConvFeedsTwoBranches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.bn1, self.bn2 = nn.BatchNorm2d(8), nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.conv(x)
        return self.act(self.bn1(y)) + self.bn2(y)


class BNOnLargeImagesOnly(nn.Module):
    """A Python branch on the input's size: the BN runs at 64 px (the default example), not at 32 px."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()

    def forward(self, x):
        y = self.conv(x)
        return self.act(self.bn(y) if x.shape[-1] >= 48 else y)


class ActivationOnBatchesOnly(nn.Module):
    """A branch on the batch size: the ReLU after the conv runs for batches, not for one image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()

    def forward(self, x):
        y = self.conv(x)
        return self.act(y) if x.shape[0] > 1 else y


class SEInputReadOnSmallImages(nn.Module):
    """The squeeze-excite's input is read again after it at 32 px only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.se = nn.Conv2d(3, 8, 3, padding=1), SqueezeExcite(8, 4)

    def forward(self, x):
        y = F.relu(self.conv(x))
        z = self.se(y)
        return z if x.shape[-1] >= 48 else z + y


class Wrapper(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


class NoParameters(nn.Module):
    def forward(self, x):
        return F.relu(x).mean((2, 3))


class Symmetric(nn.Module):
    def forward(self, w):
        return w + w.flip(-1)


def conv_bn_relu_stack() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))


def parametrized_convs() -> nn.Sequential:
    weight = nn.Conv2d(3, 8, 3, padding=1)
    parametrize.register_parametrization(weight, "weight", Symmetric())
    bias = nn.Conv2d(8, 8, 3, padding=1)
    parametrize.register_parametrization(bias, "bias", nn.Identity())
    return nn.Sequential(weight, nn.BatchNorm2d(8), nn.ReLU(), bias, nn.BatchNorm2d(8), nn.ReLU())


def other_padding_modes() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=2, dilation=2, padding_mode="circular"), nn.BatchNorm2d(8),
                         nn.ReLU6(), nn.Conv2d(8, 8, 3, padding=1, groups=4, padding_mode="replicate"),
                         nn.BatchNorm2d(8))


def dilated_grouped_convs() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=2, dilation=2), nn.BatchNorm2d(8), nn.SiLU(),
                         nn.Conv2d(8, 16, 5, stride=2, padding=4, dilation=2, groups=4), nn.BatchNorm2d(16),
                         nn.Hardswish(), nn.Conv2d(16, 16, 4, padding="same", groups=16), nn.BatchNorm2d(16),
                         nn.ReLU(), nn.Conv2d(16, 16, (1, 5), padding=(0, 2), groups=16), nn.BatchNorm2d(16))


def transposed_convs() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.ConvTranspose2d(8, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4))


def bns_without_stats_or_affine() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8, track_running_stats=False), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8, affine=False), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False),
                         nn.BatchNorm2d(8, affine=False, track_running_stats=False))


MODELS = {
    "bn_then_unfusable_ops": BNThenUnfusable,
    "shared_conv_called_twice": SharedConvCalledTwice,
    "shared_bn_called_twice": SharedBNCalledTwice,
    "conv_feeds_two_branches": ConvFeedsTwoBranches,
    "branch_on_image_size": BNOnLargeImagesOnly,
    "branch_on_batch_size": ActivationOnBatchesOnly,
    "se_input_read_on_small_images": SEInputReadOnSmallImages,
    "wrapper": lambda: Wrapper(conv_bn_relu_stack()),
    "data_parallel": lambda: nn.DataParallel(conv_bn_relu_stack()),
    "no_parameters": NoParameters,
    "parametrized_convs": parametrized_convs,
    "reflect_circular_replicate_padding": other_padding_modes,
    "dilated_grouped_same_padding": dilated_grouped_convs,
    "conv_transpose": transposed_convs,
    "bn_without_running_stats_or_affine": bns_without_stats_or_affine,
}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")
@pytest.mark.parametrize("name", MODELS)
def test_unusual_models_keep_their_output_on_every_shape(name):
    torch.manual_seed(0)
    model = calibrate(MODELS[name]())
    assert_same_as_eval_model(model, optimize_for_inference(model, verify=False))


def test_branch_on_the_input_size_keeps_the_bn_it_may_skip():
    torch.manual_seed(0)
    model = calibrate(BNOnLargeImagesOnly())
    fast = optimize_for_inference(model)
    assert isinstance(fast.bn, nn.BatchNorm2d)  # folding it would be right at 64 px only


def test_float64_model():
    torch.manual_seed(0)
    model = calibrate(nn.Sequential(*conv_bn_relu_stack(), nn.SiLU()).double(), torch.float64)
    fast = optimize_for_inference(model)
    assert all(p.dtype == torch.float64 for p in fast.parameters())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 40, 40, generator=g, dtype=torch.float64)
    with torch.no_grad():
        assert_close_to_scale(fast(x), model(x), 1e-10)  # float64 maths: far below the float32 bound


def test_a_model_in_train_mode_is_left_as_it_was():
    torch.manual_seed(0)
    model = mobileconv.create_model("mixnet_s_cifar", num_classes=10)
    with torch.no_grad():
        model.train()(torch.randn(4, 3, 32, 32))  # running statistics away from their initial values
    before = copy.deepcopy(model.state_dict())
    flags = [m.training for m in model.modules()]
    fast = optimize_for_inference(model, example_input=torch.randn(2, 3, 32, 32))
    assert [m.training for m in model.modules()] == flags and all(flags)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # BN statistics, num_batches_tracked included
    assert not fast.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_close_to_scale(fast(x), copy.deepcopy(model).eval()(x))


def test_meta_device_is_a_clear_error():
    model = conv_bn_relu_stack().to("meta")
    with pytest.raises(ValueError, match="meta device"):
        optimize_for_inference(model)
    with pytest.raises(ValueError, match="meta device"):
        optimize_for_inference(conv_bn_relu_stack(), example_input=torch.empty(2, 3, 16, 16, device="meta"))


# --- forward hooks: a rewrite would drop them or change what they see ----------------------------------

def test_hooks_that_change_tensors_are_kept_with_their_modules():
    torch.manual_seed(0)
    model = calibrate(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                    nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                    nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                    MixConv2d(8, [3, 5]), nn.BatchNorm2d(8)))
    model[0].register_forward_hook(lambda module, args, out: out * 2 + 1)  # conv output changed before its BN
    model[4].register_forward_hook(lambda module, args, out: out.clamp(max=0.3))  # a BN's output clipped
    model[8].register_forward_hook(lambda module, args, out: out - 0.5)  # an activation's output shifted
    model[9].register_forward_hook(lambda module, args, out: out.flip(1))  # a MixConv's output permuted
    assert_same_as_eval_model(model, optimize_for_inference(model, verify=False))


def test_a_hook_that_reads_the_se_input_after_the_call_sees_it_unchanged():
    torch.manual_seed(0)
    model = calibrate(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), SqueezeExcite(8, 4)))
    seen = []
    model[2].register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(x)
        expected = seen.pop()
        optimize_for_inference(model, verify=False)(x)
    torch.testing.assert_close(seen[-1], expected, rtol=1e-5, atol=1e-5)


class NormalisesItsInputInPlace(nn.Module):
    """``x -= mean`` in forward: every call writes to the caller's tensor, as the eval-mode model does too."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.register_buffer("mean", torch.tensor([0.5, -0.25, 1.0]).view(1, 3, 1, 1))

    def forward(self, x):
        x -= self.mean
        return self.act(self.bn(self.conv(x)))


@pytest.mark.parametrize("given", [False, True], ids=["default_example", "example_input"])
def test_a_model_that_writes_to_its_input_is_traced_on_copies(given):
    torch.manual_seed(0)
    model = calibrate(NormalisesItsInputInPlace())
    example = torch.randn(2, 3, 32, 32)
    before = example.clone()
    fast = optimize_for_inference(model, example_input=example if given else None)  # verify on: no false alarm
    assert torch.equal(example, before)  # the optimiser's own passes leave the caller's batch alone
    assert isinstance(fast.bn, nn.Identity)  # and the BN is still folded
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert_close_to_scale(fast(x.clone()), model(x.clone()))
