"""Per-group tensors for MixNet's blocks vs one fused depthwise conv (issue #6: measured, left out).

``optimize_for_inference`` runs each MixConv as one depthwise conv whose kernels are zero-padded
to the largest. On a contiguous tensor of its own, each group's conv at its own kernel size
skips those zero taps, but a channel slice of a channels_last activation is strided, so the
groups cannot be sliced out of one tensor for free. Per-group
tensors avoid the slicing: in :class:`PerGroupInvertedResidual` the expansion conv is one 1x1
conv per depthwise group, each writing its group's channels to a tensor of its own; each group
is convolved at its own kernel size; squeeze-excite pools and scales per group; and the
projection sums one 1x1 conv per group (the first with the skip connection, the others added
in place by oneDNN's ``add`` post-op). Every conv is an ``OneDNNConv2d`` with the block's BNs
folded and its activation as post-op, as in the optimised model.

The script times each mixed-kernel block of the model against the optimised block on the
input it gets in a batch-32 forward pass (a chunk of the batch in micro-batched stages), and
the whole optimised model with those blocks swapped, alternating in one process. Writes
``benchmarks/results/per_group_tensors.{md,json,png}``.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mobileconv import create_model
from mobileconv.cli._args import check_image_size, cpu_threads, positive_int, registered_model
from mobileconv.deploy.onednn import OneDNNConv2d
from mobileconv.deploy.optimize import optimize_for_inference
from mobileconv.engine.bench import (BenchConfig, compare_models, compare_on, num_threads, script_environment,
                                     write_report)
from mobileconv.engine.checkpoint import save_figure
from mobileconv.layers import MixConv2d
from mobileconv.models._blocks import InvertedResidual

RESULTS = Path(__file__).resolve().parent / "results"


def _ranges(sizes: list[int]) -> list[tuple[int, int]]:
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [(s, s + n) for s, n in zip(starts, sizes)]


def merge_groups(splits: list[int], kernel_sizes: list[int], tensors: int | None) -> tuple[list[int], list[int]]:
    """Adjacent depthwise groups merged into ``tensors`` tiers (all groups apart for ``None``), each at its largest
    kernel, split where the tiers' depthwise multiply-adds (channels x k^2) are fewest."""
    g = len(splits)
    if tensors is None or tensors >= g:
        return list(splits), list(kernel_sizes)
    best = None
    for cuts in itertools.combinations(range(1, g), tensors - 1):
        bounds = (0, *cuts, g)
        tiers = [(sum(splits[a:b]), max(kernel_sizes[a:b])) for a, b in zip(bounds, bounds[1:])]
        cost = sum(c * k * k for c, k in tiers)
        if best is None or cost < best[0]:
            best = (cost, tiers)
    return [c for c, _ in best[1]], [k for _, k in best[1]]


def _conv(weight: torch.Tensor, bias: torch.Tensor | None, *, stride: int = 1, groups: int = 1,
          act: nn.Module | None = None) -> OneDNNConv2d:
    """A channels_last ``OneDNNConv2d`` with this weight (symmetric padding) and bias."""
    out_channels, in_per_group, k, _ = weight.shape
    conv = nn.Conv2d(in_per_group * groups, out_channels, k, stride, (k - 1) // 2, groups=groups,
                     bias=bias is not None)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return OneDNNConv2d.from_conv(conv.to(memory_format=torch.channels_last).requires_grad_(False), act)


class PerGroupInvertedResidual(nn.Module):
    """An optimised MixNet inverted residual with one tensor per depthwise group (inference only).

    Built from the block ``optimize_for_inference`` made (BNs folded, ``OneDNNConv2d`` convs, the
    MixConv fused into one zero-padded depthwise conv) and the ``MixConv2d`` it came from, for
    its channel splits and kernel sizes. The 1x1 convs may have 1 or 2 groups (MixNet's
    ``a1.1`` / ``p1.1``); a depthwise group that straddles two of their groups gets zero weights
    for the channels outside each one.
    """

    def __init__(self, block: InvertedResidual, mixconv: MixConv2d, tensors: int | None = None) -> None:
        super().__init__()
        pw, dw, pwl = block.conv_pw, block.conv_dw, block.conv_pwl
        cin, cmid, cout = pw.in_channels, pw.out_channels, pwl.out_channels
        splits, kernel_sizes = merge_groups(mixconv.splits, mixconv.kernel_sizes, tensors)
        groups = _ranges(splits)
        self.splits, self.use_skip, self.se = splits, block.use_skip, block.se
        self.input_groups = pw.groups
        in_parts, mid_parts = _ranges([cin // pw.groups] * pw.groups), _ranges([cmid // pw.groups] * pw.groups)
        self.expand, self.depthwise, self.expand_source = nn.ModuleList(), nn.ModuleList(), []
        big = dw.kernel_size[0]
        for (a, b), k in zip(groups, kernel_sizes):
            owners = [e for e, (ma, mb) in enumerate(mid_parts) if ma < b and a < mb]
            if len(owners) == 1:  # the group's channels come from one part of the input (all of it without groups)
                weight, source = pw.weight[a:b], owners[0] if pw.groups > 1 else -1
            else:  # from two: a dense conv on the whole input, zero where the grouped conv has no weight
                weight, source = torch.zeros(b - a, cin, 1, 1), -1
                for c in range(a, b):
                    e = c // (cmid // pw.groups)
                    weight[c - a, in_parts[e][0]:in_parts[e][1]] = pw.weight[c]
            self.expand.append(_conv(weight, pw.bias[a:b], act=pw.act))
            self.expand_source.append(source)
            p = (big - k) // 2
            self.depthwise.append(_conv(dw.weight[a:b, :, p:p + k, p:p + k], dw.bias[a:b], stride=dw.stride[0],
                                        groups=b - a, act=dw.act))
        # projection: per output part, one conv per depthwise group that feeds it
        out_parts, mid_parts = _ranges([cout // pwl.groups] * pwl.groups), _ranges([cmid // pwl.groups] * pwl.groups)
        self.project, self.plan = nn.ModuleList(), []
        for (oa, ob), (ma, mb) in zip(out_parts, mid_parts):
            part = []
            for g, (a, b) in enumerate(groups):
                lo, hi = max(a, ma), min(b, mb)
                if lo >= hi:
                    continue
                weight = torch.zeros(ob - oa, b - a, 1, 1)
                weight[:, lo - a:hi - a] = pwl.weight[oa:ob, lo - ma:hi - ma]
                part.append((g, len(self.project)))
                self.project.append(_conv(weight, pwl.bias[oa:ob] if len(part) == 1 else None))
            self.plan.append(part)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sources = [x]
        if self.input_groups > 1:  # the parts of a grouped expansion's input, each contiguous
            sources = [p.contiguous(memory_format=torch.channels_last) for p in x.chunk(self.input_groups, 1)]
        ts = [dw(pw(x if s < 0 else sources[s])) for pw, dw, s in zip(self.expand, self.depthwise, self.expand_source)]
        if not isinstance(self.se, nn.Identity):
            se = self.se
            s = torch.cat([t.mean((2, 3)) for t in ts], 1)
            s = se.act1(F.linear(s, se.conv_reduce.weight.flatten(1), se.conv_reduce.bias))
            s = se.gate(F.linear(s, se.conv_expand.weight.flatten(1), se.conv_expand.bias))
            for t, scale in zip(ts, s.split(self.splits, 1)):
                t.mul_(scale[:, :, None, None])
        whole = len(self.plan) == 1
        parts = []
        for part in self.plan:
            y = None
            for g, j in part:
                conv = self.project[j]
                if y is None:
                    y = conv(ts[g], residual=x) if whole and self.use_skip else conv(ts[g])
                else:  # y += conv(t), in place
                    packed, _, padding, stride, dilation, groups = conv._onednn_args(ts[g])[:6]
                    torch.ops.mkldnn._convolution_pointwise_.binary(y, ts[g], packed, None, padding, stride, dilation,
                                                                    groups, "add", None, None, [], None)
            parts.append(y)
        if whole:
            return parts[0]
        y = torch.cat(parts, 1)
        return y.add_(x) if self.use_skip else y


def mixed_blocks(model: nn.Module) -> dict[str, MixConv2d]:
    """``{block name: its MixConv2d}`` for the inverted residuals of ``model`` with mixed kernel sizes.

    Only symmetric padding and undilated kernels (MixNet's own), which the per-group convs assume.
    """
    return {name: block.conv_dw for name, block in model.named_modules()
            if isinstance(block, InvertedResidual) and isinstance(block.conv_dw, MixConv2d)
            and len(set(block.conv_dw.kernel_sizes)) > 1 and block.conv_dw.padding == ""
            and not block.conv_dw.dilated}


def swap_blocks(optimized: nn.Module, blocks: dict[str, MixConv2d], tensors: int | None = None) -> nn.Module:
    """``optimized`` with each of ``blocks`` a :class:`PerGroupInvertedResidual`, in place."""
    with torch.no_grad():
        for name, mixconv in blocks.items():
            optimized.set_submodule(name, PerGroupInvertedResidual(optimized.get_submodule(name), mixconv, tensors))
    return optimized


def block_inputs(optimized: nn.Module, names: list[str], batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input each block gets first in a forward pass of ``optimized`` on ``batch``."""
    inputs: dict[str, torch.Tensor] = {}

    def keep_first(name: str, args: tuple) -> None:
        if name not in inputs:
            inputs[name] = args[0].clone()

    hooks = [optimized.get_submodule(n).register_forward_pre_hook(lambda m, args, n=n: keep_first(n, args))
             for n in names]
    with torch.inference_mode():
        optimized(batch)
    for h in hooks:
        h.remove()
    return inputs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=registered_model, default="mixnet_s")
    p.add_argument("--batch-sizes", nargs="+", type=positive_int, default=[1, 32], help="whole-model batch sizes")
    p.add_argument("--image-size", type=positive_int, default=224)
    p.add_argument("--threads", type=cpu_threads, default=2)
    p.add_argument("--rounds", type=positive_int, default=7)
    p.add_argument("--tensors", type=positive_int, default=None, metavar="N",
                   help="at most N tensors per block: adjacent groups merged into tiers at their largest kernel, "
                        "split where the depthwise multiply-adds are fewest (default: one per group)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    try:
        check_image_size([args.model], args.image_size)
    except ValueError as e:
        p.error(str(e))
    torch.manual_seed(0)
    model = create_model(args.model)
    blocks = mixed_blocks(model)
    if not blocks:
        p.error(f"{args.model} has no inverted residual with mixed kernel sizes (and symmetric padding: the "
                "prototype does not do TF SAME padding or dilated kernels)")
    with num_threads(args.threads):
        example = torch.randn(1, 3, args.image_size, args.image_size)
        optimized = optimize_for_inference(model, example_input=example)
        swapped = swap_blocks(copy.deepcopy(optimized), blocks, args.tensors)
        big = max(args.batch_sizes)
        batch = torch.randn(big, 3, args.image_size, args.image_size)
        with torch.inference_mode():
            expected, got = optimized(batch), swapped(batch)
        max_diff = ((got - expected).abs().max() / expected.abs().max()).item()
        rows = []
        for name, x in block_inputs(optimized, list(blocks), batch).items():
            config = BenchConfig(batch_size=x.shape[0], rounds=args.rounds, iters=5, warmup=2)
            fused, ours = optimized.get_submodule(name), swapped.get_submodule(name)
            # each call gets a fresh copy: the fused block's squeeze-excite scales in place, and the skip reads x
            timed = compare_on({"fused": lambda t, m=fused: m(t.clone()), "per_group": lambda t, m=ours: m(t.clone())},
                               x, config)
            rows.append({"block": name, "kernels": list(blocks[name].kernel_sizes), "input": list(x.shape), **timed})
            print(f"{name}: x{rows[-1]['speedup']:.2f}", file=sys.stderr)
        whole = compare_models({"fused": optimized, "per_group": swapped}, args.batch_sizes, args.image_size,
                               args.rounds)
    env = script_environment("per_group_tensors.py", sys.argv[1:], threads=args.threads, model=args.model,
                             tensors=args.tensors or "one per group",
                             image_size=args.image_size, rounds=args.rounds, block_batch_size=big, max_rel_diff=max_diff)
    report = markdown(env, rows, whole)
    name = "per_group_tensors" if args.tensors is None else f"per_group_tensors_{args.tensors}_tensors"
    write_report(args.out, name, report, {"environment": env, "blocks": rows, "whole_model": whole})
    plot(rows, whole, env, args.out / f"{name}.png")
    print(report)
    return 0


def markdown(env: dict, rows: list[dict], whole: list[dict]) -> str:
    out = ["# Per-group tensors vs one fused depthwise conv in MixNet's blocks (issue #6)", "",
           f"`{env['command']}`, {env['date']}, torch {env['torch']}, {env['threads']} threads, {env['model']} at "
           f"{env['image_size']}x{env['image_size']}, {env['rounds']} alternating rounds. fused = the block of "
           "`optimize_for_inference`; per group = `PerGroupInvertedResidual` (tensors per block: "
           f"{env['tensors']}; merged groups run at their largest kernel). "
           "speed-up = fused time / per-group time, median of the per-round ratios. Whole-model output of the two "
           f"at batch {env['block_batch_size']}: max difference {env['max_rel_diff']:.1e} of the output scale.", "",
           "Whole optimised model:", "", "| batch | fused ms | per group ms | speed-up |", "| --- | --- | --- | --- |",
           *[f"| {w['batch_size']} | {w['fused_ms']:.2f} | {w['per_group_ms']:.2f} | **x{w['speedup']:.2f}** |"
             for w in whole],
           "", f"Per block, on the input it gets in a batch-{env['block_batch_size']} forward pass:", "",
           "| block | kernels | input (N, C, H, W) | fused ms | per group ms | speed-up |",
           "| --- | --- | --- | --- | --- | --- |"]
    out += [f"| {r['block']} | {','.join(map(str, r['kernels']))} | {'x'.join(map(str, r['input']))} | "
            f"{r['fused_ms']:.2f} | {r['per_group_ms']:.2f} | x{r['speedup']:.2f} |" for r in rows]
    return "\n".join(out)


def plot(rows: list[dict], whole: list[dict], env: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    bars = ax.bar(range(len(rows)), [r["speedup"] for r in rows], color="tab:blue")
    ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(range(len(rows)), [r["block"].replace("blocks.", "") for r in rows], fontsize=8)
    ax.set_xlabel("block (stage.index)")
    ax.set_ylabel("fused time / per-group time (x)")
    models = ", ".join(f"batch {w['batch_size']} x{w['speedup']:.2f}" for w in whole)
    ax.set_title(f"{env['model']}: per-group tensors, CPU fp32, {env['threads']} threads; whole model: {models}",
                 fontsize=9)
    save_figure(fig, path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
