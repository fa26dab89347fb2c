"""What keeping large tensors on the heap buys a CPU training step (``mobileconv train``'s default).

glibc's malloc serves every large tensor as fresh pages, zeroed by the kernel on first touch,
on every training step (:mod:`mobileconv.engine.malloc`). The setting is process-wide, so each
timing runs in a fresh process: one SGD step of the fast model in channels_last (what
``mobileconv bench --mode train`` times), with glibc's default malloc and with
``keep_large_allocations_on_heap()``, alternating in rounds. It reports the speed-up (the
median of the per-round ratios), the page faults and kernel time per step, and the peak
resident memory. Writes ``benchmarks/results/train_malloc.{md,json,png}``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from mobileconv.cli._args import check_image_size, cpu_threads, non_negative_int, positive_int, registered_model
from mobileconv.engine.bench import script_environment, write_report
from mobileconv.engine.checkpoint import save_figure

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("mixnet_s", "mobilenetv3_large_100", "xsep_mobilenetv3_small_100")
MODES = ("glibc default", "heap")

# One process, one timing: warm-up steps, then timed steps; prints a JSON line.
WORKER = """
import json, resource, sys, time
import torch
from mobileconv import create_model
from mobileconv.engine.bench import BenchConfig, build_variant, make_batch
from mobileconv.engine.malloc import keep_large_allocations_on_heap
name, heap, batch_size, image_size, threads, warmup, steps = sys.argv[1:8]
if heap == "1" and not keep_large_allocations_on_heap():
    raise SystemExit("mallopt failed: this benchmark needs glibc")
torch.set_num_threads(int(threads))
torch.manual_seed(0)
config = BenchConfig(mode="train", batch_size=int(batch_size), image_size=int(image_size), threads=int(threads))
model = create_model(name)
batch = make_batch(config, int(image_size), 3, model.num_classes)
step = build_variant(model, "fast", config, batch[0])
for _ in range(int(warmup)):
    step(batch)
usage, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(int(steps)):
    step(batch)
seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
n = int(steps)
print(json.dumps({"ms_per_step": seconds / n * 1e3, "faults_per_step": (after.ru_minflt - usage.ru_minflt) / n,
                  "kernel_s_per_step": (after.ru_stime - usage.ru_stime) / n, "max_rss_mb": after.ru_maxrss / 1024}))
"""


def time_once(name: str, heap: bool, args: argparse.Namespace) -> dict:
    argv = [sys.executable, "-c", WORKER, name, "1" if heap else "0", str(args.batch_size), str(args.image_size),
            str(args.threads), str(args.warmup), str(args.steps)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{name} ({'heap' if heap else 'default'}) failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", type=registered_model, default=list(MODELS))
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--image-size", type=positive_int, default=224)
    p.add_argument("--threads", type=cpu_threads, default=2)
    p.add_argument("--rounds", type=positive_int, default=3,
                   help="alternating rounds, one process per model and mode each")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed steps per process")
    p.add_argument("--steps", type=positive_int, default=3, help="timed steps per process")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    try:
        check_image_size(args.models, args.image_size)
    except ValueError as e:
        p.error(str(e))
    from tqdm.auto import tqdm

    runs: dict[str, dict[str, list[dict]]] = {m: {mode: [] for mode in MODES} for m in args.models}
    with tqdm(total=args.rounds * len(args.models) * len(MODES), desc="train_malloc", unit="process") as bar:
        for _ in range(args.rounds):
            for name in args.models:
                for mode in MODES:
                    runs[name][mode].append(time_once(name, mode == "heap", args))
                    bar.set_postfix_str(f"{name}, {mode}: {runs[name][mode][-1]['ms_per_step']:.0f} ms/step")
                    bar.update()
    rows = []
    for name, by_mode in runs.items():
        default, heap = by_mode["glibc default"], by_mode["heap"]
        rows.append({
            "model": name,
            "speedup": statistics.median(d["ms_per_step"] / h["ms_per_step"] for d, h in zip(default, heap)),
            **{f"{key}_{tag}": statistics.median(r[key] for r in runs_)
               for tag, runs_ in (("default", default), ("heap", heap))
               for key in ("ms_per_step", "faults_per_step", "kernel_s_per_step", "max_rss_mb")}})
    env = script_environment("train_malloc.py", sys.argv[1:], threads=args.threads, batch_size=args.batch_size,
                             image_size=args.image_size, rounds=args.rounds, steps=args.steps)
    report = markdown(env, rows)
    write_report(args.out, "train_malloc", report, {"environment": env, "rows": rows, "runs": runs})
    plot(env, rows, args.out / "train_malloc.png")
    print(report)
    return 0


def markdown(env: dict, rows: list[dict]) -> str:
    out = ["# A training step with large tensors kept on the heap (benchmarks/train_malloc.py)", "",
           f"`{env['command']}`, {env['date']}, torch {env['torch']}, {env['threads']} threads, one SGD step of the "
           f"fast model in channels_last, batch {env['batch_size']}, {env['image_size']}x{env['image_size']}, "
           f"{env['rounds']} alternating rounds of one process per model and malloc setting, {env['steps']} timed "
           "steps each. Speed-up: median over rounds of default / heap time; the other columns are medians.", "",
           "| model | ms per step, default | ms per step, heap | speed-up | page faults per step, default / heap | "
           "kernel s per step, default / heap | peak RSS MB, default / heap |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    out += [f"| {r['model']} | {r['ms_per_step_default']:.0f} | {r['ms_per_step_heap']:.0f} | x{r['speedup']:.2f} | "
            f"{r['faults_per_step_default']:,.0f} / {r['faults_per_step_heap']:,.0f} | "
            f"{r['kernel_s_per_step_default']:.2f} / {r['kernel_s_per_step_heap']:.2f} | "
            f"{r['max_rss_mb_default']:,.0f} / {r['max_rss_mb_heap']:,.0f} |" for r in rows]
    return "\n".join(out)


def plot(env: dict, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    xs = range(len(rows))
    for i, (tag, label) in enumerate((("default", "glibc default"), ("heap", "large tensors on the heap"))):
        bars = ax.bar([x + (i - 0.5) * 0.4 for x in xs], [r[f"ms_per_step_{tag}"] for r in rows], 0.4, label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.legend(fontsize=8)
    ax.set_xticks(list(xs), [f"{r['model']}\nx{r['speedup']:.2f}" for r in rows], fontsize=8)
    ax.set_ylabel("ms per training step")
    ax.set_title(f"CPU training step, batch {env['batch_size']}, {env['image_size']} px, {env['threads']} threads",
                 fontsize=9)
    save_figure(fig, path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
