"""`mobileconv export` subcommands (placeholder until the owning issue lands)."""
from __future__ import annotations


def register(subparsers) -> None:  # noqa: D103 - filled in by the owning issue
    pass
