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
from mobileconv.deploy.optimize import MicroBatchedStages, micro_batch_stages, optimize_for_inference

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
    prefix, chunk = fast.blocks.plan(fast.act1(fast.bn1(fast.conv_stem(x))))
    assert prefix >= 1 and 1 <= chunk < 7
    with torch.no_grad():
        got = fast(x)
        fast.blocks.budget = 2**40  # one chunk: the whole batch
        whole = fast(x)
    # the same maths; oneDNN may pick another summation order for another batch size
    assert_close_to_scale(got, whole, rel=1e-5)
    assert_close_to_scale(got, reference_output(model, x))


def test_only_the_planned_stages_run_in_chunks(small_images):
    _, fast = small_budget_model()
    counters = [CountCalls() for _ in fast.blocks]
    for stage, counter in zip(fast.blocks, counters):
        stage.append(counter)
    x = batch(7, 3, 64)
    prefix, chunk = fast.blocks.plan(fast.act1(fast.bn1(fast.conv_stem(x))))
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


def test_default_plan_for_mixnet_s_at_224():
    fast = optimize_for_inference(mobileconv.create_model("mixnet_s"))
    assert isinstance(fast.blocks, MicroBatchedStages)
    stem_out = torch.zeros(32, 16, 112, 112)
    # largest activations per image: stage 1 makes 96 x 112 x 112 floats (4.8 MB), stage 2 144 x 56 x 56
    # (1.8 MB), stage 3 240 x 28 x 28 (0.75 MB, under 1 MiB): stages 0-2 in chunks of 16 MiB // 4.8 MB = 3
    assert fast.blocks.peak_ratios[1] == pytest.approx(6.0)
    assert fast.blocks.plan(stem_out) == (3, 16 * 2**20 // (96 * 112 * 112 * 4))
    assert fast.blocks.plan(stem_out[:1]) == (0, 1)


def test_off_switch_and_batch_statistics_keep_plain_stages():
    model = mobileconv.create_model("mixnet_s_cifar")
    assert type(optimize_for_inference(model, micro_batch=False).blocks) is nn.Sequential
    # a BN that normalises with batch statistics couples the images: no chunks
    fast = optimize_for_inference(model, micro_batch=False)
    fast.blocks[0].append(nn.BatchNorm2d(fast.blocks[0][-1].out_channels, track_running_stats=False).eval())
    assert not micro_batch_stages(fast, batch(2, 3, 32))
    assert type(fast.blocks) is nn.Sequential


def test_scripted_model_runs_the_whole_batch(small_images):
    model, fast = small_budget_model("mixnet_s_cifar", budget=2**16)
    x = batch(5, 3, 32)
    assert fast.blocks.plan(fast.act1(fast.bn1(fast.conv_stem(x))))[0] >= 1
    scripted = torch.jit.script(fast)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), fast(x), rtol=1e-5, atol=1e-5)
