"""A depthwise kernel of our own for MixConv vs oneDNN's zero-padded conv (issue #6: measured, left out).

``optimize_for_inference`` runs each MixConv as one oneDNN depthwise conv whose kernels are
zero-padded to the largest: MixNet-S executes 63M depthwise multiply-adds per image where 39M
would do. ``benchmarks/mixed_depthwise.cpp`` runs each channel group at its own kernel size,
with bias and activation fused (channels_last fp32, OpenMP, built here with ``g++ -O3
-march=native``, loaded with ``ctypes``). This script times it against the oneDNN call
(``OneDNNConv2d``, activation as post-op) on every mixed depthwise layer of the model, at the
batch sizes of ``--batch-sizes`` (default 1, 4 and 32), and as the whole optimised model with
its depthwise convs swapped, alternating in one process. Writes ``benchmarks/results/depthwise_kernel.{md,json,png}``. Needs ``g++``.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from mobileconv import create_model
from mobileconv.cli._args import check_image_size, cpu_threads, positive_int, registered_model
from mobileconv.deploy.onednn import OneDNNConv2d
from mobileconv.deploy.optimize import optimize_for_inference
from mobileconv.engine.bench import (BenchConfig, compare_models, compare_on, num_threads, script_environment,
                                     write_report)
from mobileconv.engine.checkpoint import save_figure
from mobileconv.layers import MixConv2d

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "mixed_depthwise.cpp"
RESULTS = HERE / "results"
ACTIVATIONS = {nn.Identity: 0, nn.ReLU: 1, nn.SiLU: 2, nn.Hardswish: 3}
VECTOR = 16  # channels per vector in the kernel: each group needs at least this many


def build_library(out_dir: Path) -> ctypes.CDLL:
    """Compile :data:`SOURCE` into ``out_dir`` and load it."""
    compiler = shutil.which("g++")
    if compiler is None:
        raise RuntimeError("benchmarks/depthwise_kernel.py needs g++ on PATH to build mixed_depthwise.cpp")
    lib = out_dir / "mixed_depthwise.so"
    subprocess.run([compiler, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17", str(SOURCE),
                    "-o", str(lib)], check=True)
    return ctypes.CDLL(str(lib))


def _ints(values: list[int]) -> ctypes.Array:
    return (ctypes.c_int * len(values))(*values)


class MixedDepthwise(nn.Module):
    """A MixConv's fused depthwise conv (with its folded BN as bias and its activation) run by the kernel.

    Built from the ``nn.Conv2d`` / ``OneDNNConv2d`` that ``optimize_for_inference`` made of a
    ``MixConv2d`` (symmetric padding): each group's ``k x k`` kernel is cut back out of the
    centre of the fused one. Inference only: CPU, float32, channels_last input.
    """

    def __init__(self, lib: ctypes.CDLL, fused: nn.Conv2d, kernel_sizes: list[int], splits: list[int]) -> None:
        super().__init__()
        big = fused.kernel_size[0]
        if fused.padding != ((big - 1) // 2,) * 2 or min(splits) < VECTOR or fused.bias is None:
            raise ValueError(f"needs symmetric padding, a bias and >= {VECTOR} channels per group, got {fused}")
        act = getattr(fused, "act", nn.Identity())
        if type(act) not in ACTIVATIONS:
            raise ValueError(f"activation {type(act).__name__} is not one of {[t.__name__ for t in ACTIVATIONS]}")
        self.lib, self.stride, self.act = lib, fused.stride[0], ACTIVATIONS[type(act)]
        self.weights, start = [], 0
        for k, c in zip(kernel_sizes, splits):
            p = (big - k) // 2
            w = fused.weight.detach()[start:start + c, 0, p:p + k, p:p + k]
            self.weights.append(w.reshape(c, k * k).t().contiguous())  # (tap, channel)
            start += c
        self.bias = fused.bias.detach().contiguous()
        self.groups = [_ints([sum(splits[:i]) for i in range(len(splits))]), _ints(splits), _ints(kernel_sizes),
                       _ints([(k - 1) // 2 for k in kernel_sizes]), _ints([(k - 1) // 2 for k in kernel_sizes])]
        self.pointers = (ctypes.c_void_p * len(self.weights))(*[w.data_ptr() for w in self.weights])
        self.channels, self.num_groups = start, len(splits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if c != self.channels or x.dtype != torch.float32 or not x.is_contiguous(memory_format=torch.channels_last):
            raise ValueError(f"expected a channels_last float32 input with {self.channels} channels, got "
                             f"{tuple(x.shape)} {x.dtype}")
        s = self.stride
        y = torch.empty(n, c, (h - 1) // s + 1, (w - 1) // s + 1, memory_format=torch.channels_last)
        self.lib.mixed_depthwise(ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(y.data_ptr()), n, h, w, c,
                                 y.shape[2], y.shape[3], s, self.num_groups, *self.groups, self.pointers,
                                 ctypes.c_void_p(self.bias.data_ptr()), self.act, torch.get_num_threads())
        return y


def mixed_layers(model: nn.Module, image_size: int) -> dict[str, tuple[MixConv2d, tuple[int, ...]]]:
    """``{module name: (MixConv2d, its input shape for one image)}`` for the mixed-kernel MixConvs of ``model``."""
    probe, found = copy.deepcopy(model).eval(), {}  # eval: the probe must not move the caller's BN statistics
    for n, m in probe.named_modules():
        if isinstance(m, MixConv2d) and len(set(m.kernel_sizes)) > 1:
            m.register_forward_pre_hook(lambda m, args, n=n: found.__setitem__(n, (m, tuple(args[0].shape[1:]))))
    with torch.no_grad():
        probe(torch.zeros(1, 3, image_size, image_size))
    return found


def swap_depthwise(lib: ctypes.CDLL, optimized: nn.Module, layers: dict) -> nn.Module:
    """``optimized`` with the fused conv of every one of ``layers`` run by the kernel, in place."""
    for name, (mix, _) in layers.items():
        optimized.set_submodule(name, MixedDepthwise(lib, optimized.get_submodule(name), mix.kernel_sizes,
                                                     mix.splits))
    return optimized


def swap_plain_depthwise(lib: ctypes.CDLL, optimized: nn.Module) -> int:
    """Run every plain depthwise conv of ``optimized`` (one square kernel, symmetric padding, a bias, at least
    :data:`VECTOR` channels) by the kernel, as a MixConv of one group; in place. Returns how many."""
    names = [n for n, m in optimized.named_modules()
             if isinstance(m, OneDNNConv2d) and m.groups == m.in_channels == m.out_channels >= VECTOR
             and m.kernel_size[0] == m.kernel_size[1] and m.padding[0] == m.padding[1] == (m.kernel_size[0] - 1) // 2
             and m.bias is not None and type(getattr(m, "act", nn.Identity())) in ACTIVATIONS]
    for name in names:
        conv = optimized.get_submodule(name)
        optimized.set_submodule(name, MixedDepthwise(lib, conv, [conv.kernel_size[0]], [conv.in_channels]))
    return len(names)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=registered_model, default="mixnet_s")
    p.add_argument("--batch-sizes", nargs="+", type=positive_int, default=[1, 4, 32], help="per-layer batch sizes")
    p.add_argument("--model-batch-sizes", nargs="+", type=positive_int, default=[1, 32], help="whole-model batch sizes")
    p.add_argument("--image-size", type=positive_int, default=224)
    p.add_argument("--threads", type=cpu_threads, default=2)
    p.add_argument("--rounds", type=positive_int, default=7)
    p.add_argument("--plain-models", nargs="*", type=registered_model, default=[],
                   help="also time these whole models with their plain depthwise convs (one kernel size) run by "
                        "the kernel, at --model-batch-sizes")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    try:
        check_image_size([args.model, *args.plain_models], args.image_size)
    except ValueError as e:
        p.error(str(e))
    with tempfile.TemporaryDirectory() as tmp, num_threads(args.threads):
        lib = build_library(Path(tmp))
        torch.manual_seed(0)
        model = create_model(args.model)
        layers = mixed_layers(model, args.image_size)
        optimized = optimize_for_inference(model, example_input=torch.randn(1, 3, args.image_size, args.image_size))
        rows = []
        for batch_size in args.batch_sizes:
            config = BenchConfig(batch_size=batch_size, rounds=args.rounds, iters=5, warmup=2)
            for name, (mix, shape) in layers.items():
                onednn = optimized.get_submodule(name)
                ours = MixedDepthwise(lib, onednn, mix.kernel_sizes, mix.splits)
                x = torch.randn(batch_size, *shape).contiguous(memory_format=torch.channels_last)
                with torch.inference_mode():
                    expected = onednn(x)
                    err = ((ours(x) - expected).abs().max() / expected.abs().max()).item()
                timed = compare_on({"onednn": onednn, "ours": ours}, x, config)
                fused_macs = x[0].numel() * onednn.kernel_size[0] ** 2 // mix.stride ** 2
                true_macs = sum(c * k * k for c, k in zip(mix.splits, mix.kernel_sizes)) * x[0, 0].numel() \
                    // mix.stride ** 2
                rows.append({"batch_size": batch_size, "layer": name, "kernels": list(mix.kernel_sizes),
                             "input": list(shape), "stride": mix.stride, "macs_fused_over_true": fused_macs / true_macs,
                             **timed, "max_rel_diff": err})
                print(f"b{batch_size} {name}: x{rows[-1]['speedup']:.2f}", file=sys.stderr)
        swapped = swap_depthwise(lib, copy.deepcopy(optimized), layers)
        whole_rows = compare_models({"onednn": optimized, "ours": swapped}, args.model_batch_sizes, args.image_size,
                                    args.rounds)
        plain_rows = []
        for name in args.plain_models:
            torch.manual_seed(0)
            plain = optimize_for_inference(create_model(name), example_input=torch.randn(1, 3, args.image_size,
                                                                                       args.image_size))
            plain_swapped = copy.deepcopy(plain)
            count = swap_plain_depthwise(lib, plain_swapped)
            plain_rows += [{"model": name, "layers": count, **row} for row in compare_models(
                {"onednn": plain, "ours": plain_swapped}, args.model_batch_sizes, args.image_size, args.rounds)]
    env = script_environment("depthwise_kernel.py", sys.argv[1:], threads=args.threads, model=args.model,
                             image_size=args.image_size, rounds=args.rounds)
    report = markdown(env, rows, whole_rows, plain_rows)
    write_report(args.out, "depthwise_kernel", report, {"environment": env, "layers": rows, "whole_model": whole_rows,
                                                        "plain_models": plain_rows})
    plot(rows, whole_rows, env, args.out / "depthwise_kernel.png")
    print(report)
    return 0


def markdown(env: dict, rows: list[dict], whole: list[dict], plain: list[dict] = ()) -> str:
    out = ["# A mixed-kernel depthwise kernel of our own vs oneDNN (issue #6)", "",
           f"`{env['command']}`, {env['date']}, torch {env['torch']}, {env['threads']} threads, {env['model']} at "
           f"{env['image_size']}x{env['image_size']}, {env['rounds']} alternating rounds. oneDNN = the "
           "`OneDNNConv2d` of `optimize_for_inference` (kernels zero-padded to the largest, activation as post-op); "
           "ours = `benchmarks/mixed_depthwise.cpp` (each group at its own kernel size). speed-up = oneDNN time / "
           "ours, median of the per-round ratios.", "",
           "Whole optimised model, its mixed depthwise convs run by oneDNN or by ours:", "",
           "| batch | oneDNN ms | ours ms | speed-up |", "| --- | --- | --- | --- |",
           *[f"| {w['batch_size']} | {w['onednn_ms']:.2f} | {w['ours_ms']:.2f} | **x{w['speedup']:.2f}** |"
             for w in whole],
           "", "Per layer:", "",
           "| batch | layer | kernels | input (C, H, W) | stride | fused / true MACs | oneDNN ms | ours ms | speed-up | "
           "max diff / scale |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    out += [f"| {r['batch_size']} | {r['layer']} | {','.join(map(str, r['kernels']))} | "
            f"{'x'.join(map(str, r['input']))} | {r['stride']} | {r['macs_fused_over_true']:.2f} | "
            f"{r['onednn_ms']:.2f} | {r['ours_ms']:.2f} | x{r['speedup']:.2f} | {r['max_rel_diff']:.1e} |"
            for r in rows]
    # the per-layer times summed per batch size: what the layers cost, called one by one
    for b in dict.fromkeys(r["batch_size"] for r in rows):
        mine = [r for r in rows if r["batch_size"] == b]
        out.append(f"| {b} | all {len(mine)} layers, summed | | | | | {sum(r['onednn_ms'] for r in mine):.2f} | "
                   f"{sum(r['ours_ms'] for r in mine):.2f} | | |")
    if plain:
        out += ["", "Whole optimised models whose plain depthwise convs (one kernel size) are run by the kernel:", "",
                "| model | layers | batch | oneDNN ms | ours ms | speed-up |", "| --- | --- | --- | --- | --- | --- |",
                *[f"| {r['model']} | {r['layers']} | {r['batch_size']} | {r['onednn_ms']:.2f} | {r['ours_ms']:.2f} | "
                  f"**x{r['speedup']:.2f}** |" for r in plain]]
    return "\n".join(out)


def plot(rows: list[dict], whole: list[dict], env: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(dict.fromkeys(r["layer"] for r in rows))
    batches = list(dict.fromkeys(r["batch_size"] for r in rows))
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(batches)
    for i, b in enumerate(batches):
        vals = [next(r["speedup"] for r in rows if r["layer"] == layer and r["batch_size"] == b) for layer in layers]
        bars = ax.bar([j + (i - (len(batches) - 1) / 2) * width for j in range(len(layers))], vals, width,
                      label=f"batch {b}")
        ax.bar_label(bars, fmt="%.2f", fontsize=6)
    ax.plot(range(len(layers)), [r["macs_fused_over_true"] for r in rows if r["batch_size"] == batches[0]], "k_",
            markersize=14, mew=2, label="fused / true MACs (the ideal)")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(range(len(layers)), [layer.replace(".conv_dw", "") for layer in layers], fontsize=7, rotation=20)
    ax.set_ylabel("oneDNN time / our kernel's time (x)")
    models = ", ".join(f"batch {w['batch_size']} x{w['speedup']:.2f}" for w in whole)
    ax.set_title(f"{env['model']} mixed depthwise layers, CPU fp32, {env['threads']} threads; whole model: {models}",
                 fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
