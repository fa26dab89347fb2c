"""What the oneDNN rewrite of optimize_for_inference buys: ``onednn=True`` vs ``onednn=False``, side by side.

Both variants are ``optimize_for_inference`` of the same weights (BN folded, MixConv / XSepConv
fused, channels_last); the first also runs every conv as a
:class:`~mobileconv.deploy.onednn.OneDNNConv2d` (pre-packed weight, activation and residual add as
oneDNN post-ops). They alternate within each round in one process; the speed-up is the median of
the per-round ratios. Writes ``benchmarks/results/onednn_fusion.md``.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import torch

from mobileconv import create_model
from mobileconv.deploy.optimize import optimize_for_inference
from mobileconv.engine.bench import (BenchConfig, make_batch, make_inference_step, num_threads, paired_ratio,
                                     summarize_times, time_variants)

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("mixnet_s", "mixnet_l", "xsep_mobilenetv3_small_100", "mobilenetv3_large_100")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    rows = []
    for batch_size in args.batch_sizes:
        config = BenchConfig(mode="infer", batch_size=batch_size, image_size=args.image_size, threads=args.threads,
                             rounds=args.rounds, iters=20 if batch_size == 1 else 2, warmup=5 if batch_size == 1 else 2)
        with num_threads(config.threads):
            batch = make_batch(config, args.image_size, 3, 1000)
            for name in args.models:
                torch.manual_seed(0)
                model = create_model(name)
                steps = {str(flag): make_inference_step(optimize_for_inference(model, onednn=flag,
                                                                               example_input=batch[0][:1]), config)
                         for flag in (True, False)}
                times = time_variants(steps, batch, config, progress=True, desc=f"{name} b{batch_size}")
                m = {k: summarize_times(k, v, batch_size) for k, v in times.items()}
                ratio = paired_ratio(m["True"].round_images_per_s, m["False"].round_images_per_s)
                rows.append(f"| {name} | {batch_size} | {m['True'].images_per_s:.1f} | {m['False'].images_per_s:.1f} "
                            f"| x{ratio:.2f} |")
                print(rows[-1], file=sys.stderr)

    report = "\n".join([
        "# oneDNN rewrite (benchmarks/onednn_fusion.py)", "",
        f"Command: `python benchmarks/onednn_fusion.py {' '.join(sys.argv[1:])}`  ",
        f"Date: {datetime.datetime.now().isoformat(timespec='seconds')}; torch {torch.__version__}; "
        f"{args.threads} threads, {args.image_size}x{args.image_size}, fp32, {args.rounds} alternating rounds.", "",
        "| model | batch | img/s onednn=True | img/s onednn=False | speed-up (median of per-round ratios) |",
        "| --- | --- | --- | --- | --- |", *rows, ""])
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / "onednn_fusion.md.tmp"
    tmp.write_text(report)
    os.replace(tmp, args.out / "onednn_fusion.md")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
