"""mobileconv.engine.bench and `mobileconv bench`: what is measured and reported (never how fast).

Tiny runs only (a few calls at 32 px); nothing here asserts on timings.
"""
from __future__ import annotations

import copy
import json
import re
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import mobileconv
from mobileconv.cli import main
from mobileconv.deploy.onednn import OneDNNConv2d
from mobileconv.engine import bench
from mobileconv.layers import set_layer_impl

TINY = dict(batch_size=2, image_size=32, rounds=2, iters=1, warmup=1, threads=1)


# --- configuration and errors ---------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="eval"), "mode must be one of ('infer', 'train'), got 'eval'"),
    (dict(device="tpu"), "device must be one of ('cpu', 'cuda'), got 'tpu'"),
    (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
    (dict(rounds=0), "rounds must be an integer >= 1, got 0"),
    (dict(warmup=-1), "warmup must be an integer >= 0, got -1"),
    (dict(image_size=4), "image_size must be an integer >= 8 or None, got 4"),
    (dict(threads=0), "threads must be an integer >= 1 or None, got 0"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        bench.BenchConfig(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is absent")
def test_cuda_without_cuda_is_a_clear_error(capsys):
    message = r"device 'cuda' \(--device cuda\) was requested but CUDA is not available"
    with pytest.raises(ValueError, match=message):
        bench.check_device("cuda")
    assert main(["bench", "mixnet_s", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert re.search("mobileconv bench: error: " + message, err)


def test_unknown_variant_and_model(capsys):
    with pytest.raises(ValueError, match=r"variant 'fast' is not defined for mode='infer'; expected one of"):
        bench.check_variants("infer", ["fast"])
    assert main(["bench", "mixnet_s", "no_such_net"]) == 2
    assert "unknown model(s) no_such_net" in capsys.readouterr().err


def test_compile_without_warm_up_is_refused(capsys):
    """The first call of a compiled model compiles (seconds to minutes): it must be a warm-up call, never timed."""
    assert main(["bench", "mixnet_s", "--compile", "--warmup", "0"]) == 2
    assert "--compile needs --warmup 1 or more" in capsys.readouterr().err


def test_onnxruntime_backend_is_inference_only(capsys):
    assert main(["bench", "mixnet_s", "--backend", "onnxruntime", "--mode", "train"]) == 2
    assert "--backend onnxruntime times inference only" in capsys.readouterr().err


def test_compile_with_only_the_onnxruntime_backend_is_refused(capsys):
    """Nothing would be compiled, yet the result recorded compile: true."""
    assert main(["bench", "mixnet_s", "--backend", "onnxruntime", "--compile"]) == 2
    assert "with --backend onnxruntime alone nothing is compiled" in capsys.readouterr().err


def test_onnxruntime_backend_refuses_amp(capsys):
    # it would time the float32 ONNX model beside bfloat16 torch variants, unlabelled
    assert main(["bench", "mixnet_s", "--backend", "torch,onnxruntime", "--amp"]) == 2
    assert "--backend onnxruntime runs the float32 ONNX model; leave out --amp" in capsys.readouterr().err
    with pytest.raises(ValueError, match="the onnxruntime variant runs the float32 ONNX model"):
        bench.build_variant(mobileconv.create_model("mixnet_s_cifar"), "onnxruntime",
                            bench.BenchConfig(device="cpu", amp=True), torch.zeros(1, 3, 32, 32))


# --- the pieces -----------------------------------------------------------------------------------

def test_percentile_matches_numpy():
    values = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6, 5.0]
    for q in (0, 10, 50, 90, 100):
        assert bench.percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_count_macs_is_the_true_count_not_the_fused_one():
    model = mobileconv.create_model("mixnet_s")
    macs = bench.count_macs(model, 224)
    assert macs == pytest.approx(239.2e6, rel=5e-4)  # SPEC.md: MixNet-S, 239.2M MACs
    with torch.no_grad(), FlopCounterMode(display=False) as fc:  # the fused kernels count their zero taps
        set_layer_impl(model, "fast").eval()(torch.zeros(1, 3, 224, 224))
    assert fc.get_total_flops() // 2 > macs


def test_peak_memory_sees_the_tensors_a_call_allocates():
    mib = 2**20

    def step(batch):
        a = torch.ones(mib // 4)        # 1 MiB
        b = torch.ones(3 * mib // 4)    # + 3 MiB live at once
        del a, b
        c = torch.ones(mib // 2)        # 2 MiB, after the others are freed
        return c.sum()

    peak = bench.peak_memory_mb(step, (), "cpu")
    assert 4.0 <= peak < 4.1


def test_num_threads_is_restored():
    before = torch.get_num_threads()
    with bench.num_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_train_step_is_one_sgd_step():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    expected = {k: v.clone() for k, v in net.named_parameters()}
    # the oracle: first SGD step with momentum 0.9 is w - lr * grad
    loss = torch.nn.functional.cross_entropy(net(x), y)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    for (k, w), g in zip(net.named_parameters(), grads):
        expected[k] = w.detach() - bench.TRAIN_LR * g
    step = bench.make_train_step(net, bench.BenchConfig(mode="train"))
    step((x, y))
    for k, w in net.named_parameters():
        torch.testing.assert_close(w.detach(), expected[k])


def test_variants_work_on_copies():
    model = mobileconv.create_model("mixnet_s_cifar", num_classes=10)
    config = bench.BenchConfig(mode="train", **TINY)
    batch = bench.make_batch(config, 32, 3, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for variant in ("fast", "reference"):
        assert torch.isfinite(bench.build_variant(model, variant, config, batch[0])(batch))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- benchmark_model / format ---------------------------------------------------------------------

@pytest.mark.parametrize("mode, variants", [("infer", ["optimized", "reference", "reference_cl"]),
                                            ("train", ["fast", "reference"])])
def test_benchmark_model_reports_every_variant(mode, variants):
    model = mobileconv.create_model("mixnet_s_cifar")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    threads = torch.get_num_threads()
    result = bench.benchmark_model(model, bench.BenchConfig(mode=mode, **TINY), variants, name="tiny")
    assert torch.get_num_threads() == threads
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert (result.model, result.mode, result.batch_size, result.image_size) == ("tiny", mode, 2, 32)
    assert result.macs_per_image == bench.count_macs(model, 32)
    assert list(result.measurements) == variants
    for name, m in result.measurements.items():
        assert len(m.round_images_per_s) == TINY["rounds"]
        assert m.images_per_s == pytest.approx(statistics.median(m.round_images_per_s))
        assert 0 < m.latency_p50_ms <= m.latency_p90_ms
        assert m.peak_memory_mb is not None and m.peak_memory_mb > 0
        assert result.macs_per_s(name) == pytest.approx(result.macs_per_image * m.images_per_s)
        assert (m.speedup is None) == (name == "reference")
    table = bench.format_table([result])
    lines = table.splitlines()
    assert lines[0].startswith("| model") and len(lines) == 2 + len(variants)
    assert all(f"| {v} " in table for v in variants)


@pytest.mark.slow
def test_bench_compile_times_the_compiled_model_beside_the_reference(capsys):
    code = main(["bench", "mobilenetv3_small_100_cifar", "--compile", "--compare-reference", "--batch-size", "2",
                 "--rounds", "2", "--iters", "1", "--warmup", "1", "--threads", "1", "--format", "json"])
    assert code == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["compile"] is True and set(result["measurements"]) == {"compiled", "reference"}
    compiled = result["measurements"]["compiled"]
    assert compiled["speedup"] > 0 and len(compiled["round_images_per_s"]) == 2
    assert compiled["peak_memory_mb"] is None  # the profiler sees none of an Inductor graph's buffers
    assert result["measurements"]["reference"]["peak_memory_mb"] > 0


def test_bench_cli_json(capsys):
    code = main(["bench", "mixnet_s_cifar", "xsep_mobilenetv3_small_100_cifar", "--batch-size", "2",
                 "--rounds", "1", "--iters", "1", "--warmup", "0", "--threads", "1", "--compare-reference",
                 "--no-memory", "--format", "json"])
    assert code == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in results] == ["mixnet_s_cifar", "xsep_mobilenetv3_small_100_cifar"]
    for r in results:
        assert r["image_size"] == 32 and r["threads"] == 1
        assert set(r["measurements"]) == {"optimized", "reference"}
        opt = r["measurements"]["optimized"]
        assert opt["speedup"] > 0 and opt["peak_memory_mb"] is None
        assert opt["gmacs_per_s"] == pytest.approx(r["macs_per_image"] * opt["images_per_s"] / 1e9)


def test_onnxruntime_variant_runs_the_optimised_model():
    pytest.importorskip("onnxruntime")
    model = mobileconv.create_model("mobilenetv3_small_100_cifar")
    config = bench.BenchConfig(mode="infer", **TINY)
    batch = bench.make_batch(config, 32, 3, 1000)
    ort = bench.build_variant(model, "onnxruntime", config, batch[0])
    eager = bench.build_variant(model, "reference", config, batch[0])
    a, b = ort(batch), eager(batch)
    assert a.shape == b.shape == (2, 10)  # a _cifar form has 10 classes by default
    assert (a - b).abs().max() <= 1e-4 * max(1.0, b.abs().max().item())


def test_cli_documented_options_parse():
    """Every option the README's speed section and the issue name is accepted by the parser."""
    from mobileconv.cli import build_parser

    args = build_parser().parse_args(
        ["bench", "mixnet_s", "mobilenetv3_large_100", "--mode", "train", "--batch-size", "32", "--image-size", "224",
         "--threads", "2", "--device", "cpu", "--amp", "--compile", "--compare-reference", "--format", "table",
         "--backend", "torch", "--rounds", "3", "--iters", "1", "--warmup", "1", "--no-memory"])
    assert args.models == ["mixnet_s", "mobilenetv3_large_100"] and args.mode == "train" and args.amp


def _speed_section() -> str:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    return readme.split("<!-- section:speed -->")[1].split("<!-- /section:speed -->")[0]


def test_readme_speed_commands_and_options_parse(capsys):
    """The README's `mobileconv bench` lines parse, and every --option it names exists (docs cannot drift)."""
    from mobileconv.cli import build_parser

    parser = build_parser()
    section = _speed_section()
    commands = [line.split()[1:] for line in section.splitlines() if line.startswith("mobileconv bench")]
    assert len(commands) >= 3
    for argv in commands:
        assert parser.parse_args(argv).command == "bench"
    bench_parser = parser._subparsers._group_actions[0].choices["bench"]
    bench_options = {opt for action in bench_parser._actions for opt in action.option_strings}
    with pytest.raises(SystemExit):
        _load_benchmark_script().parse_args(["--help"])
    script_options = set(re.findall(r"--[a-z][a-z-]+", capsys.readouterr().out))
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", section))
    assert "--heap-malloc" in named and "--heap-malloc" in script_options
    assert named <= bench_options | script_options, named - bench_options - script_options


def _load_benchmark_script(name: str = "mixconv_speed"):
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_torch_and_onnxruntime_backends_are_timed_side_by_side(capsys):
    rc = main(["bench", "mobilenetv3_small_100_cifar", "--batch-size", "2", "--image-size", "32",
               "--backend", "torch,onnxruntime", "--compare-reference", "--rounds", "2", "--iters", "1",
               "--warmup", "1", "--no-memory", "--format", "json"])
    assert rc == 0
    (result,) = json.loads(capsys.readouterr().out)
    text = json.dumps(result)
    for variant in ("optimized", "onnxruntime", "reference"):
        assert f'"{variant}"' in text, f"variant {variant} missing from {text[:300]}"


def test_unknown_backend_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "mixnet_s", "--backend", "tensorrt"])
    assert "comma-separated list" in capsys.readouterr().err


def test_cpu_steps_script_writes_its_table(tmp_path):
    """benchmarks/cpu_steps.py: a smoke run (tiny images, one round) writes one row per model and batch size."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "cpu_steps.py"
    spec = importlib.util.spec_from_file_location("cpu_steps", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--models", "mixnet_s_cifar", "--batch-sizes", "1", "4", "--image-size", "32",
                        "--rounds", "1", "--out", str(tmp_path)]) == 0
    rows = [line for line in (tmp_path / "cpu_steps.md").read_text().splitlines() if line.startswith("| mixnet_s_cifar")]
    assert [row.split("|")[2].strip() for row in rows] == ["1", "4"]
    assert all(len(re.findall(r"x\d+\.\d\d", row)) == 2 for row in rows)


@pytest.mark.slow
def test_mixconv_speed_script_writes_its_report(tmp_path):
    """benchmarks/mixconv_speed.py: a smoke run writes the targets table, one row per timed variant, and the chart."""
    module = _load_benchmark_script()
    assert module.main(["--quick", "--same-process", "--models", "mobilenetv3_small_100_cifar", "--scenarios",
                        "latency", "tax", "--image-size", "32", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "mixconv_speed_quick_latency_tax.md").read_text()
    targets = [line for line in report.splitlines() if line.startswith("| latency | mobilenetv3_small_100_cifar")]
    assert [row.split("|")[3].strip() for row in targets] == ["optimized", "compiled"]
    payload = json.loads((tmp_path / "mixconv_speed_quick_latency_tax.json").read_text())
    assert [(r["variant"], r["speedup"] > 0) for r in payload["speedups"]] == [("optimized", True), ("compiled", True)]
    assert set(payload["tax"]["variants"]) == {"optimized", "compiled"}
    assert len(re.findall(r"^\| tax \| .* \| (optimized|compiled) \| \d+\.\d\d \|", report, re.M)) == 2
    assert (tmp_path / "mixconv_speed_quick_latency_tax.png").read_bytes()[:4] == b"\x89PNG"


def test_mixnet_gap_what_if_variants_compute_what_they_say():
    """benchmarks/mixnet_gap.py: `relu` swaps every swish for ReLU, `k3` keeps the centre 3x3 of each mixed kernel."""
    gap = _load_benchmark_script("mixnet_gap")
    x = torch.randn(2, 3, 32, 32)
    nets = gap.build_variants("mixnet_s", x[:1])
    assert list(nets) == list(gap.VARIANTS)
    published, relu, k3 = nets["as published"], nets["relu"], nets["k3"]
    assert not any(type(m) is nn.SiLU for m in relu.modules())
    assert any(type(m) is nn.SiLU for m in published.modules())
    name = "blocks.4.1.conv_dw"  # MixConv k3.5.7.9 in mixnet_s
    full, cropped = published.get_submodule(name), k3.get_submodule(name)
    assert full.kernel_size == (9, 9) and cropped.kernel_size == (3, 3)
    h = torch.randn(2, full.in_channels, 14, 14).to(memory_format=torch.channels_last)
    expected = F.silu(F.conv2d(h, full.weight[:, :, 3:6, 3:6], full.bias, 1, 1, 1, full.groups))  # plain-op oracle
    with torch.inference_mode():
        torch.testing.assert_close(cropped(h), expected, rtol=1e-4, atol=1e-5)
        out = published(x)
        for variant in (relu, k3):  # the logits of random weights are tiny: compare relative to their scale
            assert (variant(x) - out).abs().max() > 1e-2 * out.abs().max()
    with pytest.raises(ValueError, match="has no MixConv with mixed kernel sizes"):
        gap.build_variants("mobilenetv3_small_100", x[:1])


def test_mixnet_gap_script_writes_its_report(tmp_path):
    gap = _load_benchmark_script("mixnet_gap")
    assert gap.main(["--batch-size", "2", "--image-size", "32", "--rounds", "1", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "mixnet_gap.json").read_text())
    variants = [r["variant"] for r in payload["rows"]]
    assert variants == [f"mixnet_s, {v}" for v in gap.VARIANTS] + ["mobilenetv3_large_100"]
    assert payload["rows"][-1]["parity"] == pytest.approx(1.0)
    assert list(payload["post_op_ms"]) == list(gap.POST_OPS) and all(v > 0 for v in payload["post_op_ms"].values())
    assert all(r["parity"] > 0 and r["images_per_s"] > 0 for r in payload["rows"])
    report = (tmp_path / "mixnet_gap.md").read_text()
    assert len(re.findall(r"^\| mixnet_s, .* \| \d+\.\d\d \|$", report, re.M)) == len(gap.VARIANTS)
    assert (tmp_path / "mixnet_gap.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(shutil.which("g++") is None, reason="benchmarks/depthwise_kernel.py builds its kernel with g++")
@pytest.mark.parametrize("act", [nn.Identity(), nn.ReLU(), nn.SiLU(), nn.Hardswish()])
def test_depthwise_kernel_prototype_matches_per_group_convs(tmp_path, act):
    """benchmarks/mixed_depthwise.cpp against plain per-group F.conv2d.

    Covers groups that end inside a vector, stride 2, maps smaller than a kernel, and output rows of
    every block width the kernel picks (8, 7 and 4 pixels, and one pixel at a time below 4).
    """
    dw = _load_benchmark_script("depthwise_kernel")
    lib = dw.build_library(tmp_path)
    torch.manual_seed(0)
    for splits, kernels, stride, size in [([20, 16, 40], [3, 5, 7], 1, 13), ([32, 17], [9, 11], 2, 6),
                                          ([16, 16], [3, 5], 2, 23), ([16, 24], [1, 5], 1, 12),
                                          ([24, 16], [3, 7], 1, 5), ([16, 16], [5, 3], 1, 1), ([16], [3], 2, 20)]:
        c, big = sum(splits), max(kernels)
        weights = [torch.randn(n, 1, k, k) for n, k in zip(splits, kernels)]
        fused = nn.Conv2d(c, c, big, stride, (big - 1) // 2, groups=c)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([F.pad(w, [(big - k) // 2] * 4) for w, k in zip(weights, kernels)]))
        fused = OneDNNConv2d.from_conv(fused, act)
        x = torch.randn(3, c, size, size + 2).contiguous(memory_format=torch.channels_last)
        parts = torch.split(x, splits, 1)
        expected = act(torch.cat([F.conv2d(p, w, None, stride, (k - 1) // 2, 1, n)
                                  for p, w, k, n in zip(parts, weights, kernels, splits)], 1) + fused.bias[:, None, None])
        got = dw.MixedDepthwise(lib, fused, kernels, splits)(x)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=f"a channels_last float32 input with {c} channels"):
        dw.MixedDepthwise(lib, fused, kernels, splits)(x.contiguous())


@pytest.mark.parametrize("name", ["mixnet_s", "mixnet_m"])
def test_per_group_tensors_prototype_computes_the_eval_model(name):
    """benchmarks/per_group_tensors.py: each block with one tensor per depthwise group against the eval-mode block.

    MixNet-S and -M have blocks whose depthwise groups straddle the two groups of their 1x1 convs.
    """
    pg = _load_benchmark_script("per_group_tensors")
    torch.manual_seed(0)
    model = mobileconv.create_model(name).eval()
    for m in model.modules():  # BN statistics away from the identity, so that folding them matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    blocks = pg.mixed_blocks(model)
    optimized = mobileconv.optimize_for_inference(model, example_input=torch.randn(1, 3, 64, 64))
    assert len(blocks) >= 10
    with torch.inference_mode():
        for block_name, mixconv in blocks.items():
            block = model.get_submodule(block_name)
            ours = pg.PerGroupInvertedResidual(optimized.get_submodule(block_name), mixconv)
            x = torch.randn(2, block.in_channels, 9, 11).contiguous(memory_format=torch.channels_last)
            expected = block(x.clone())
            torch.testing.assert_close(ours(x.clone()), expected, rtol=0, atol=1e-5 * expected.abs().max().item(),
                                       msg=lambda m, n=block_name: f"{n}: {m}")
        swapped = pg.swap_blocks(copy.deepcopy(optimized), blocks)
        x = torch.randn(2, 3, 64, 64)
        torch.testing.assert_close(swapped(x), model(x), rtol=0, atol=1e-5)


def test_benchmarks_readme_names_real_scripts_targets_and_options(capsys):
    """benchmarks/README.md cannot drift: its scripts exist, its `make` targets exist, mixconv_speed takes its options."""
    root = Path(__file__).resolve().parents[2]
    text = (root / "benchmarks" / "README.md").read_text()
    scripts = set(re.findall(r"`(\w+\.(?:py|cpp))`", text))
    assert {"mixconv_speed.py", "cpu_steps.py", "mixnet_gap.py", "train_malloc.py", "depthwise_kernel.py",
            "mixed_depthwise.cpp"} <= scripts
    assert all((root / "benchmarks" / s).is_file() for s in scripts), scripts
    makefile = (root / "Makefile").read_text()
    for target in re.findall(r"`make ([\w-]+)`", text):
        assert re.search(rf"^{target}:", makefile, re.M), f"no make target {target}"
    with pytest.raises(SystemExit):
        _load_benchmark_script().parse_args(["--help"])
    assert {"--quick", "--heap-malloc"} <= set(re.findall(r"--[a-z][a-z-]+", capsys.readouterr().out))


def test_train_malloc_script_writes_its_report(tmp_path):
    """benchmarks/train_malloc.py: one tiny round writes a row per model with both settings' figures and the chart."""
    script = _load_benchmark_script("train_malloc")
    assert script.main(["--models", "mobilenetv3_small_100_cifar", "--batch-size", "2", "--image-size", "32",
                        "--rounds", "1", "--warmup", "1", "--steps", "1", "--out", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "train_malloc.json").read_text())["rows"]
    assert row["model"] == "mobilenetv3_small_100_cifar" and row["speedup"] > 0
    assert row["ms_per_step_default"] > 0 and row["ms_per_step_heap"] > 0 and row["max_rss_mb_heap"] > 0
    assert "| mobilenetv3_small_100_cifar |" in (tmp_path / "train_malloc.md").read_text()
    assert (tmp_path / "train_malloc.png").read_bytes()[:4] == b"\x89PNG"


def test_grad_checkpointing_script_writes_its_report(tmp_path):
    """benchmarks/grad_checkpointing.py: one tiny round writes a row per model, the checkpointed step the leaner."""
    script = _load_benchmark_script("grad_checkpointing")
    assert script.main(["--models", "mixnet_s_cifar", "--batch-size", "4", "--image-size", "32", "--rounds", "1",
                        "--warmup", "0", "--out", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "grad_checkpointing.json").read_text())["rows"]
    assert row["model"] == "mixnet_s_cifar" and 0 < row["peak_mib_checkpointed"] < row["peak_mib_plain"]
    assert row["memory_ratio"] == pytest.approx(row["peak_mib_checkpointed"] / row["peak_mib_plain"])
    assert row["ms_per_step_plain"] > 0 and row["time_ratio"] > 0
    assert "| mixnet_s_cifar |" in (tmp_path / "grad_checkpointing.md").read_text()
    assert (tmp_path / "grad_checkpointing.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_bench_heap_malloc_option_runs(monkeypatch, capsys):
    from mobileconv.engine import malloc

    calls = []
    monkeypatch.setattr(malloc, "keep_large_allocations_on_heap", lambda: calls.append(1) or True)
    assert main(["bench", "mobilenetv3_small_100_cifar", "--heap-malloc", "--batch-size", "2", "--image-size", "32",
                 "--rounds", "1", "--iters", "1", "--warmup", "1", "--no-memory", "--format", "json"]) == 0
    assert calls == [1] and json.loads(capsys.readouterr().out)[0]["model"] == "mobilenetv3_small_100_cifar"


def test_bench_grad_checkpointing_keeps_less_for_the_backward_pass(capsys):
    common = ["bench", "mixnet_s_cifar", "--mode", "train", "--batch-size", "8", "--image-size", "32", "--rounds", "1",
              "--iters", "1", "--warmup", "1", "--format", "json"]
    peaks = {}
    for flag in ([], ["--grad-checkpointing"]):
        assert main([*common, *flag]) == 0
        (result,) = json.loads(capsys.readouterr().out)
        assert result["grad_checkpointing"] == bool(flag)
        peaks[bool(flag)] = result["measurements"]["fast"]["peak_memory_mb"]
    assert 0 < peaks[True] < peaks[False] * 0.8
    with pytest.raises(ValueError, match="grad_checkpointing saves memory in training only"):
        bench.BenchConfig(grad_checkpointing=True)


def test_more_threads_than_cpus_is_refused(capsys):
    cpus = bench.available_cpus()
    with pytest.raises(ValueError, match=rf"threads must be at most {cpus} \(the CPUs this process may use\)"):
        bench.BenchConfig(threads=cpus + 1)
    # torch's thread pool crashed the process (segmentation fault) at --threads 100000; refused when the command line
    # is read, before any model is built
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "mobilenetv3_small_100_cifar", "--threads", "100000"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (f"mobileconv bench: error: argument --threads: expected a number of threads from "
                                    f"1 to {cpus} (the CPUs this process may use), got '100000'")


@pytest.mark.parametrize("option", [["--batch-size", "100000000000"], ["--image-size", "10000000", "--batch-size", "1"]])
def test_sizes_too_large_for_memory_are_one_line_errors(option, capsys):
    # 1.2 PB of input, beyond any address space: the allocation fails at once, whatever the overcommit policy
    code = main(["bench", "mobilenetv3_small_100_cifar", "--rounds", "1", "--iters", "1", "--warmup", "0",
                 "--threads", "1", *option])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("mobileconv bench: error: not enough memory for batches of ")
    assert err.count("\n") == 1


def test_compare_models_reports_the_second_models_speedup_over_the_first(monkeypatch):
    """The rows and the ratio's direction, from fixed timings (nothing here asserts on real ones)."""
    seconds = {"slow": 0.004, "fast": 0.001}
    calls = []

    def fixed_times(steps, batch, config, progress=False, desc=""):
        calls.append((tuple(steps), batch[0].shape, config.iters, config.rounds))
        return {name: [[seconds[name]] * config.iters for _ in range(config.rounds)] for name in steps}

    monkeypatch.setattr(bench, "time_variants", fixed_times)
    rows = bench.compare_models({"slow": nn.Identity(), "fast": nn.Identity()}, [1, 3], 8, rounds=2, progress=False)
    assert rows == [{"batch_size": 1, "slow_ms": 4.0, "fast_ms": 1.0, "speedup": 4.0},
                    {"batch_size": 3, "slow_ms": 4.0, "fast_ms": 1.0, "speedup": 4.0}]
    assert calls == [(("slow", "fast"), (1, 3, 8, 8), 20, 2), (("slow", "fast"), (3, 3, 8, 8), 2, 2)]
    with pytest.raises(ValueError, match="compare_models takes two models, got 1"):
        bench.compare_models({"one": nn.Identity()}, [1], 8, rounds=1)


def test_write_report_writes_markdown_and_json(tmp_path):
    out = tmp_path / "new" / "folder"
    bench.write_report(out, "stem", "# report", {"rows": [1.5], "name": "x"})
    assert (out / "stem.md").read_text() == "# report\n"
    assert json.loads((out / "stem.json").read_text()) == {"rows": [1.5], "name": "x"}
    env = bench.script_environment("x.py", ["--a", "1"], threads=2)
    assert env["command"] == "python benchmarks/x.py --a 1" and env["threads"] == 2 and env["torch"] == torch.__version__
