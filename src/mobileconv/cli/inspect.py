"""`mobileconv summary` and `mobileconv models`: per-layer and per-model cost of the zoo."""
from __future__ import annotations

import argparse
import json
import sys

from ._args import positive_float, positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "summary", help="per-layer output shapes, params, MACs and activation memory of a model",
        description="Per-layer output shape, params, MACs (multiply-adds of conv and linear layers, the papers' "
                    "convention) and activation memory (bytes of each layer's output) of a registered model.")
    p.add_argument("name", help="registered model name (see `mobileconv models`)")
    p.add_argument("--input-size", type=positive_int, default=None, metavar="N",
                   help="square input resolution in pixels (default: the model's own, e.g. 224)")
    p.add_argument("--width-mult", type=positive_float, default=None, metavar="M",
                   help="width multiplier passed to create_model (families that define one)")
    p.add_argument("--batch-size", type=positive_int, default=1, metavar="B", help="batch size (default 1)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")
    p.set_defaults(func=run_summary)

    p = subparsers.add_parser(
        "models", help="every registered model with params, MACs and the paper's top-1",
        description="Every registered model with params and MACs counted at its default resolution, and the "
                    "ImageNet top-1 its paper publishes.")
    p.add_argument("--filter", default="*", metavar="PATTERN", help="fnmatch pattern, e.g. 'mixnet*'")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="also plot top-1 against MACs into this PNG")
    p.set_defaults(func=run_models)


def _console():
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            """`mobileconv models | head`: main()'s BrokenPipeError (exit code 0), not rich's SystemExit(1)."""
            try:
                super().on_broken_pipe()  # stdout onto /dev/null, so that the exit's flush cannot fail
            except SystemExit:
                raise BrokenPipeError from None

    return _Console(width=None if sys.stdout.isatty() else 200)


def run_summary(args: argparse.Namespace) -> int:
    from ..profile import summarize_registered, summary_csv, summary_table

    summary = summarize_registered(args.name, args.input_size, args.width_mult, args.batch_size)
    if args.format == "json":
        print(json.dumps({"model": args.name, "width_mult": args.width_mult, **summary.to_dict()}, indent=2))
    elif args.format == "csv":
        sys.stdout.write(summary_csv(summary))
    else:
        title = args.name if args.width_mult is None else f"{args.name} (width_mult={args.width_mult:g})"
        _console().print(summary_table(summary, title=title))
    return 0


def _check_something_to_plot(pattern: str) -> None:
    """Refuse ``--plot`` before profiling when none of the models has a published top-1 (the plot's y axis).

    Reading ``pretrained_cfg`` takes building the models, not profiling them. Before this check the models
    were profiled, then the plot refused and no table printed.
    """
    import mobileconv

    names = mobileconv.list_models(pattern)  # none: profile_models says so
    if names and all(mobileconv.create_model(n).pretrained_cfg.get("paper_top1") is None for n in names):
        raise ValueError(f"none of the models matching {pattern!r} has a published top-1, nothing to plot; "
                         f"leave out --plot for their table")


def run_models(args: argparse.Namespace) -> int:
    from ..profile import plot_top1_vs_macs, profile_models
    from ..profile.report import check_plot_path, models_table

    if args.plot:
        check_plot_path(args.plot)  # before the minutes of profiling
        _check_something_to_plot(args.filter)
    records = profile_models(args.filter)
    plotted = plot_top1_vs_macs(records, args.plot) if args.plot else None
    if args.format == "json":
        print(json.dumps(records, indent=2))
    else:
        _console().print(models_table(records))
    if plotted is not None:
        sys.stdout.flush()
        print(f"plotted {len(plotted)} models with a published top-1 to {args.plot}", file=sys.stderr)
    return 0
