"""The benchmark scripts refuse bad options in one line (exit code 2) before anything runs, and
``mixconv_speed.py --quick`` keeps the sizes given on the command line."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def refuse(name: str, argv: list[str], capsys) -> str:
    """``main(argv)`` (or ``parse_args``) of a script must stop with argparse's exit code 2; its last stderr line."""
    module = load(name)
    entry = module.parse_args if hasattr(module, "parse_args") else module.main
    with pytest.raises(SystemExit) as info:
        entry(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("name, argv, expected", [
    ("mixconv_speed", ["--models", "mixnet_sx"], "expected a registered model name, got 'mixnet_sx'; did you mean"),
    ("mixconv_speed", ["--threads", "0"], "expected a number of threads from 1 to"),
    ("mixconv_speed", ["--threads", "100000"], "expected a number of threads from 1 to"),
    ("mixconv_speed", ["--rounds", "0"], "--rounds: expected a positive integer, got '0'"),
    ("mixconv_speed", ["--batch-size", "-1"], "--batch-size: expected a positive integer"),
    ("mixconv_speed", ["--models", "mixnet_s_cifar", "--scenarios", "infer", "--image-size", "4"],
     "--image-size 4 is too small for mixnet_s_cifar: it needs at least 8 pixels"),
    ("mixconv_speed", ["--models", "mixnet_s_cifar", "--image-size", "16"], "the tax scenario times mixnet_s"),
    ("mixconv_speed", ["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    ("mixconv_speed", ["--device", "cuda", "--heap-malloc"], "--heap-malloc is about the CPU allocator"),
    ("cpu_steps", ["--models", "nope"], "expected a registered model name, got 'nope'"),
    ("cpu_steps", ["--batch-sizes", "1", "0"], "--batch-sizes: expected a positive integer, got '0'"),
    ("cpu_steps", ["--models", "mobilenetv3_small_100", "--image-size", "16"],
     "--image-size 16 is too small for mobilenetv3_small_100: it needs at least 32 pixels"),
    ("mixnet_gap", ["--baseline", "nope"], "expected a registered model name, got 'nope'"),
    ("mixnet_gap", ["--rounds", "0"], "--rounds: expected a positive integer"),
    ("train_malloc", ["--steps", "0"], "--steps: expected a positive integer"),
    ("train_malloc", ["--warmup", "-1"], "--warmup: expected an integer >= 0"),
    ("train_malloc", ["--models", "mixnet_sx"], "did you mean mixnet_s"),
    ("grad_checkpointing", ["--rounds", "0"], "--rounds: expected a positive integer"),
    ("grad_checkpointing", ["--models", "mobilenetv3_small_100", "--image-size", "16"],
     "--image-size 16 is too small for mobilenetv3_small_100"),
    ("depthwise_kernel", ["--model", "nope"], "expected a registered model name, got 'nope'"),
    ("depthwise_kernel", ["--image-size", "8"], "--image-size 8 is too small for mixnet_s"),
    ("per_group_tensors", ["--model", "mobilenetv3_small_100"], "has no inverted residual with mixed kernel sizes"),
    ("per_group_tensors", ["--rounds", "0"], "--rounds: expected a positive integer"),
    ("per_group_tensors", ["--tensors", "0"], "--tensors: expected a positive integer"),
])
def test_bad_option_is_one_line_before_anything_runs(name, argv, expected, capsys, tmp_path):
    line = refuse(name, [*argv, "--out", str(tmp_path / "out")], capsys)
    assert expected in line, line
    assert not (tmp_path / "out").exists()


def test_mixnet_gap_refuses_a_model_without_mixed_kernels(capsys, tmp_path):
    line = refuse("mixnet_gap", ["--model", "mobilenetv3_small_100_cifar", "--baseline", "mobilenetv3_small_100_cifar",
                                 "--image-size", "32", "--batch-size", "1", "--rounds", "1", "--out", str(tmp_path)],
                  capsys)
    assert "has no MixConv with mixed kernel sizes" in line, line


def test_bad_option_exits_2_from_the_command_line(tmp_path):
    """As a user runs it: `python benchmarks/mixconv_speed.py --models nope` (it used to fail in a child process)."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / "mixconv_speed.py"), "--models", "nope",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("mixconv_speed.py: error: argument --models")


@pytest.mark.parametrize("argv, expected", [
    ([], (224, 32, 5)),
    (["--quick"], (64, 4, 2)),
    (["--quick", "--image-size", "32", "--batch-size", "2", "--rounds", "1"], (32, 2, 1)),
    (["--quick", "--image-size", "96"], (96, 4, 2)),
    (["--batch-size", "8"], (224, 8, 5)),
])
def test_quick_keeps_the_sizes_given(argv, expected):
    """`--quick --image-size 32` used to run at 64 px: --quick overwrote every size."""
    args = load("mixconv_speed").parse_args([*argv, "--models", "mobilenetv3_small_100_cifar", "--scenarios", "infer"])
    assert (args.image_size, args.batch_size, args.rounds) == expected


def test_small_map_conv_refuses_bad_options_and_runs_small(capsys):
    assert "expected a registered model name, got 'nope'" in refuse("small_map_conv", ["--model", "nope"], capsys)
    assert "--max-pixels: expected a positive integer" in refuse("small_map_conv", ["--max-pixels", "0"], capsys)
    load("small_map_conv").main(["--model", "mobilenetv3_small_100_cifar", "--image-size", "32", "--max-pixels",
                                 "16", "--rounds", "1", "--calls", "1", "--threads", "1"])
    out = capsys.readouterr().out
    assert "maps <=    16 px in F.conv2d" in out and "oneDNN speed-up x" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_mixconv_speed_cuda_without_cuda_is_one_line(capsys, tmp_path):
    line = refuse("mixconv_speed", ["--device", "cuda", "--out", str(tmp_path / "out")], capsys)
    assert "device 'cuda' (--device cuda) was requested but CUDA is not available" in line, line


@pytest.mark.parametrize("argv, calls", [
    ([], {"infer": (2, 2), "latency": (5, 20), "train": (2, 1)}),
    (["--device", "cuda"], {"infer": (10, 20), "latency": (20, 50), "train": (10, 10)}),
])
def test_scenario_configs_follow_device_and_amp(argv, calls, monkeypatch):
    """A GPU call is a few ms: one round times more calls there; --device / --amp reach every scenario."""
    module = load("mixconv_speed")
    monkeypatch.setattr(module, "check_device", lambda device: torch.device(device))  # no CUDA needed to build configs
    args = module.parse_args([*argv, "--amp", "--models", "mobilenetv3_small_100_cifar", "--scenarios", "infer"])
    for scenario, (warmup, iters) in calls.items():
        config = module.scenario_config(scenario, args)
        assert (config.warmup, config.iters, config.device, config.amp) == (warmup, iters, args.device, True)
        assert config.batch_size == (1 if scenario == "latency" else 32)
        assert config.mode == ("train" if scenario == "train" else "infer")
    assert module.report_stem(args) == "mixconv_speed" + ("_cuda" if argv else "") + "_amp_infer"
    assert module.setting(args) == ("CUDA float16 autocast" if argv else "CPU bfloat16 autocast")


def test_gpu_table_script_commands_parse_and_fit_one_device_call(monkeypatch, tmp_path):
    """benchmarks/gpu_table.sh runs on a machine this suite never sees: its options must parse here,
    and its steps' time limits must add up to less than one 10-minute device call."""
    import re
    import shlex
    import types

    script = (BENCHMARKS / "gpu_table.sh").read_text()
    steps = re.findall(r"^step (\d+) python3 benchmarks/(\w+)\.py (.+)$", script, re.M)
    assert [name for _, name, _ in steps] == ["mixconv_speed", "vs_timm", "mixconv_speed"]
    assert sum(int(limit) for limit in re.findall(r"^step (\d+) ", script, re.M)) <= 560
    monkeypatch.setitem(sys.modules, "timm", types.ModuleType("timm"))  # vs_timm.py only checks it imports
    for _, name, argv in steps:
        module = load(name)
        monkeypatch.setattr(module, "check_device", lambda device: torch.device(device))
        args = module.parse_args(shlex.split(argv.replace('"$out"', str(tmp_path))))
        assert (args.device, args.amp) == ("cuda", True)


def test_per_group_tiers_split_where_the_depthwise_multiply_adds_are_fewest():
    merge = load("per_group_tensors").merge_groups
    # 2 tiers of (3,5,7,9) x 30 channels: cuts after group 1, 2, 3 cost 30*9 + 90*81 = 7560, 60*25 + 60*81 = 6360,
    # 90*49 + 30*81 = 6840 multiply-adds per pixel: the cut after group 2
    assert merge([30, 30, 30, 30], [3, 5, 7, 9], 2) == ([60, 60], [5, 9])
    assert merge([30, 30, 30, 30], [3, 5, 7, 9], 1) == ([120], [9])
    assert merge([30, 30], [3, 5], None) == merge([30, 30], [3, 5], 4) == ([30, 30], [3, 5])
