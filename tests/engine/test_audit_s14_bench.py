"""Audit of `mobileconv bench` against independent oracles: the same weights in every variant, the rounds and
percentiles against numpy on a fake clock, a train step of batch 1 that BatchNorm cannot take. Never timings.

Tiny runs only (32 px, batch 1-2, 1 thread).
"""
from __future__ import annotations

import statistics
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import mobileconv
from mobileconv.cli import main
from mobileconv.engine import bench

MODEL = "mixnet_s_cifar"


def _model_with_bn_statistics() -> nn.Module:
    torch.manual_seed(0)
    model = mobileconv.create_model(MODEL)
    with torch.no_grad():  # away from the identity, so that BN folding (or not) shows in the outputs
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


def test_inference_variants_compute_the_same_function_as_the_eval_model():
    model = _model_with_bn_statistics()
    config = bench.BenchConfig(mode="infer", batch_size=2, image_size=32, threads=1)
    batch = bench.make_batch(config, 32, 3, 10)
    with torch.no_grad():  # the oracle: the registered model itself, eval mode, default impl
        expected = model.eval()(batch[0])
    for variant in ("optimized", "eager", "reference", "reference_cl"):
        got = bench.build_variant(model, variant, config, batch[0])(batch)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4 * expected.abs().max().item(),
                                   msg=lambda m, v=variant: f"{v}: {m}")


def test_train_variants_take_their_first_step_from_the_same_weights():
    model = _model_with_bn_statistics()
    config = bench.BenchConfig(mode="train", batch_size=2, image_size=32, threads=1)
    batch = bench.make_batch(config, 32, 3, 10)
    steps = {v: bench.build_variant(model, v, config, batch[0]) for v in ("fast", "reference", "reference_cl")}
    losses = {}
    for variant, step in steps.items():  # each after the others' steps: none may start from weights they moved
        torch.manual_seed(1)  # the same drop-path masks
        losses[variant] = step(batch).item()
    torch.manual_seed(1)
    oracle = nn.functional.cross_entropy(model.train()(batch[0]), batch[1]).item()
    assert losses == pytest.approx({v: oracle for v in steps}, rel=1e-4)


def test_rounds_alternate_warm_up_is_untimed_and_latency_is_numpys_percentile(monkeypatch):
    """A fake clock that only the steps advance: warm-up calls take 1000 s, so any of them timed would show."""
    config = bench.BenchConfig(mode="infer", batch_size=2, image_size=32, threads=1, warmup=2, rounds=3, iters=2,
                               memory=False)
    durations = {"optimized": [0.5, 0.1, 0.3, 0.7, 0.2, 0.9], "reference": [1.5, 1.1, 2.0, 1.2, 1.9, 1.3]}
    clock, log = SimpleNamespace(now=0.0), []

    def fake_variant(model, variant, config, example):
        calls = iter([1000.0] * config.warmup + durations[variant])

        def step(batch):
            log.append(variant)
            clock.now += next(calls)
        return step

    monkeypatch.setattr(bench, "build_variant", fake_variant)
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    result = bench.benchmark_model(mobileconv.create_model(MODEL), config, ["optimized", "reference"])
    assert log == ["optimized"] * 2 + ["reference"] * 2 + (["optimized"] * 2 + ["reference"] * 2) * 3
    for variant, seconds in durations.items():
        m = result.measurements[variant]
        rounds = [seconds[i:i + 2] for i in (0, 2, 4)]
        assert m.round_images_per_s == pytest.approx([4 / sum(r) for r in rounds])
        assert m.images_per_s == pytest.approx(statistics.median(4 / sum(r) for r in rounds))
        assert m.latency_p50_ms == pytest.approx(np.percentile(seconds, 50) * 1e3)
        assert m.latency_p90_ms == pytest.approx(np.percentile(seconds, 90) * 1e3)
    ref = [sum(durations["reference"][i:i + 2]) for i in (0, 2, 4)]
    opt = [sum(durations["optimized"][i:i + 2]) for i in (0, 2, 4)]
    assert result.measurements["optimized"].speedup == pytest.approx(statistics.median(r / o for r, o in zip(ref, opt)))


def test_train_batch_of_one_that_batch_norm_cannot_take_is_a_one_line_error_naming_the_fix(capsys):
    # mixnet_s at 32 px ends in a 1x1 map before its last BatchNorm: one value per channel at batch 1. The error was
    # torch's "Expected more than 1 value per channel when training", which names neither option.
    threads = torch.get_num_threads()
    code = main(["bench", "mixnet_s", "--mode", "train", "--batch-size", "1", "--image-size", "32", "--rounds", "1",
                 "--iters", "1", "--warmup", "1", "--threads", "1", "--no-memory"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("mobileconv bench: error: ") and err.count("\n") == 1, err
    assert "--batch-size 2 or more" in err and "--image-size" in err and "BatchNorm" in err
    assert torch.get_num_threads() == threads
