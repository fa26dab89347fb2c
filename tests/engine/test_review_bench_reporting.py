"""`mobileconv bench` reports: MACs against an independent count, the JSON and table numbers against
each other, the speed-up against the per-round images/s, autocast, one-line errors. Never timings.

Tiny runs only (batch 1, 32 px, 2 rounds, 1 thread).
"""
from __future__ import annotations

import json
import statistics

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mobileconv
from mobileconv.cli import main
from mobileconv.engine import bench
from mobileconv.layers import set_layer_impl

MODEL = "mobilenetv3_small_100_cifar"
TINY_ARGS = ["--image-size", "32", "--batch-size", "1", "--threads", "1", "--rounds", "2", "--iters", "1",
             "--warmup", "1"]


def conv_linear_macs(name: str, size: int) -> int:
    """Multiply-adds of one image, written out per layer: a conv makes ``out.numel() * in/groups * kh * kw``,
    a linear layer ``out.numel() * in_features`` (the split / concat reference, so no zero taps)."""
    model = set_layer_impl(mobileconv.create_model(name), "reference").eval()
    total = 0

    def count(module, args, out):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += out.numel() * module.in_channels // module.groups * kh * kw
        else:
            total += out.numel() * module.in_features

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(count)
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return total


@pytest.mark.parametrize("name, size", [("mixnet_s", 48), ("mobilenetv3_small_100", 64)])
def test_macs_are_the_multiply_adds_of_every_conv_and_linear_layer(name, size):
    assert bench.count_macs(mobileconv.create_model(name), size) == conv_linear_macs(name, size)


def test_json_numbers_follow_from_the_counted_macs_and_the_rounds(capsys):
    assert main(["bench", MODEL, *TINY_ARGS, "--compare-reference", "--format", "json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert (result["batch_size"], result["image_size"], result["threads"]) == (1, 32, 1)
    assert result["macs_per_image"] == conv_linear_macs(MODEL, 32)
    opt, ref = result["measurements"]["optimized"], result["measurements"]["reference"]
    for m in (opt, ref):
        assert len(m["round_images_per_s"]) == 2
        assert m["images_per_s"] == pytest.approx(statistics.median(m["round_images_per_s"]))
        assert m["gmacs_per_s"] == pytest.approx(result["macs_per_image"] * m["images_per_s"] / 1e9)
    ratios = [a / b for a, b in zip(opt["round_images_per_s"], ref["round_images_per_s"])]
    assert opt["speedup"] == pytest.approx(statistics.median(ratios)) and ref["speedup"] is None


def test_table_columns_agree_with_each_other(capsys):
    assert main(["bench", MODEL, *TINY_ARGS, "--compare-reference"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]
    assert [r["variant"] for r in rows] == ["optimized", "reference"]
    macs = conv_linear_macs(MODEL, 32)
    for r in rows:
        img_s = float(r["img/s"])  # printed with one decimal
        assert float(r["GMAC/s"]) == pytest.approx(macs * img_s / 1e9, abs=0.006 + macs * 0.05 / 1e9)
        assert float(r["peak MiB"]) > 0  # a call allocates activations: a small peak must not print as "0"
    assert rows[0]["speed-up"].startswith("x") and rows[1]["speed-up"] == "-"


@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("mode, variant", [("infer", "optimized"), ("infer", "reference"), ("train", "fast")])
def test_amp_runs_the_timed_model_under_bfloat16_autocast_on_cpu(mode, variant, amp, monkeypatch):
    config = bench.BenchConfig(mode=mode, batch_size=2, image_size=32, amp=amp)
    batch = bench.make_batch(config, 32, 3, 10)
    step = bench.build_variant(mobileconv.create_model(MODEL), variant, config, batch[0])
    dtypes = []
    linear = F.linear

    def recording_linear(*args, **kwargs):  # the classifier's (and squeeze-excites') matrix products
        out = linear(*args, **kwargs)
        dtypes.append(out.dtype)
        return out

    monkeypatch.setattr(F, "linear", recording_linear)
    step(batch)
    assert dtypes and set(dtypes) == {torch.bfloat16 if amp else torch.float32}


def test_an_image_size_below_the_models_minimum_is_a_one_line_error(capsys):
    code = main(["bench", "mixnet_s", "--image-size", "16", "--batch-size", "1", "--rounds", "1", "--iters", "1",
                 "--warmup", "0", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("mobileconv bench: error: ") and err.count("\n") == 1
    assert "16" in err
