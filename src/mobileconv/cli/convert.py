"""`mobileconv convert`: a timm / torchvision / mobileconv checkpoint -> mobileconv's safetensors format;
`mobileconv average`: the mean of several checkpoints' weights (timm's avg_checkpoints.py)."""
from __future__ import annotations

import argparse
from pathlib import PurePath

from ._args import USE_EMA_HELP, call_with_one_line_errors, non_negative_int, positive_int, registered_model


# suffixes that torch.load / timm / torchvision users read with torch.load (deploy.weights.TORCH_SUFFIXES, .tar for
# timm's model_best.pth.tar); importing the constant would import torch for `mobileconv --help`
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")


def register(subparsers) -> None:
    """Add the ``convert`` and ``average`` subcommands."""
    from ..engine.config import EVAL_METRICS

    p = subparsers.add_parser(
        "convert", help="convert a timm / torchvision / mobileconv checkpoint to mobileconv's safetensors format",
        description="Load SRC (a timm, torchvision or mobileconv checkpoint: .safetensors, or .pth/.pt/.bin read "
                    "with torch.load(weights_only=True)) into the model NAME, checking every key and shape, and "
                    "write its state_dict to DST as safetensors (atomically: nothing is written on failure). "
                    "BatchNorm eps of the source is recorded in DST (torchvision MobileNetV3: 1e-3); a mobileconv "
                    "checkpoint's metadata (dataset, classes, img_size, mean, std) is kept.")
    p.add_argument("src", metavar="SRC", help="checkpoint to read")
    p.add_argument("dst", metavar="DST", help="safetensors file to write (replaced if it exists; not a "
                   f"{'/'.join(TORCH_SUFFIXES)} name, which torch.load could not read)")
    p.add_argument("--model", required=True, type=registered_model, metavar="NAME",
                   help="mobileconv model name (see `mobileconv models`)")
    p.add_argument("--num-classes", type=non_negative_int, default=None, metavar="N",
                   help="classes of the model (default: those of the checkpoint's classifier); 0 writes the "
                        "model without its classifier")
    p.add_argument("--use-ema", action="store_true", help=USE_EMA_HELP)
    p.set_defaults(func=run_convert)

    p = subparsers.add_parser(
        "average", help="average the weights of several checkpoints (timm's avg_checkpoints.py)",
        description="Write the mean of the weights of SRC... to --out as safetensors (atomically: nothing is "
                    "written unless every checkpoint is read and fits). A SRC is a checkpoint file or the run folder "
                    "of `mobileconv train --checkpoint-hist N` (its checkpoint-EPOCH.safetensors files). "
                    "Floating-point tensors are averaged; integer ones (BatchNorm's num_batches_tracked) come from the "
                    "latest epoch.")
    p.add_argument("src", nargs="+", metavar="SRC", help="checkpoint files or run folders")
    p.add_argument("--out", required=True, metavar="DST", help="safetensors file to write (replaced if it exists)")
    p.add_argument("--top", type=positive_int, metavar="N",
                   help="average only the N best checkpoints by --metric, as mobileconv train records it in its "
                        "weights files (default: all given)")
    p.add_argument("--metric", choices=EVAL_METRICS, default="top1",
                   help="what --top ranks by: test top-1, top-5 or loss (the lowest first), as --eval-metric "
                        "(default top1)")
    p.add_argument("--use-ema", action="store_true", help=USE_EMA_HELP)
    p.set_defaults(func=run_average)


def check_dst_name(dst: str, command: str = "convert", label: str = "DST") -> None:
    """Refuse a DST named like a torch.load file: it would hold safetensors bytes that torch.load cannot read."""
    suffix = PurePath(dst).suffix.lower()
    if suffix in TORCH_SUFFIXES:
        raise ValueError(f"{label} {dst!r} ends in {suffix}, a torch.load name, but {command} writes safetensors; "
                         f"name it {str(PurePath(dst).with_suffix('.safetensors'))!r}")


def run_convert(args: argparse.Namespace) -> int:
    from ..deploy.weights import convert_checkpoint

    check_dst_name(args.dst)
    info = call_with_one_line_errors(convert_checkpoint, args.src, args.dst, args.model, args.num_classes,
                                     args.use_ema)
    eps = info["bn_eps"]
    eps_text = f"bn eps {eps:g}" if isinstance(eps, float) else "bn eps per layer" if eps else "no BatchNorm"
    ema = ", EMA weights" if args.use_ema else ""
    print(f"{args.src} ({info['source']}{ema}) -> {args.dst}: {args.model}, {info['num_classes']} classes, "
          f"{info['tensors']} tensors, {info['params']:,} params, {eps_text}")
    return 0




def run_average(args: argparse.Namespace) -> int:
    from ..engine.checkpoint import average_checkpoints

    check_dst_name(args.out, "average", "--out")
    info = call_with_one_line_errors(average_checkpoints, args.src, args.out, args.top, args.use_ema, args.metric)
    epochs = f" (epochs {', '.join(map(str, info['epochs']))})" if info["epochs"] else ""
    print(f"averaged {len(info['files'])} checkpoints{epochs} -> {args.out}: {info['tensors']} tensors")
    return 0
