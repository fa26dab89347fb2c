"""Micro-batched stages in optimize_for_inference: same output as the whole batch, the planned chunks.

Oracles: the eval-mode model with ``impl="reference"`` on the whole batch, the same optimised
model with ``micro_batch=False``, and the chunking rule written out here.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import mobileconv
from mobileconv.deploy import optimize
from mobileconv.deploy.optimize import (MicroBatchedMobileNet, MicroBatchedStages, micro_batch_stages,
                                        optimize_for_inference)

from .test_optimize import assert_close_to_scale, batch, randomize, reference_output

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning", "ignore::torch.jit.TracerWarning")


class CountCalls(nn.Module):
    """Records the batch size of every call of the stage it wraps."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return x


@pytest.fixture
def small_images(monkeypatch):
    """Small test images make small activations: chunk every stage above 16 KiB per image."""
    monkeypatch.setattr(optimize, "MICRO_BATCH_MIN_PEAK", 2**14)


def small_budget_model(name: str = "mixnet_s", budget: int = 2**20) -> tuple[nn.Module, nn.Module]:
    """An optimised model whose stages run in chunks of about 1 MiB of activations."""
    model = randomize(mobileconv.create_model(name))
    fast = optimize_for_inference(model, micro_batch=False)
    assert micro_batch_stages(fast, batch(2, 3, 64), budget=budget)
    return model, fast


def test_plan_follows_the_rule(monkeypatch):
    stages = MicroBatchedStages(*[nn.Identity() for _ in range(4)])
    stages.peak_ratios = [1.0, 6.0, 2.0, 0.5]
    stages.budget = 1000
    monkeypatch.setattr(optimize, "MICRO_BATCH_MIN_PEAK", 150)
    x = torch.zeros(32, 25)  # 100 bytes per image: peaks 100, 600, 200, 50 bytes
    # stages 0-2 (peaks above 150 bytes) run in chunks of floor(1000 / 600) = 1 image
    assert stages.plan(x) == (3, 1)
    stages.budget = 2500
    assert stages.plan(x) == (3, 4)
    assert stages.plan(x[:4]) == (0, 4)  # one chunk would hold the whole batch
    monkeypatch.setattr(optimize, "MICRO_BATCH_MIN_PEAK", 700)
    assert stages.plan(x) == (0, 32)  # no stage is large enough


@pytest.mark.parametrize("name", ["mixnet_s", "mobilenetv3_large_100", "tf_mixnet_s"])
def test_chunks_give_the_whole_batch_output(name, small_images):
    model, fast = small_budget_model(name)
    x = batch(7, 3, 64)  # 7 is not a multiple of the chunk
    prefix, chunk = fast.plan(x)
    assert prefix >= 2 and 1 <= chunk < 7  # the stem and at least one stage
    with torch.no_grad():
        got = fast(x)
        fast.budget = 2**40  # one chunk: the whole batch
        whole = fast(x)
    # the same maths; oneDNN may pick another summation order for another batch size
    assert_close_to_scale(got, whole, rel=1e-5)
    assert_close_to_scale(got, reference_output(model, x))


def test_only_the_planned_stages_run_in_chunks(small_images):
    _, fast = small_budget_model()
    counters = [CountCalls() for _ in range(1 + len(fast.blocks))]  # the stem, then every stage
    fast.act1 = nn.Sequential(fast.act1, counters[0])
    for stage, counter in zip(fast.blocks, counters[1:]):
        stage.append(counter)
    x = batch(7, 3, 64)
    prefix, chunk = fast.plan(x)
    with torch.no_grad():
        fast(x)
    expected_chunks = [min(chunk, 7 - i) for i in range(0, 7, chunk)]
    assert [c.batches for c in counters[:prefix]] == [expected_chunks] * prefix
    assert [c.batches for c in counters[prefix:]] == [[7]] * (len(counters) - prefix)

    # autograd recording and tracing run the whole batch
    for c in counters:
        c.batches.clear()
    fast(x.clone().requires_grad_())
    torch.jit.trace(fast, x, check_trace=False)
    assert [c.batches for c in counters] == [[7, 7]] * len(counters)


def test_default_plan_at_224():
    images = torch.zeros(32, 3, 224, 224)  # 602 112 bytes per image
    fast = optimize_for_inference(mobileconv.create_model("mixnet_s"))
    assert type(fast) is MicroBatchedMobileNet and type(fast.blocks) is nn.Sequential
    # largest activations per image, in floats: stem 16 x 112 x 112 (0.8 MB); stages 0-3: 16 x 112 x 112,
    # 96 x 112 x 112 (4.8 MB), 144 x 56 x 56, 240 x 28 x 28 (0.75 MB, under 768 KiB): the stem and
    # stages 0-2 in chunks of 16 MiB // 4.8 MB = 3 images
    assert fast.peak_ratios[:5] == pytest.approx([16 / 12, 16 / 12, 96 / 12, 144 / 48, 240 / 192])
    assert fast.plan(images) == (4, 16 * 2**20 // (96 * 112 * 112 * 4))
    assert fast.plan(images[:3]) == (0, 3)
    # MobileNetV3-Small-sized: no stage above 1 MiB, but the stem (0.8 MB) and stage 1 (72 x 56 x 56,
    # 0.9 MB) are above 768 KiB: stem and stages 0-1 in chunks of 16 MiB // 0.9 MB = 18 images
    fast = optimize_for_inference(mobileconv.create_model("xsep_mobilenetv3_small_100"))
    assert fast.plan(images) == (3, 16 * 2**20 // (72 * 56 * 56 * 4))


def test_models_other_than_mobilenet_chunk_their_blocks(small_images):
    model = randomize(mobileconv.create_model("mixnet_s_cifar"))

    class Wrapped(nn.Module):  # a MobileNet's stem and stages in a model of another class
        def __init__(self, net):
            super().__init__()
            self.stem = nn.Sequential(net.conv_stem, net.bn1, net.act1)
            self.blocks = net.blocks
            self.net = net  # for its head

        def forward(self, x):
            net = self.net
            return net.forward_head(net.act2(net.bn2(net.conv_head(self.blocks(self.stem(x))))))

    wrapped = Wrapped(model)
    fast = optimize_for_inference(wrapped, micro_batch=False)
    assert micro_batch_stages(fast, batch(2, 3, 32), budget=2**16)
    assert type(fast.blocks) is MicroBatchedStages and type(fast) is Wrapped
    x = batch(5, 3, 32)
    assert fast.blocks.plan(fast.stem(x))[0] >= 1
    with torch.no_grad():
        assert_close_to_scale(fast(x), reference_output(model, x))


def test_off_switch_and_batch_statistics_keep_plain_stages():
    model = mobileconv.create_model("mixnet_s_cifar")
    assert type(optimize_for_inference(model, micro_batch=False)) is type(model)
    # a BN that normalises with batch statistics couples the images: no chunks
    fast = optimize_for_inference(model, micro_batch=False)
    fast.blocks[0].append(nn.BatchNorm2d(fast.blocks[0][-1].out_channels, track_running_stats=False).eval())
    assert not micro_batch_stages(fast, batch(2, 3, 32))
    assert type(fast) is type(model) and type(fast.blocks) is nn.Sequential


def test_scripted_model_runs_the_whole_batch(small_images):
    model, fast = small_budget_model("mixnet_s_cifar", budget=2**16)
    x = batch(5, 3, 32)
    assert fast.plan(x)[0] >= 1
    scripted = torch.jit.script(fast)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), fast(x), rtol=1e-5, atol=1e-5)
