"""MixConv without its tax (issue #6): fast vs reference MixNet / XSepConv on CPU, side by side.

Every number is a ratio of two things timed in alternating rounds in this one process, from the
same weights (random, so no download is needed): absolute images/s on a shared machine drift,
ratios measured this way do not. Scenarios (defaults: CPU, fp32, 2 threads, 224x224;
``--device cuda --amp`` gives the issue's GPU table, float16 autocast, see ``gpu_table.sh``):

* ``infer``     batch 32: ``optimize_for_inference(model)`` (``optimized``) and
                ``optimize_for_inference(model, compile=True)`` (``compiled``; ``--no-compiled`` skips
                it) vs the eval-mode ``impl="reference"`` model (split / conv per group / concat, BN
                not folded), in PyTorch's default memory format (``reference``) and in channels_last
                (``reference_cl``, the issue's baseline).
* ``latency``   the same at batch 1 (per-image latency).
* ``train``     batch 32, one SGD step: ``impl="fast"`` in channels_last vs ``impl="reference"``.
* ``tax``       batch 32, mixnet_s and mobilenetv3_large_100, both optimised, alternating: the ratio
                of their MACs per second (true MACs, ``FlopCounterMode`` / 2 on the reference model).

Writes ``benchmarks/results/mixconv_speed.{md,json,png}`` (``mixconv_speed_<scenarios>.*`` for a subset of the
scenarios, ``_heap`` with ``--heap-malloc``, ``_cuda`` / ``_amp`` with ``--device cuda`` / ``--amp``). ``make bench`` runs it; ``--quick``
is a smoke run (64 px, batch 4, 2 rounds) that says nothing about speed.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

import torch

from mobileconv import create_model
from mobileconv.cli._args import check_image_size, cpu_threads, positive_int, registered_model
from mobileconv.engine.checkpoint import save_figure
from mobileconv.engine.malloc import keep_large_allocations_on_heap
from mobileconv.engine.bench import (DEVICES, BenchConfig, BenchResult, benchmark_model, build_variant,
                                     check_device, count_macs, format_table, make_batch, num_threads,
                                     paired_ratio, summarize_times, time_variants, write_report)

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("mixnet_s", "mixnet_m", "mixnet_l", "xsep_mobilenetv3_small_100", "mobilenetv3_large_100")
TAX_PAIR = ("mixnet_s", "mobilenetv3_large_100")
# (scenario, measured quantity, target) from the issue
TARGETS = (
    ("infer", "speed-up over reference", 2.5),
    ("latency", "speed-up over reference", 2.0),
    ("train", "speed-up over reference", 1.5),
    ("tax", "MACs/s of mixnet_s / mobilenetv3_large_100", 0.8),
)
MAIN = {"infer": "optimized", "latency": "optimized", "train": "fast"}
SCENARIOS = ("infer", "latency", "train", "tax")
# (warm-up calls, timed calls per variant per round) by device and scenario: a GPU call takes a
# few ms at batch 32, so a round times many of them
CALLS = {"cpu": {"infer": (2, 2), "latency": (5, 20), "train": (2, 1)},
         "cuda": {"infer": (10, 20), "latency": (20, 50), "train": (10, 10)}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", type=registered_model, default=list(MODELS),
                   help="models to time (default: the issue's five)")
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS,
                   help="what to run (default: all; a subset writes mixconv_speed_<scenarios>.*)")
    p.add_argument("--threads", type=cpu_threads, default=2, help="torch threads (default 2)")
    p.add_argument("--device", default="cpu", choices=DEVICES, help="device (default cpu)")
    p.add_argument("--amp", action="store_true",
                   help="autocast: bfloat16 on CPU, float16 on CUDA (training with a grad scaler)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="batch for infer / train / tax (default 32; 4 with --quick)")
    p.add_argument("--image-size", type=positive_int, default=None, help="input size (default 224; 64 with --quick)")
    p.add_argument("--rounds", type=positive_int, default=None,
                   help="alternating timed rounds (default 5; 2 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 64 px, batch 4, 2 rounds (--image-size / --batch-size / --rounds still apply)")
    p.add_argument("--heap-malloc", action="store_true",
                   help="glibc only: serve large tensors from the heap (mallopt M_MMAP_THRESHOLD=1 GiB, no trimming) instead of "
                        "fresh mmap'd pages, as jemalloc / tcmalloc do; removes the page-fault cost of every large "
                        "allocation (results go to *_heap.*)")
    p.add_argument("--same-process", action="store_true",
                   help="run all scenarios in this process (default: each in a fresh one, so that the allocator state a "
                        "batch-32 scenario leaves behind does not slow the batch-1 one)")
    p.add_argument("--no-compiled", dest="compiled", action="store_false",
                   help="skip the compiled variant (optimize_for_inference(..., compile=True)) of infer / latency")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"output folder (default {RESULTS})")
    args = p.parse_args(argv)
    # --quick changes the defaults only: an option given on the command line keeps its value
    for name, default, quick in (("image_size", 224, 64), ("batch_size", 32, 4), ("rounds", 5, 2)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else default)
    # device and sizes are checked here, not minutes later in a scenario's process
    if args.heap_malloc and args.device != "cpu":
        p.error("--heap-malloc is about the CPU allocator; it does nothing for --device cuda")
    try:
        check_device(args.device)
    except ValueError as e:
        p.error(str(e))
    if set(args.scenarios) - {"tax"}:
        try:
            check_image_size(args.models, args.image_size)
        except ValueError as e:
            p.error(str(e))
    if "tax" in args.scenarios:
        try:
            check_image_size(TAX_PAIR, args.image_size)
        except ValueError as e:
            p.error(f"{e} (the tax scenario times {' and '.join(TAX_PAIR)}; --scenarios without tax leaves it out)")
    return args


def scenario_config(scenario: str, args: argparse.Namespace) -> BenchConfig:
    warmup, iters = CALLS[args.device]["infer" if scenario == "tax" else scenario]
    common = dict(image_size=args.image_size, threads=args.threads, rounds=args.rounds, device=args.device,
                  amp=args.amp, warmup=warmup, iters=iters)
    if scenario == "latency":
        return BenchConfig(mode="infer", batch_size=1, **common)
    return BenchConfig(mode="train" if scenario == "train" else "infer", batch_size=args.batch_size, **common)


def run_scenario(scenario: str, args: argparse.Namespace) -> list[BenchResult]:
    config = scenario_config(scenario, args)
    timed = [MAIN[scenario], *(["compiled"] if args.compiled and scenario != "train" else [])]
    variants = [*timed, "reference", "reference_cl"]
    results = []
    for name in args.models:
        torch.manual_seed(0)
        results.append(benchmark_model(create_model(name), config, variants, progress=True, name=name))
        print(f"{scenario}:\n{format_table(results[-1:])}", file=sys.stderr)
    return results


def run_tax(args: argparse.Namespace) -> dict:
    """mixnet_s and mobilenetv3_large_100, both optimised (and both compiled), timed in the same alternating rounds."""
    config = scenario_config("tax", args)
    variants = ["optimized", *(["compiled"] if args.compiled else [])]
    steps, macs = {}, {}
    with num_threads(config.threads):
        batch = make_batch(config, args.image_size, 3, 1000)
        for name in TAX_PAIR:
            torch.manual_seed(0)
            model = create_model(name)
            macs[name] = count_macs(model, args.image_size)
            for v in variants:
                steps[name, v] = build_variant(model, v, config, batch[0])
        times = time_variants(steps, batch, config, progress=True, desc="tax")
    mix, mnv3 = TAX_PAIR
    by_variant = {}
    for v in variants:
        measured = {name: summarize_times(name, times[name, v], config.batch_size) for name in TAX_PAIR}
        ratio = paired_ratio([macs[mix] * r for r in measured[mix].round_images_per_s],
                             [macs[mnv3] * r for r in measured[mnv3].round_images_per_s])
        by_variant[v] = {"macs_per_s_ratio": ratio, "images_per_s": {n: m.images_per_s for n, m in measured.items()},
                         "gmacs_per_s": {n: macs[n] * m.images_per_s / 1e9 for n, m in measured.items()}}
    # the eager optimised figures at the top level (the measure), every variant under "variants"
    return {"models": list(TAX_PAIR), "macs_per_image": macs, **by_variant["optimized"], "variants": by_variant}


def speedup_rows(scenario: str, results: list[BenchResult]) -> list[dict]:
    """One row per model and timed variant (``optimized`` / ``fast``, and ``compiled`` where timed)."""
    return [{"scenario": scenario, "model": r.model, "variant": v,
             "images_per_s": r.measurements[v].images_per_s,
             "reference_images_per_s": r.measurements["reference"].images_per_s,
             "speedup": r.speedup(v), "speedup_over_reference_cl": r.speedup(v, "reference_cl"),
             "latency_p50_ms": r.measurements[v].latency_p50_ms,
             "reference_latency_p50_ms": r.measurements["reference"].latency_p50_ms,
             "peak_memory_mb": r.measurements[v].peak_memory_mb,
             "reference_peak_memory_mb": r.measurements["reference"].peak_memory_mb}
            for r in results for v in (MAIN[scenario], "compiled") if v in r.measurements]


def targets_table(rows: list[dict], tax: dict | None) -> list[str]:
    lines = ["| scenario | model | variant | measured | target | met |", "| --- | --- | --- | --- | --- | --- |"]
    for scenario, what, target in TARGETS:
        if scenario == "tax":
            if tax is not None:
                for variant, entry in tax["variants"].items():
                    v = entry["macs_per_s_ratio"]
                    lines.append(f"| tax | {what} | {variant} | {v:.2f} | >= {target} | "
                                 f"{'yes' if v >= target else 'NO'} |")
            continue
        for row in rows:
            if row["scenario"] == scenario and row["model"] != "mobilenetv3_large_100":
                v = row["speedup"]
                lines.append(f"| {scenario} | {row['model']} | {row['variant']} | x{v:.2f} "
                             f"(x{row['speedup_over_reference_cl']:.2f} "
                             f"over reference_cl) | >= x{target} | {'yes' if v >= target else 'NO'} |")
    return lines


def markdown(args: argparse.Namespace, env: dict, results: dict[str, list[BenchResult]], rows: list[dict],
             tax: dict | None) -> str:
    out = ["# MixConv speed (benchmarks/mixconv_speed.py)", "",
           f"Command: `{env['command']}`  ", f"Date: {env['date']}; torch {env['torch']}; {env['setting']}; "
           + (f"{env['gpu']}; " if env["gpu"] else "") +
           f"{env['threads']} threads on {env['cpus']} CPUs ({env['cpu']}); malloc: {env['malloc']}; "
           f"load average {env['load_before']} before, {env['load_after']} after.", "",
           "Speed-ups are medians over rounds of per-round ratios (variants alternate within each round; same "
           "weights). `reference` = `impl=\"reference\"` (split / conv per group / concat, BN not folded) in the "
           "default memory format; `reference_cl` = the same in channels_last.", "",
           "## Targets (issue #6)", "", *targets_table(rows, tax), ""]
    for scenario, res in results.items():
        out += [f"## {scenario}", "", format_table(res), ""]
    if tax is not None:
        out += ["## tax: MACs per second, both optimised (and both compiled), alternating", "",
                "| model | variant | MACs/image | img/s | GMAC/s |", "| --- | --- | --- | --- | --- |"]
        out += [f"| {n} | {v} | {tax['macs_per_image'][n] / 1e6:.1f}M | {e['images_per_s'][n]:.1f} | "
                f"{e['gmacs_per_s'][n]:.2f} |" for v, e in tax["variants"].items() for n in tax["models"]]
        out += [""] + [f"MACs/s ratio, {v} (median over rounds): {e['macs_per_s_ratio']:.2f}"
                       for v, e in tax["variants"].items()] + [""]
    return "\n".join(out)


def setting(args: argparse.Namespace) -> str:
    """``CPU fp32`` / ``CUDA float16 autocast``: what the figures were measured on."""
    precision = ("bfloat16" if args.device == "cpu" else "float16") + " autocast" if args.amp else "fp32"
    return f"{args.device.upper()} {precision}"


def plot(args: argparse.Namespace, rows: list[dict], tax: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = list(dict.fromkeys((r["scenario"], r["variant"]) for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, ax = plt.subplots(figsize=(11, 4.8))
    width = 0.8 / max(len(series), 1)

    def value(key: str, s: str, v: str, m: str) -> float:
        return next((r[key] for r in rows if (r["scenario"], r["variant"], r["model"]) == (s, v, m)), 0.0)

    for i, (s, v) in enumerate(series):
        vals = [value("speedup", s, v, m) for m in models]
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(models))]
        bars = ax.bar(xs, vals, width, label=f"{s} ({v} / reference)")
        ax.bar_label(bars, fmt="%.2f", fontsize=6)
        cl = [value("speedup_over_reference_cl", s, v, m) for m in models]
        ax.plot(xs, cl, "k_", markersize=12, mew=2, label="over reference_cl" if i == 0 else None)
    for _, _, target in TARGETS[:3]:
        ax.axhline(target, color="grey", lw=0.6, ls="--")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(range(len(models)), models, fontsize=8)
    ax.set_ylabel("speed-up over impl='reference' (x)")
    title = f"MixConv / XSepConv fast path vs reference, {setting(args)} (targets dashed: 2.5 / 2.0 / 1.5)"
    if tax is not None:
        ratios = ", ".join(f"{v} {e['macs_per_s_ratio']:.2f}" for v, e in tax["variants"].items())
        title += f"\nMACs/s mixnet_s / mobilenetv3_large_100 (target 0.8): {ratios}"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=120)


def environment(args: argparse.Namespace) -> dict:
    return {"command": " ".join(["python benchmarks/mixconv_speed.py", *sys.argv[1:]]),
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
            "setting": setting(args), "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
            "threads": args.threads, "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "load_before": " / ".join(f"{v:.1f}" for v in os.getloadavg()), "load_after": None}


def use_heap_for_large_allocations() -> None:
    """glibc's ``mallopt``: large blocks from the heap, reused, instead of new zeroed pages per allocation."""
    if not keep_large_allocations_on_heap():
        raise OSError("mallopt failed: --heap-malloc needs glibc")


def _run(fn, scenario: str, args: argparse.Namespace):
    return fn(scenario, args)


def _run_tax(scenario: str, args: argparse.Namespace) -> dict:
    return run_tax(args)


def _run_in_fresh_process(fn, scenario: str, args: argparse.Namespace):
    """``fn(scenario, args)`` in a new (spawned) Python process, so no scenario inherits another's heap.

    In one process the batch-1 scenario ran 10-25% slower after the batch-32 one (mixnet_s
    optimised: 51-54 img/s against 61-62 in a process of its own; measured on 2026-11-22).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_run_child, fn, scenario, args).result()


def _run_child(fn, scenario: str, args: argparse.Namespace):
    if args.heap_malloc:
        use_heap_for_large_allocations()
    prepare_process(args)
    return fn(scenario, args)


def prepare_process(args: argparse.Namespace) -> None:
    """On CUDA, let cuDNN pick each conv's fastest algorithm for its shape, as timm's benchmark does."""
    torch.backends.cudnn.benchmark = args.device == "cuda"


def report_stem(args: argparse.Namespace) -> str:
    """``mixconv_speed[_quick][_heap][_<scenarios>]``: a run of some scenarios does not overwrite the full report."""
    stem = "mixconv_speed" + ("_quick" if args.quick else "") + ("_heap" if args.heap_malloc else "")
    stem += ("_cuda" if args.device == "cuda" else "") + ("_amp" if args.amp else "")
    if set(args.scenarios) != set(SCENARIOS):
        stem += "_" + "_".join(s for s in SCENARIOS if s in args.scenarios)
    return stem


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.heap_malloc:
        use_heap_for_large_allocations()
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment(args)
    env["malloc"] = "heap (mallopt M_MMAP_THRESHOLD=1 GiB, M_TRIM_THRESHOLD off)" if args.heap_malloc else "glibc default"
    if args.same_process:
        prepare_process(args)
    run = _run if args.same_process else _run_in_fresh_process
    results = {s: run(run_scenario, s, args) for s in args.scenarios if s != "tax"}
    tax = run(_run_tax, "tax", args) if "tax" in args.scenarios else None
    env["load_after"] = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    rows = [row for s, res in results.items() for row in speedup_rows(s, res)]
    stem = report_stem(args)
    report = markdown(args, env, results, rows, tax)
    write_report(args.out, stem, report, {"environment": env, "speedups": rows, "tax": tax,
                                          "results": {s: [r.to_dict() for r in res] for s, res in results.items()}})
    plot(args, rows, tax, args.out / f"{stem}.png")
    print(report)
    print(f"\nwrote {args.out / stem}.md / .json / .png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
