"""Argument types shared by the subcommands: errors name what was expected."""
from __future__ import annotations

import argparse


def _int_at_least(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "an integer >= 0")


def call_with_one_line_errors(fn, *args):
    """Call ``fn``; a multi-line ValueError / OSError message (a key listing) becomes one line with its headings."""
    try:
        return fn(*args)
    except (ValueError, OSError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        if len(lines) <= 1:
            raise
        details = ", ".join(line.split(":")[0] for line in lines[1:])
        raise ValueError(f"{lines[0]} ({details})") from e
