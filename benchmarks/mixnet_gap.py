"""Where MixNet-S's MACs/s gap to MobileNetV3-Large comes from (issue #6), side by side.

Issue #6 asks for mixnet_s to run at least 0.8x the MACs per second of mobilenetv3_large_100,
both through ``optimize_for_inference``. This script attributes what is left of the gap by
timing, in the same alternating rounds of one process, the optimised mobilenetv3_large_100 and
the optimised mixnet_s with none, one or both of two MixNet traits taken out:

* ``relu``: every swish (SiLU) becomes ReLU, the activation of MobileNetV3's early stages
  (its later ones use h-swish, about as cheap). In the oneDNN convs it is the post-op.
* ``k3``: every mixed depthwise conv keeps only the centre 3x3 of its fused kernel. That is
  fewer multiply-adds than MixConv's true count (its groups have 3x3 to 11x11 kernels), so it
  bounds what any depthwise kernel, however good, could save: if ``k3`` stays below 0.8, no
  MixConv implementation reaches the target alone.

These variants are not models anyone should use: they compute something else. They exist to
say how many milliseconds each trait costs. Every mixnet_s variant is scored with mixnet_s's
true MACs (``FlopCounterMode`` / 2), so its ratio is the MACs/s parity mixnet_s would reach if
that trait cost nothing. It also times one conv with each activation as its oneDNN post-op
(MixNet-S's 40 -> 240 1x1 expansion at 28x28). Writes ``benchmarks/results/mixnet_gap.{md,json,png}``.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
from pathlib import Path

import torch
from torch import nn

from mobileconv import create_model
from mobileconv.cli._args import check_image_size, cpu_threads, positive_int, registered_model
from mobileconv.deploy.onednn import OneDNNConv2d
from mobileconv.deploy.optimize import optimize_for_inference
from mobileconv.engine.bench import (BenchConfig, count_macs, make_batch, make_inference_step, num_threads,
                                     paired_ratio, script_environment, summarize_times, time_variants,
                                     write_report)
from mobileconv.engine.checkpoint import save_figure
from mobileconv.layers import MixConv2d

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 0.8
BASELINE = "mobilenetv3_large_100"
VARIANTS = ("as published", "relu", "k3", "relu + k3")
# the post-op table: MixNet-S's stage-3 expansion, 40 -> 240 channels at 28x28 (224 input)
POST_OP_CONV = (40, 240, 28)
POST_OPS = {"none": nn.Identity, "ReLU": nn.ReLU, "h-swish": nn.Hardswish, "swish": nn.SiLU}


def swish_to_relu(model: nn.Module) -> int:
    """Replace every ``nn.SiLU`` (a oneDNN post-op or a module of its own) by ``nn.ReLU``, in place; how many."""
    names = [name for name, m in model.named_modules() if type(m) is nn.SiLU]
    for name in names:
        model.set_submodule(name, nn.ReLU(inplace=True))
    return len(names)


def crop_mixed_kernels(model: nn.Module, mixed: list[str]) -> int:
    """Cut the fused depthwise conv at each of ``mixed`` (module names) to its centre 3x3, in place; how many."""
    for name in mixed:
        old = model.get_submodule(name)
        if type(old) not in (nn.Conv2d, OneDNNConv2d) or old.kernel_size[0] < 3 or old.padding_mode != "zeros":
            raise TypeError(f"{name}: expected the fused depthwise nn.Conv2d of a MixConv, got {type(old).__name__}")
        p = (old.kernel_size[0] - 3) // 2
        new = nn.Conv2d(old.in_channels, old.out_channels, 3, old.stride, 1, groups=old.groups,
                        bias=old.bias is not None).to(old.weight)
        with torch.no_grad():
            new.weight.copy_(old.weight[:, :, p:p + 3, p:p + 3])
            if old.bias is not None:
                new.bias.copy_(old.bias)
        new.requires_grad_(False)
        new = new.to(memory_format=torch.channels_last)
        model.set_submodule(name, OneDNNConv2d.from_conv(new, old.act) if isinstance(old, OneDNNConv2d) else new)
    return len(mixed)


def time_post_ops(config: BenchConfig, image_size: int) -> dict[str, float]:
    """``{activation: ms per call}`` of :data:`POST_OP_CONV` as a ``OneDNNConv2d`` with each of :data:`POST_OPS`."""
    c_in, c_out, size = POST_OP_CONV
    size = max(1, size * image_size // 224)
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, 1).requires_grad_(False).to(memory_format=torch.channels_last)
    x = torch.randn(config.batch_size, c_in, size, size).contiguous(memory_format=torch.channels_last)
    steps = {name: make_inference_step(OneDNNConv2d.from_conv(conv, act()), config) for name, act in POST_OPS.items()}
    times = time_variants(steps, (x,), config, progress=True, desc="post-ops")
    return {name: summarize_times(name, t, config.batch_size).latency_p50_ms for name, t in times.items()}


def build_variants(name: str, example: torch.Tensor) -> dict[str, nn.Module]:
    """The optimised ``name`` and its what-if copies (:data:`VARIANTS`), from the same weights."""
    torch.manual_seed(0)
    model = create_model(name)
    mixed = [n for n, m in model.named_modules() if isinstance(m, MixConv2d) and len(set(m.kernel_sizes)) > 1]
    if not mixed:
        raise ValueError(f"{name} has no MixConv with mixed kernel sizes to attribute")
    optimized = optimize_for_inference(model, example_input=example)
    out = {}
    for variant in VARIANTS:
        net = copy.deepcopy(optimized)
        if "relu" in variant and not swish_to_relu(net):
            raise ValueError(f"{name} has no swish activation to replace")
        if "k3" in variant:
            crop_mixed_kernels(net, mixed)
        out[variant] = net
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=registered_model, default="mixnet_s",
                   help="the MixNet to attribute (default mixnet_s)")
    p.add_argument("--baseline", type=registered_model, default=BASELINE,
                   help=f"the model to compare with (default {BASELINE})")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--image-size", type=positive_int, default=224)
    p.add_argument("--threads", type=cpu_threads, default=2)
    p.add_argument("--rounds", type=positive_int, default=7)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    try:
        check_image_size([args.model, args.baseline], args.image_size)
    except ValueError as e:
        p.error(str(e))
    config = BenchConfig(mode="infer", batch_size=args.batch_size, image_size=args.image_size, threads=args.threads,
                         rounds=args.rounds, iters=2, warmup=2)
    load_before = os.getloadavg()
    with num_threads(config.threads):
        batch = make_batch(config, args.image_size, 3, 1000)
        example = batch[0][:1]
        macs = {n: count_macs(create_model(n), args.image_size) for n in (args.model, args.baseline)}
        try:
            variants = build_variants(args.model, example)
        except ValueError as e:  # not a MixNet: one line, not a traceback
            p.error(f"--model {args.model}: {e}")
        nets = {f"{args.model}, {v}": net for v, net in variants.items()}
        torch.manual_seed(0)
        nets[args.baseline] = optimize_for_inference(create_model(args.baseline), example_input=example)
        times = time_variants({k: make_inference_step(net, config) for k, net in nets.items()}, batch, config,
                              progress=True, desc="gap")
        post_ops = time_post_ops(dataclasses.replace(config, iters=5), args.image_size)
    measured = {k: summarize_times(k, t, config.batch_size) for k, t in times.items()}
    base = measured[args.baseline]
    rows = []
    for key, m in measured.items():
        own = macs[args.baseline] if key == args.baseline else macs[args.model]
        parity = paired_ratio([own * r for r in m.round_images_per_s],
                              [macs[args.baseline] * r for r in base.round_images_per_s])
        rows.append({"variant": key, "images_per_s": m.images_per_s, "ms_per_batch": m.latency_p50_ms,
                     "gmacs_per_s": own * m.images_per_s / 1e9, "parity": parity})
    env = script_environment("mixnet_gap.py", sys.argv[1:], threads=args.threads, batch_size=args.batch_size,
                             image_size=args.image_size, rounds=args.rounds,
                             load=f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after", macs_per_image=macs)
    report = markdown(env, rows, post_ops, args)
    write_report(args.out, "mixnet_gap", report, {"environment": env, "rows": rows, "post_op_ms": post_ops})
    plot(rows, args, args.out / "mixnet_gap.png")
    print(report)
    print(f"\nwrote {args.out / 'mixnet_gap'}.md / .json / .png", file=sys.stderr)
    return 0


def markdown(env: dict, rows: list[dict], post_ops: dict[str, float], args: argparse.Namespace) -> str:
    macs = env["macs_per_image"]
    out = ["# Where the MACs/s gap comes from (issue #6)", "",
           f"`{env['command']}`, {env['date']}, torch {env['torch']}, {env['threads']} threads, batch "
           f"{env['batch_size']}, {env['image_size']}x{env['image_size']}, {env['rounds']} alternating rounds, "
           f"load {env['load']}. Every model through `optimize_for_inference` (eager). The {args.model} "
           f"variants are scored with {args.model}'s true MACs ({macs[args.model] / 1e6:.1f}M per image; "
           f"{args.baseline}: {macs[args.baseline] / 1e6:.1f}M): parity = MACs/s over {args.baseline}'s, "
           f"median of the per-round ratios; target {TARGET}.", "",
           "| variant | img/s | ms per batch (p50) | GMAC/s | parity |", "| --- | --- | --- | --- | --- |"]
    out += [f"| {r['variant']} | {r['images_per_s']:.1f} | {r['ms_per_batch']:.1f} | {r['gmacs_per_s']:.1f} | "
            f"{r['parity']:.2f} |" for r in rows]
    out += ["", "`relu`: every swish replaced by ReLU. `k3`: every mixed depthwise kernel cut to its centre 3x3 "
            "(fewer MACs than MixConv's true count: a bound on what a depthwise kernel could save). What-if "
            "variants for attribution only: they compute something else.", "",
            f"One conv, {POST_OP_CONV[0]} -> {POST_OP_CONV[1]} 1x1 at {POST_OP_CONV[2]}x{POST_OP_CONV[2]} (at 224 input; "
            f"scaled with --image-size), batch {env['batch_size']}, each activation as its oneDNN post-op, ms per "
            "call (p50):", "",
            "| " + " | ".join(post_ops) + " |", "| " + " | ".join("---" for _ in post_ops) + " |",
            "| " + " | ".join(f"{v:.2f}" for v in post_ops.values()) + " |"]
    return "\n".join(out)


def plot(rows: list[dict], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [r["variant"] for r in rows]
    bars = ax.bar(range(len(rows)), [r["parity"] for r in rows],
                  color=["tab:grey" if label == args.baseline else "tab:blue" for label in labels])
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.axhline(TARGET, color="tab:red", ls="--", lw=1, label=f"target {TARGET}")
    ax.set_xticks(range(len(rows)), labels, fontsize=7, rotation=15)
    ax.set_ylabel(f"MACs/s over {args.baseline} (x)")
    ax.set_title(f"{args.model}: what each trait costs, optimised, CPU fp32, batch {args.batch_size}, "
                 f"{args.threads} threads", fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
