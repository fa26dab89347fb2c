"""CUDA checks, for a machine with a GPU (skipped elsewhere; `benchmarks/gpu_table.sh` runs them first).

The fast operators against their reference formulation on CUDA (float32 with TF32 off: cuDNN's
default TF32 rounds to about 1e-3), optimize_for_inference on a CUDA model, and one AMP training
step of the fast and the reference model from the same weights.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from mobileconv import create_model, optimize_for_inference
from mobileconv.deploy.optimize import ieee_float32
from mobileconv.layers import GroupedConv2d, MixConv2d, XSepConv2d, set_layer_impl

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CUDA = torch.device("cuda")


def forward_backward(module, x):
    x = x.clone().requires_grad_(True)
    y = module(x)
    (y * torch.linspace(-1, 1, y.numel(), device=y.device).view_as(y)).sum().backward()
    return y.detach(), x.grad, [p.grad for p in module.parameters()]


@pytest.mark.parametrize("make, in_channels", [
    (lambda: MixConv2d(48, [3, 5, 7, 9]), 48),
    (lambda: MixConv2d(48, [3, 5], stride=2), 48),
    (lambda: XSepConv2d(32, 5, padding="symmetric"), 32),
    (lambda: XSepConv2d(32, 7, stride=2, padding="left_top"), 32),
    (lambda: GroupedConv2d(32, 64, [1, 1]), 32),
    (lambda: GroupedConv2d(32, 64, [3, 5]), 32),
], ids=["mix3579", "mix35_s2", "xsep5_sym", "xsep7_s2_left_top", "grouped1x1", "grouped35"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_equals_reference_on_cuda(make, in_channels, channels_last):
    torch.manual_seed(0)
    fast = make().to(CUDA).train()
    ref = copy.deepcopy(fast)
    fast.impl, ref.impl = "fast", "reference"
    x = torch.randn(4, in_channels, 17, 19, device=CUDA)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    with ieee_float32(CUDA):
        got, want = forward_backward(fast, x), forward_backward(ref, x)
    for g, w in zip([got[0], got[1], *got[2]], [want[0], want[1], *want[2]]):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["mixnet_s", "xsep_mobilenetv3_small_100", "mobilenetv3_large_100"])
def test_optimize_for_inference_on_cuda(name):
    torch.manual_seed(0)
    model = create_model(name).to(CUDA).eval()
    x = torch.randn(3, 3, 96, 96, device=CUDA)
    fast = optimize_for_inference(model, example_input=x)
    assert next(fast.parameters()).device.type == "cuda"
    with torch.no_grad(), ieee_float32(CUDA):
        want, got = model(x), fast(x)
    assert ((got - want).abs().max() / want.abs().max()).item() <= 1e-4
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
        half = fast(x)
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    # float16 rounding through a deep random-weight net reaches several percent of the scale
    assert (half.float() - want).abs().max() / want.abs().max() < 0.25


def test_amp_training_step_fast_and_reference_agree():
    torch.manual_seed(0)
    fast = create_model("mixnet_s", num_classes=10).to(CUDA).to(memory_format=torch.channels_last).train()
    ref = set_layer_impl(copy.deepcopy(fast), "reference")
    x = torch.randn(8, 3, 96, 96, device=CUDA).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,), device=CUDA)
    grads = []
    for model in (fast, ref):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        assert torch.isfinite(loss)
        grads.append(torch.cat([p.grad.float().flatten() for p in model.parameters()]))
    assert (grads[0] - grads[1]).norm() / grads[1].norm() < 5e-2  # float16, two summation orders


def test_rand_augment_on_cuda_draws_as_on_cpu_and_matches_its_values():
    """The draws come from the CPU generator whatever the device, so one seed gives the same ops; the values
    may differ by 1 where the GPU contracts a blend into a fused multiply-add."""
    from mobileconv.data.auto_augment import RandAugment

    policy = RandAugment.from_policy("rand-m9-mstd0.5", fill=(124, 116, 104))
    x = torch.randint(0, 256, (64, 3, 40, 48), generator=torch.Generator().manual_seed(0)).float()
    torch.manual_seed(1)
    on_cpu = policy(x)
    torch.manual_seed(1)
    on_gpu = policy(x.to(CUDA)).cpu()
    difference = (on_gpu - on_cpu).abs()
    assert difference.max() <= 1 and (difference > 0).float().mean() < 0.01
    assert (on_cpu != x).flatten(1).any(1).float().mean() > 0.4
