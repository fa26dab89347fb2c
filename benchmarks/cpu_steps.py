"""What the CPU-only steps of optimize_for_inference buy, each switched off in turn, side by side.

Three variants of ``optimize_for_inference`` of the same weights (BN folded, MixConv / XSepConv
fused, channels_last in all three): ``all`` (the default on CPU), ``onednn=False`` (plain convs
instead of :class:`~mobileconv.deploy.onednn.OneDNNConv2d`: no pre-packed weights, no activation
or residual add as oneDNN post-ops) and ``micro_batch=False`` (no
:class:`~mobileconv.deploy.optimize.MicroBatchedMobileNet`). They alternate within each round in one
process; a speed-up is the median of the per-round ratios ``all / variant``. Writes
``benchmarks/results/cpu_steps.md``.
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch

from mobileconv import create_model
from mobileconv.cli._args import check_image_size, cpu_threads, positive_int, registered_model
from mobileconv.deploy.optimize import optimize_for_inference
from mobileconv.engine.checkpoint import atomic_write
from mobileconv.engine.bench import (BenchConfig, make_batch, make_inference_step, num_threads, paired_ratio,
                                     summarize_times, time_variants)

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("mixnet_s", "mixnet_l", "xsep_mobilenetv3_small_100", "mobilenetv3_large_100")
VARIANTS = {"all": {}, "onednn=False": {"onednn": False}, "micro_batch=False": {"micro_batch": False}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", type=registered_model, default=list(MODELS))
    p.add_argument("--batch-sizes", nargs="+", type=positive_int, default=[1, 32])
    p.add_argument("--threads", type=cpu_threads, default=2)
    p.add_argument("--image-size", type=positive_int, default=224)
    p.add_argument("--rounds", type=positive_int, default=7)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    try:
        check_image_size(args.models, args.image_size)
    except ValueError as e:
        p.error(str(e))

    rows = []
    for batch_size in args.batch_sizes:
        config = BenchConfig(mode="infer", batch_size=batch_size, image_size=args.image_size, threads=args.threads,
                             rounds=args.rounds, iters=20 if batch_size == 1 else 2, warmup=5 if batch_size == 1 else 2)
        with num_threads(config.threads):
            batch = make_batch(config, args.image_size, 3, 1000)
            for name in args.models:
                torch.manual_seed(0)
                model = create_model(name)
                steps = {variant: make_inference_step(optimize_for_inference(model, example_input=batch[0][:1],
                                                                             **kwargs), config)
                         for variant, kwargs in VARIANTS.items()}
                times = time_variants(steps, batch, config, progress=True, desc=f"{name} b{batch_size}")
                m = {k: summarize_times(k, v, batch_size) for k, v in times.items()}
                ratios = [paired_ratio(m["all"].round_images_per_s, m[v].round_images_per_s) for v in VARIANTS
                          if v != "all"]
                rows.append(f"| {name} | {batch_size} | " + " | ".join(f"{m[v].images_per_s:.1f}" for v in VARIANTS)
                            + " | " + " | ".join(f"x{r:.2f}" for r in ratios) + " |")
                print(rows[-1], file=sys.stderr)

    report = "\n".join([
        "# CPU steps of optimize_for_inference (benchmarks/cpu_steps.py)", "",
        f"Command: `python benchmarks/cpu_steps.py {' '.join(sys.argv[1:])}`  ",
        f"Date: {datetime.datetime.now().isoformat(timespec='seconds')}; torch {torch.__version__}; "
        f"{args.threads} threads, {args.image_size}x{args.image_size}, fp32, {args.rounds} alternating rounds.", "",
        "Speed-up = what the step switched off buys: the median over rounds of img/s of `all` over img/s "
        "of the variant.", "",
        "| model | batch | img/s all | img/s onednn=False | img/s micro_batch=False | oneDNN step | "
        "micro-batching step |", "| --- | --- | --- | --- | --- | --- | --- |", *rows, ""])
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / "cpu_steps.md", lambda f: f.write(report.encode()))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
