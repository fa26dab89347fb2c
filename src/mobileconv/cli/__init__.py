"""The ``mobileconv`` command: thin subcommands over the library functions.

Each module in this package defines ``register(subparsers)``, which adds its subcommands and
sets ``func`` (called with the parsed ``argparse.Namespace``, returns an exit code). Heavy
imports happen inside the handlers, so ``mobileconv --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

# module name -> the subcommands it registers (for the reader; the modules do the registering)
COMMAND_MODULES = {
    "train": ("train", "eval", "predict"),
    "inspect": ("summary", "models"),
    "convert": ("convert", "average"),
    "export": ("export",),
    "bench": ("bench",),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mobileconv", description="Efficient convolutional networks for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{module}").register(sub)
    return parser


def check_compiler_for(args: argparse.Namespace) -> None:
    """``--compile`` on the CPU needs a C++ compiler (Inductor); say so in one line before any work starts.

    Without this check ``mobileconv bench --compile`` ended in ``optimize_for_inference``'s RuntimeError
    and ``mobileconv train --compile`` in an InductorError at its first step, both as tracebacks.
    """
    if not getattr(args, "compile", False):
        return
    import torch

    device = getattr(args, "device", "cpu")
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return
    from ..deploy.optimize import check_compiler

    check_compiler(torch.device("cpu"), "--compile", ValueError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_compiler_for(args)
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `mobileconv summary ... | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
    except (ValueError, OSError, KeyError) as e:  # user errors: one line, no traceback
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        if isinstance(e, OSError) and e.strerror and e.filename:  # not "[Errno 2] ..."
            msg = f"{e.strerror}: {e.filename}"
        print(f"mobileconv {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mobileconv {args.command}: interrupted", file=sys.stderr)
        return 130


def run() -> NoReturn:
    """The ``mobileconv`` console script and ``python -m mobileconv``: :func:`main`, then exit with its status."""
    code = main()
    from ..engine.distributed import exit_process  # torch is imported by every command by now

    exit_process(code)  # a torchrun worker must not finalise the interpreter: see there


if __name__ == "__main__":
    run()
