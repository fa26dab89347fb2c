"""``mobileconv train`` / ``eval`` / ``predict``: thin commands over :mod:`mobileconv.engine`.

The ``train`` options are generated from the fields of :class:`mobileconv.engine.config.TrainConfig`
(one definition for the parser, the YAML config files and the saved config.yaml).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ._args import (CROP_HELP, INTERPOLATION_HELP, USE_EMA_HELP, call_with_one_line_errors, crop_fraction,
                    non_negative_int, positive_int, registered_model)


def register(subparsers) -> None:
    register_train(subparsers)
    register_eval(subparsers)
    register_predict(subparsers)


def _one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Usage errors as one line (the full usage of ~40 options would bury the message)."""
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message} (see {parser.prog} --help)\n")
    return parser


# ---- train -----------------------------------------------------------------------------------------

# the first option of each group of `mobileconv train --help` (TrainConfig's fields, in their order)
TRAIN_GROUPS = {"model": "model and data", "epochs": "learning-rate schedule", "opt": "optimizer",
                "smoothing": "loss, mixup and cutmix", "aug": "augmentation",
                "bn_momentum": "model regularisation and EMA", "grad_accum_steps": "steps",
                "amp": "precision, devices and speed", "eval_metric": "checkpoints and the run"}


def register_train(subparsers) -> None:
    from ..engine.config import TrainConfig

    p = subparsers.add_parser(
        "train", help="train a model (default: digits, ready in a few minutes on CPU)",
        description="Train a zoo model. Every option can also come from --config FILE.yaml (keys = option names); "
                    "the command line wins over the file.",
        argument_default=argparse.SUPPRESS)
    _one_line_errors(p)
    group = p
    for f in dataclasses.fields(TrainConfig):
        if f.name in TRAIN_GROUPS:  # the options come in the README's order; --help shows them under headings
            group = p.add_argument_group(TRAIN_GROUPS[f.name])
        meta, flag = f.metadata, "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = meta["help"] if default is None else f"{meta['help']} (default: {_show(default)})"
        if meta["type"] is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            group.add_argument(flag, type=meta["type"], choices=meta["choices"], nargs=meta["nargs"],
                               metavar=meta["metavar"], help=help_text)
    group.add_argument("--config", metavar="FILE", help="YAML file of option values")
    group.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last completed epoch")
    p.set_defaults(func=run_train)


def one_of_lr_and_lr_base(given: dict, origins: dict) -> dict:
    """Which of ``--lr`` and ``--lr-base`` a run uses when both are set: the one set at the later level (defaults <
    the resumed run's config.yaml < --config FILE < command line); at the same level ``--lr-base``, whose derived
    ``lr`` a run's config.yaml records beside it. Both on the command line are refused. Returns the one to clear."""
    if "lr" in given and "lr_base" in given:
        raise ValueError("--lr and --lr-base both set the learning rate: give one")

    def level(name: str) -> int:
        return 2 if name in given else 1 if name in origins else 0

    return {"lr_base": None} if level("lr") > level("lr_base") else {"lr": None}


def _show(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def train_config_from_args(args: argparse.Namespace):
    """Defaults < the resumed run's config.yaml < --config FILE < options on the command line.

    ``--momentum`` / ``--opt-eps`` set on the command line or in --config FILE for an optimizer without such a
    setting, and ``--decay-epochs`` / ``--decay-rate`` for a schedule without, are refused (naming where they were
    set), as is ``--reprob`` with ``--no-aug``; a resumed run's config.yaml records them resolved (older runs
    recorded ``momentum: 0.9`` for adamw), so its values are dropped where nothing uses them any more. ``--aa``
    given without ``--color-jitter`` gets its default colour jitter (0) rather than the one a resumed run recorded.
    A ``--pretrained`` other than the one the resumed run started from is refused: the run goes on from its own weights.
    Of ``--lr`` and ``--lr-base`` only one applies (:func:`one_of_lr_and_lr_base`).
    """
    from ..engine.config import TrainConfig, check_unused_options, load_yaml, unused_options

    given = {k: v for k, v in vars(args).items() if k in TrainConfig.fields()}
    config, origins = None, {}
    if getattr(args, "resume", None):
        resume = Path(args.resume)
        if not (resume / "config.yaml").is_file():
            raise ValueError(f"--resume {resume}: not a run folder (no config.yaml)")
        label = f"--resume {resume}: {resume / 'config.yaml'}"
        saved = {k: v for k, v in load_yaml(resume / "config.yaml", label).items() if k not in ("out", "overwrite")}
        config = TrainConfig.from_mapping(saved, label)
        resumed_pretrained = config.pretrained
    if getattr(args, "config", None):
        values = load_yaml(args.config)
        config = TrainConfig.from_mapping(values, f"--config {args.config}", config)
        origins = {str(k).replace("-", "_"): f"set in --config {args.config}" for k in values}
    origins.update({k: "set on the command line" for k in given})
    config = TrainConfig.from_mapping(given, "command line", config)
    if getattr(args, "resume", None) and "pretrained" in origins and config.pretrained != resumed_pretrained:
        # recorded in config.yaml, it would name weights the run never loaded (and load them if the file is reused)
        raise ValueError(f"--pretrained {config.pretrained} ({origins['pretrained']}) with --resume: a resumed run "
                         f"goes on from its own weights in state.pt, so no other weights would be loaded; leave "
                         f"--pretrained out")
    if config.aa and "aa" in origins and "color_jitter" not in origins:  # --aa's default, not a resumed run's value
        config = dataclasses.replace(config, color_jitter=None)
    if config.lr is not None and config.lr_base is not None:
        config = dataclasses.replace(config, **one_of_lr_and_lr_base(given, origins))
    fields = TrainConfig.fields()
    recorded = {name: fields[name].default for name in unused_options(config) if name not in origins}
    config = dataclasses.replace(config, **recorded)
    check_unused_options(config, origins)
    return config


def run_train(args: argparse.Namespace) -> int:
    from ..engine import NonFiniteLossError, fit

    config = train_config_from_args(args)
    try:
        call_with_one_line_errors(fit, config, getattr(args, "resume", None))  # a key listing on one line
    except NonFiniteLossError as e:
        print(f"mobileconv train: error: {e}", file=sys.stderr)
        return 1
    return 0


# ---- eval ------------------------------------------------------------------------------------------

def register_eval(subparsers) -> None:
    from ..engine.config import AMP_DTYPES

    p = subparsers.add_parser("eval", help="evaluate a checkpoint on a dataset's test split",
                              description="top-1, top-5 and per-class accuracy of a checkpoint; the number of "
                                          "classes comes from the checkpoint's classifier.")
    _one_line_errors(p)
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a mobileconv checkpoint (or a timm / torchvision one, with --model)")
    p.add_argument("--model", type=registered_model, metavar="NAME",
                   help="model name (default: recorded in the checkpoint)")
    p.add_argument("--data", help="digits | synthetic | PATH (default: recorded in the checkpoint)")
    p.add_argument("--img-size", type=positive_int, metavar="PX",
                   help="resolution (default: recorded, else the dataset's own (16 for digits), else the model's)")
    _add_crop_options(p, "ImageFolder test images")
    p.add_argument("--batch-size", type=int, default=256, metavar="N", help="images per forward pass (default 256)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to run (default auto: cuda when available)")
    p.add_argument("--max-val-samples", type=positive_int, metavar="N", help="evaluate only this many test images")
    p.add_argument("--workers", type=non_negative_int, default=0, metavar="N",
                   help="processes that decode the test images (default 0: the main one)")
    p.add_argument("--optimize", action="store_true",
                   help="evaluate optimize_for_inference's copy of the model: BN folded, MixConv fused, oneDNN on "
                        "CPU; faster, logits within 1e-4 of their scale")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision: bfloat16 on CPU, float16 on GPU (timm validate.py's --amp; see --amp-dtype)")
    p.add_argument("--amp-dtype", choices=AMP_DTYPES,
                   help="the mixed-precision dtype (default auto: as --amp says); used by --amp only")
    p.add_argument("--channels-last", action="store_true", help="run the model in channels-last memory format")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="a table of top-1 / top-5 / per-class accuracy, or the full result as JSON (default table)")
    p.add_argument("--use-ema", action="store_true", help=USE_EMA_HELP)
    p.add_argument("--plot", metavar="FILE.png", help="write the confusion matrix as a PNG")
    p.add_argument("--out", metavar="DIR", help="write eval.json and confusion.png into DIR")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from ..engine.checkpoint import atomic_write_text
    from ..engine.inference import evaluate_checkpoint
    from ..engine.metrics import plot_confusion
    from ..profile.report import check_plot_path

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.amp_dtype is not None and not args.amp:
        raise ValueError(f"--amp-dtype {args.amp_dtype} is used by --amp only: add --amp, or leave --amp-dtype out")
    if args.plot:
        check_plot_path(args.plot)  # before the evaluation
    out = Path(args.out) if args.out else None
    if out is not None:
        _check_out_dir(out)
    result = call_with_one_line_errors(evaluate_checkpoint, args.model, args.checkpoint, args.data, args.img_size,
                                       args.batch_size, args.device, args.max_val_samples, args.use_ema,
                                       args.crop_pct, args.interpolation, args.workers, args.optimize,
                                       sys.stderr.isatty(), (args.amp_dtype or "auto") if args.amp else None,
                                       args.channels_last)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    title = f"{result['model']} on {result['dataset']}: top-1 {result['top1']:.2f}%"
    for png in filter(None, (args.plot, out and out / "confusion.png")):
        plot_confusion(png, result["confusion"], result["classes"], title)
    if out is not None:
        atomic_write_text(out / "eval.json", json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2) if args.format == "json" else format_eval_table(result))
    return 0


def _add_crop_options(p: argparse.ArgumentParser, what: str) -> None:
    from ..data import INTERPOLATIONS

    p.add_argument("--crop-pct", type=crop_fraction, metavar="F", help=f"{what}: {CROP_HELP}")
    p.add_argument("--interpolation", choices=INTERPOLATIONS, help=f"{what}: {INTERPOLATION_HELP}")


def _check_out_dir(out: Path) -> None:
    """Refuse an ``--out`` folder that could not be created or written, before the evaluation (creating nothing)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    broken = next((p for p in (out, *out.parents) if p.is_symlink() and not p.exists()), None)
    if broken is not None:  # mkdir fails on it ("File exists"), after the evaluation
        raise ValueError(f"--out {out}: cannot write there ({broken} is a symbolic link to a missing path)")
    from ..engine.checkpoint import probe_writable

    existing = next(p for p in (out, *out.parents) if p.exists())
    try:
        probe_writable(existing)  # a file there fails too (not a directory)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write there ({existing} is not a writable folder: "
                         f"{e.strerror or e})") from None


def format_eval_table(result: dict) -> str:
    lines = [f"model {result['model']}  checkpoint {result['checkpoint']}",
             f"data {result['dataset']} ({result['split']} split, {result['count']} images, {result['img_size']} px"
             + (f", crop {result['crop_pct']:g} {result['interpolation']}" if "crop_pct" in result else "")
             + (", optimised model" if result.get("optimized") else "")
             + (f", {result['amp']} autocast" if result.get("amp") else "")
             + (", channels_last" if result.get("channels_last") else "") + ")",
             f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}",
             "", f"{'class':<20} {'accuracy':>9} {'images':>7}"]
    for name, acc, row in zip(result["classes"], result["per_class"], result["confusion"]):
        shown = "n/a" if acc is None else f"{acc:.2f}%"  # a class without test images has no accuracy
        lines.append(f"{name:<20} {shown:>9} {sum(row):>7}")
    return "\n".join(lines)


# ---- predict ---------------------------------------------------------------------------------------

def register_predict(subparsers) -> None:
    p = subparsers.add_parser("predict", help="classify image files with a checkpoint (top-5 with class names)",
                              description="The top-k classes (name and probability) of each image file under a "
                                          "checkpoint. Each image is resized and center-cropped to the recorded "
                                          "img_size (as --crop-pct / --interpolation say) and normalised with the recorded mean and std, as the "
                                          "checkpoint's test images were; the class names are those recorded "
                                          "with the checkpoint (else the class indices).")
    _one_line_errors(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (anything PIL reads)")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a mobileconv checkpoint (or a timm / torchvision one, with --model)")
    p.add_argument("--model", type=registered_model, metavar="NAME",
                   help="model name (default: recorded in the checkpoint)")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="classes listed per image (default 5)")
    p.add_argument("--use-ema", action="store_true", help=USE_EMA_HELP)
    p.add_argument("--img-size", type=positive_int, metavar="PX",
                   help="resolution (default: recorded, else the recorded dataset's own (16 for digits), else the "
                        "model's)")
    _add_crop_options(p, "each image")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to run (default auto: cuda when available)")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="a line per image, or the same top-k as JSON (default table)")
    p.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from ..engine.inference import predict_images

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    results = call_with_one_line_errors(predict_images, args.model, args.checkpoint, args.images, args.top_k,
                                        args.img_size, args.device, args.use_ema, args.crop_pct, args.interpolation)
    if args.format == "json":
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        ranked = "  ".join(f"{t['class']} {100 * t['prob']:.1f}%" for t in result["top"])
        print(f"{result['image']}: {ranked}")
    return 0
