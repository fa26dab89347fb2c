"""What gradient checkpointing (``mobileconv train --grad-checkpointing``) saves and costs in a training step.

Per model, two copies with the same weights: the plain one and one with ``set_grad_checkpointing()``, each
timed on one SGD step of the fast model in channels_last (what ``mobileconv bench --mode train`` times),
alternating in rounds in one process, with large tensors kept on the heap (``mobileconv train``'s default).
Reports the peak tensor memory of a step (``mobileconv.engine.bench.peak_memory_mb``), the median step time and
the time ratio (median of the per-round ratios). Writes ``benchmarks/results/grad_checkpointing.{md,json,png}``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from mobileconv.cli._args import check_image_size, cpu_threads, non_negative_int, positive_int, registered_model
from mobileconv.engine.bench import script_environment, write_report
from mobileconv.engine.checkpoint import save_figure

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("mixnet_s", "mobilenetv3_large_100", "xsep_mobilenetv3_small_100")
VARIANTS = ("plain", "checkpointed")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", type=registered_model, default=list(MODELS))
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--image-size", type=positive_int, default=224)
    p.add_argument("--threads", type=cpu_threads, default=2)
    p.add_argument("--rounds", type=positive_int, default=5, help="alternating rounds of one step per variant")
    p.add_argument("--warmup", type=non_negative_int, default=1, help="untimed steps per variant")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    try:
        check_image_size(args.models, args.image_size)
    except ValueError as e:
        p.error(str(e))
    import torch
    from tqdm.auto import tqdm

    from mobileconv import create_model
    from mobileconv.engine.bench import BenchConfig, build_variant, make_batch, peak_memory_mb
    from mobileconv.engine.malloc import keep_large_allocations_on_heap

    keep_large_allocations_on_heap()
    torch.set_num_threads(args.threads)
    config = BenchConfig(mode="train", batch_size=args.batch_size, image_size=args.image_size, threads=args.threads)
    rows = []
    with tqdm(total=len(args.models) * len(VARIANTS) * (args.rounds + args.warmup + 2), desc="grad_checkpointing",
              unit="step") as bar:
        for name in args.models:
            torch.manual_seed(0)
            model = create_model(name)
            batch = make_batch(config, args.image_size, 3, model.num_classes)
            steps = {}
            for variant in VARIANTS:
                model.set_grad_checkpointing(variant == "checkpointed")
                steps[variant] = build_variant(model, "fast", config, batch[0])  # a copy, with the flag as set
            peak = {}
            for variant, step in steps.items():
                for _ in range(args.warmup):
                    step(batch)
                    bar.update()
                peak[variant] = peak_memory_mb(step, batch, "cpu")  # two steps, the second measured
                bar.update(2)
            seconds = {variant: [] for variant in VARIANTS}
            for _ in range(args.rounds):
                for variant, step in steps.items():
                    start = time.perf_counter()
                    step(batch)
                    seconds[variant].append(time.perf_counter() - start)
                    bar.update()
            rows.append({"model": name, **{f"peak_mib_{v}": peak[v] for v in VARIANTS},
                         **{f"ms_per_step_{v}": 1e3 * statistics.median(seconds[v]) for v in VARIANTS},
                         "memory_ratio": peak["checkpointed"] / peak["plain"],
                         "time_ratio": statistics.median(c / p for p, c in zip(seconds["plain"],
                                                                               seconds["checkpointed"]))})
    env = script_environment("grad_checkpointing.py", sys.argv[1:], threads=args.threads,
                             batch_size=args.batch_size, image_size=args.image_size, rounds=args.rounds)
    report = markdown(env, rows)
    write_report(args.out, "grad_checkpointing", report, {"environment": env, "rows": rows})
    plot(env, rows, args.out / "grad_checkpointing.png")
    print(report)
    return 0


def markdown(env: dict, rows: list[dict]) -> str:
    out = ["# A training step with gradient checkpointing (benchmarks/grad_checkpointing.py)", "",
           f"`{env['command']}`, {env['date']}, torch {env['torch']}, {env['threads']} threads, one SGD step of the "
           f"fast model in channels_last, batch {env['batch_size']}, {env['image_size']}x{env['image_size']}, large "
           f"tensors on the heap, {env['rounds']} alternating rounds. Peak: the tensor memory of one step; time: the "
           "median step, and the median over rounds of checkpointed / plain.", "",
           "| model | peak MiB, plain | peak MiB, checkpointed | memory | ms per step, plain | "
           "ms per step, checkpointed | time |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    out += [f"| {r['model']} | {r['peak_mib_plain']:,.0f} | {r['peak_mib_checkpointed']:,.0f} | "
            f"x{r['memory_ratio']:.2f} | {r['ms_per_step_plain']:.0f} | {r['ms_per_step_checkpointed']:.0f} | "
            f"x{r['time_ratio']:.2f} |" for r in rows]
    return "\n".join(out)


def plot(env: dict, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    xs = range(len(rows))
    for ax, key, label, ratio in ((axes[0], "peak_mib", "peak tensor memory per step, MiB", "memory_ratio"),
                                  (axes[1], "ms_per_step", "ms per training step", "time_ratio")):
        for i, variant in enumerate(VARIANTS):
            bars = ax.bar([x + (i - 0.5) * 0.4 for x in xs], [r[f"{key}_{variant}"] for r in rows], 0.4,
                          label=variant)
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_xticks(list(xs), [f"{r['model']}\nx{r[ratio]:.2f}" for r in rows], fontsize=7)
        ax.set_ylabel(label, fontsize=8)
        ax.legend(fontsize=8)
    fig.suptitle(f"Gradient checkpointing, CPU training step, batch {env['batch_size']}, {env['image_size']} px, "
                 f"{env['threads']} threads", fontsize=9)
    save_figure(fig, path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
