"""mobileconv against timm on the same architectures and the same weights (needs timm installed).

timm is not a dependency (it needs torchvision, whose wheel does not run with this project's CPU
build of torch); the GPU machine that some sessions are lent has it, and so may a user's. For
each model, timm's implementation is created (random initialisation), its ``state_dict`` loaded
into mobileconv's model of the same name (the loader that reads timm's published checkpoints),
and both checked to compute the same logits. Then, alternating in one process, same batch:

* ``infer`` (batch 32) and ``latency`` (batch 1): timm's eval-mode model in channels_last
  against ``optimize_for_inference(model)``; with ``--compile`` also timm's model under
  ``torch.compile`` against ``optimize_for_inference(model, compile=True)``;
* ``train`` (batch 32, one SGD step): timm's model in channels_last against ``impl="fast"`` in
  channels_last.

The ratio is mobileconv's images/s over timm's, the median of per-round ratios. Writes
``benchmarks/results/vs_timm[_cuda][_amp].{md,json,png}``.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import nn

from mobileconv import create_model, optimize_for_inference
from mobileconv.cli._args import check_image_size, cpu_threads, positive_int, registered_model
from mobileconv.deploy.weights import load_state_dict
from mobileconv.engine.bench import (DEVICES, BenchConfig, check_device, make_batch, make_inference_step,
                                     make_train_step, num_threads, paired_ratio, script_environment,
                                     summarize_times, time_variants, write_report)
from mobileconv.engine.checkpoint import save_figure

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("mixnet_s", "mixnet_m", "mixnet_l", "mobilenetv3_large_100")
SCENARIOS = ("infer", "latency", "train")
# (warm-up calls, timed calls per round) by device and scenario, as in mixconv_speed.py
CALLS = {"cpu": {"infer": (2, 2), "latency": (5, 20), "train": (2, 1)},
         "cuda": {"infer": (10, 20), "latency": (20, 50), "train": (10, 10)}}
SAME_OUTPUT = 1e-4  # max |ours - timm| / max |timm|, float32 eval


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", type=registered_model, default=list(MODELS),
                   help="models that timm has under the same name (default: the three MixNets and MobileNetV3-Large)")
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    p.add_argument("--device", default="cpu", choices=DEVICES, help="device (default cpu)")
    p.add_argument("--amp", action="store_true", help="autocast: bfloat16 on CPU, float16 on CUDA")
    p.add_argument("--compile", action="store_true", help="also time both models under torch.compile (inference)")
    p.add_argument("--threads", type=cpu_threads, default=2, help="torch threads (default 2)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="batch for infer / train (default 32)")
    p.add_argument("--image-size", type=positive_int, default=224, help="input size (default 224)")
    p.add_argument("--rounds", type=positive_int, default=5, help="alternating timed rounds (default 5)")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"output folder (default {RESULTS})")
    args = p.parse_args(argv)
    try:
        import timm  # noqa: F401, PLC0415 - the comparison's subject, not a dependency
    except ImportError:
        p.error("this script compares with timm, which is not installed (pip install timm)")
    try:
        check_device(args.device)
        check_image_size(args.models, args.image_size)
    except ValueError as e:
        p.error(str(e))
    return args


def timm_twin(name: str, device: str) -> tuple[nn.Module, nn.Module]:
    """timm's model and mobileconv's, with timm's (random) weights in both; refuses if their logits differ."""
    import timm  # noqa: PLC0415

    torch.manual_seed(0)
    theirs = timm.create_model(name, pretrained=False).eval()
    ours = create_model(name)
    load_state_dict(ours, theirs.state_dict(), name=f"timm {name}")
    ours.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want, got = theirs(x), ours(x)
    diff = ((got - want).abs().max() / want.abs().max()).item()
    if not diff <= SAME_OUTPUT:
        raise RuntimeError(f"{name}: mobileconv's logits differ from timm's by {diff:.1e} of their scale "
                           f"(expected <= {SAME_OUTPUT}): not the same architecture")
    return theirs.to(device), ours.to(device)


def steps_for(scenario: str, theirs: nn.Module, ours: nn.Module, config: BenchConfig, example: torch.Tensor,
              compile_too: bool) -> dict[str, object]:
    """``{variant: step(batch)}``: timm's and mobileconv's (and both compiled), each on its own copy."""
    if scenario == "train":
        timm_net = copy.deepcopy(theirs).to(memory_format=torch.channels_last)
        ours_net = copy.deepcopy(ours).to(memory_format=torch.channels_last)  # impl="fast" is the default
        return {"timm": make_train_step(timm_net, config), "mobileconv": make_train_step(ours_net, config)}
    timm_net = copy.deepcopy(theirs).eval().to(memory_format=torch.channels_last)
    steps = {"timm": make_inference_step(timm_net, config),
             "mobileconv": make_inference_step(optimize_for_inference(copy.deepcopy(ours), example_input=example[:1]),
                                               config)}
    if compile_too:
        steps["timm_compiled"] = make_inference_step(torch.compile(timm_net), config)
        steps["mobileconv_compiled"] = make_inference_step(
            optimize_for_inference(copy.deepcopy(ours), example_input=example[:1], compile=True), config)
    return steps


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    torch.backends.cudnn.benchmark = args.device == "cuda"
    with num_threads(args.threads):
        for name in args.models:
            theirs, ours = timm_twin(name, args.device)
            for scenario in args.scenarios:
                warmup, iters = CALLS[args.device][scenario]
                config = BenchConfig(mode="train" if scenario == "train" else "infer",
                                     batch_size=1 if scenario == "latency" else args.batch_size,
                                     image_size=args.image_size, device=args.device, amp=args.amp,
                                     rounds=args.rounds, warmup=warmup, iters=iters)
                batch = make_batch(config, args.image_size, 3, getattr(ours, "num_classes", 1000))
                steps = steps_for(scenario, theirs, ours, config, batch[0], args.compile and scenario != "train")
                times = time_variants(steps, batch, config, progress=True, desc=f"{name} {scenario}")
                m = {v: summarize_times(v, t, config.batch_size) for v, t in times.items()}
                for suffix in ("", "_compiled"):
                    if f"timm{suffix}" in m:
                        mine, timm_m = m[f"mobileconv{suffix}"], m[f"timm{suffix}"]
                        rows.append({"model": name, "scenario": scenario, "compiled": bool(suffix),
                                     "batch_size": config.batch_size, "timm_images_per_s": timm_m.images_per_s,
                                     "mobileconv_images_per_s": mine.images_per_s,
                                     "timm_latency_p50_ms": timm_m.latency_p50_ms,
                                     "mobileconv_latency_p50_ms": mine.latency_p50_ms,
                                     "speedup": paired_ratio(mine.round_images_per_s, timm_m.round_images_per_s)})
                print(f"{name} {scenario}: " + ", ".join(
                    f"x{r['speedup']:.2f}{' compiled' if r['compiled'] else ''}" for r in rows
                    if (r["model"], r["scenario"]) == (name, scenario)), file=sys.stderr)
    return rows


def setting(args: argparse.Namespace) -> str:
    precision = ("bfloat16" if args.device == "cpu" else "float16") + " autocast" if args.amp else "fp32"
    return f"{args.device.upper()} {precision}"


def markdown(env: dict, rows: list[dict]) -> str:
    out = ["# mobileconv vs timm (benchmarks/vs_timm.py)", "",
           f"Command: `{env['command']}`  ", f"Date: {env['date']}; torch {env['torch']}; timm {env['timm']}; "
           f"{env['setting']}" + (f"; {env['gpu']}" if env["gpu"] else f"; {env['threads']} threads") + ".", "",
           "Same weights (timm's, loaded into mobileconv's model), same batch, alternating rounds. Speed-up = "
           "mobileconv's images/s over timm's (median of per-round ratios). Inference: timm eval in channels_last "
           "against `optimize_for_inference`; training: both in channels_last, one SGD step.", "",
           "| model | scenario | batch | compiled | timm img/s | mobileconv img/s | timm p50 ms | mobileconv p50 ms "
           "| speed-up |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    out += [f"| {r['model']} | {r['scenario']} | {r['batch_size']} | {'yes' if r['compiled'] else 'no'} | "
            f"{r['timm_images_per_s']:.1f} | {r['mobileconv_images_per_s']:.1f} | {r['timm_latency_p50_ms']:.2f} | "
            f"{r['mobileconv_latency_p50_ms']:.2f} | x{r['speedup']:.2f} |" for r in rows]
    return "\n".join(out)


def plot(rows: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = list(dict.fromkeys((r["scenario"], r["compiled"]) for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / max(len(series), 1)
    for i, (scenario, compiled) in enumerate(series):
        vals = [next((r["speedup"] for r in rows if (r["model"], r["scenario"], r["compiled"]) ==
                      (m, scenario, compiled)), 0.0) for m in models]
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(models))]
        bars = ax.bar(xs, vals, width, label=scenario + (" (compiled)" if compiled else ""))
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(range(len(models)), models, fontsize=8)
    ax.set_ylabel("mobileconv img/s over timm's (x)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import timm  # noqa: PLC0415

    env = script_environment("vs_timm.py", sys.argv[1:] if argv is None else argv, timm=timm.__version__,
                             setting=setting(args), threads=args.threads,
                             gpu=torch.cuda.get_device_name() if args.device == "cuda" else None)
    rows = run(args)
    stem = "vs_timm" + ("_cuda" if args.device == "cuda" else "") + ("_amp" if args.amp else "")
    report = markdown(env, rows)
    write_report(args.out, stem, report, {"environment": env, "rows": rows})
    plot(rows, f"mobileconv over timm, same weights, {setting(args)}", args.out / f"{stem}.png")
    print(report)
    print(f"\nwrote {args.out / stem}.md / .json / .png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
