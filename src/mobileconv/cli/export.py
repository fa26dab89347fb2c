"""`mobileconv export`: a model (optionally with a checkpoint) -> a checked ONNX / TorchScript / .pt2 file."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._args import USE_EMA_HELP, call_with_one_line_errors, non_negative_int, positive_int


def register(subparsers) -> None:
    """Add the ``export`` subcommand."""
    p = subparsers.add_parser(
        "export", help="export a model to ONNX / TorchScript / torch.export, checked against PyTorch",
        description="Build the model NAME (with the weights of --checkpoint: a mobileconv, timm or torchvision "
                    "checkpoint), export it, load the file back (ONNX: onnxruntime; TorchScript: torch.jit.load; "
                    "exported-program: torch.export.load), run it on random input and compare with PyTorch. "
                    "The output is written only if max|a-b| / max(1, max|a|) <= --tolerance (a: PyTorch's "
                    "logits), through a temporary file in the same directory; nothing is left on failure. "
                    "BN is folded and MixConv fused first (optimize_for_inference).")
    p.add_argument("name", metavar="NAME", help="model name (see `mobileconv models`)")
    p.add_argument("--format", default=None, metavar="FORMAT",
                   help="onnx, torchscript or exported-program (default: from the --out suffix: "
                        ".onnx, .pt, .pt2; another format's suffix is refused)")
    p.add_argument("--out", required=True, metavar="PATH",
                   help="file to write (replaced if it exists; a symbolic link's target is replaced)")
    p.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="weights: mobileconv .safetensors, or a timm / torchvision state_dict (default: random init)")
    p.add_argument("--use-ema", action="store_true", help=USE_EMA_HELP)
    p.add_argument("--num-classes", type=non_negative_int, default=None, metavar="N",
                   help="classes (default: the checkpoint classifier's, else the model's: 1000, or 10 for "
                        "the _cifar forms); 0 exports the model without its classifier (pooled features)")
    p.add_argument("--input-size", type=positive_int, default=None, metavar="N",
                   help="export for N x N images (default: the size a mobileconv train checkpoint records, else "
                        "the model's, 224 or 32); ONNX and exported programs are static in H and W")
    p.add_argument("--batch-size", type=positive_int, default=2, metavar="N",
                   help="batch of the export example and of the check (default 2)")
    p.add_argument("--static-batch", action="store_true",
                   help="fix the batch size at --batch-size (default: dynamic, checked at N and N + 1)")
    p.add_argument("--opset", type=int, default=None, metavar="N",
                   help="ONNX opset, 17 to 20 (default 17); only with --format onnx")
    p.add_argument("--no-optimize", dest="optimize", action="store_false",
                   help="export the eval model as it is, without BN folding / operator fusion")
    p.add_argument("--impl", default=None, metavar="IMPL",
                   help="with --no-optimize: MixConv / XSepConv implementation, fast (one depthwise conv, the "
                        "default) or reference (split / conv per group / concat)")
    p.add_argument("--tolerance", type=float, default=1e-4, metavar="T",
                   help="largest accepted max|a-b| / max(1, max|a|) (default 1e-4)")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from ..deploy.export import DEFAULT_OPSET, check_export_path, check_format, check_opset, export_model

    fmt = args.format if args.format is not None else _format_from_suffix(args.out)
    check_format(fmt)
    if args.opset is not None and fmt != "onnx":
        raise ValueError(f"--opset {args.opset} applies only to ONNX, not to --format {fmt}")
    opset = DEFAULT_OPSET if args.opset is None else check_opset(args.opset)
    if args.impl is not None and args.optimize:
        raise ValueError(f"--impl {args.impl} applies only with --no-optimize (the optimised export runs every "
                         f"MixConv / XSepConv as plain convs)")
    if args.use_ema and args.checkpoint is None:
        raise ValueError("--use-ema needs --checkpoint FILE")
    check_export_path(args.out, fmt)  # before the (slow) model build
    model, trained_size = call_with_one_line_errors(load_for_export, args.name, args.checkpoint, args.num_classes,
                                                    args.use_ema)
    input_size = args.input_size if args.input_size is not None else trained_size
    result = export_model(model, args.out, fmt, input_size=input_size, batch_size=args.batch_size,
                          dynamic_batch=not args.static_batch, opset=opset, optimize=args.optimize,
                          impl=args.impl or "fast", tolerance=args.tolerance,
                          log=lambda line: print(line, file=sys.stderr, flush=True))
    print(result.summary(args.name))
    return 0


def load_for_export(name: str, checkpoint: str | None = None, num_classes: int | None = None,
                    use_ema: bool = False) -> tuple:
    """``create_model(name)`` with the weights of ``checkpoint`` (its class count unless ``num_classes``),
    and the image size a ``mobileconv train`` checkpoint records (else None)."""
    from ..deploy.weights import checkpoint_num_classes, load_state_dict, read_checkpoint
    from ..engine.checkpoint import _json_or_str
    from ..engine.inference import recorded
    from ..models import create_model

    if checkpoint is None:
        return create_model(name, num_classes=num_classes), None
    state_dict, metadata = read_checkpoint(checkpoint, use_ema=use_ema)
    if num_classes is None:
        num_classes = checkpoint_num_classes(state_dict, str(checkpoint))
    if num_classes is None and str(metadata.get("num_classes")) == "0":  # a head-less one `convert` wrote
        num_classes = 0
    model = create_model(name, num_classes=num_classes)
    load_state_dict(model, state_dict, metadata, name=str(checkpoint))
    meta = {k: _json_or_str(v) for k, v in metadata.items()}
    return model, recorded(meta, {k: checkpoint for k in meta}, "img_size")


def _format_from_suffix(out: str) -> str:
    from ..deploy.export import SUFFIX_FORMATS

    fmt = SUFFIX_FORMATS.get(Path(out).suffix.lower())
    if fmt is not None:
        return fmt
    raise ValueError(f"cannot tell the format from --out {out!r}; pass --format onnx, torchscript or "
                     f"exported-program (or use a .onnx / .pt / .pt2 file name)")
