"""The README's train section against the parser: every documented option and command parses."""
import argparse
import re
import shlex

import pytest

from mobileconv.cli import build_parser
from mobileconv.cli._args import crop_fraction, non_negative_int, positive_int, registered_model

from .helpers import REPO


def section() -> str:
    text = (REPO / "README.md").read_text()
    return text[text.index("<!-- section:train -->"):text.index("<!-- /section:train -->")]


def table_options(header: str) -> list[str]:
    """First-column cells (`--flag METAVAR`) of the table whose header starts with ``header``."""
    lines = section().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    cells = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells.append(re.match(r"\|\s*(.+?)\s*\|(?!\|)", line.replace("\\|", "\x00")).group(1).replace("\x00", "|"))
    return cells


def subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def sample_values(action: argparse.Action, documented: list[str]) -> list[list[str]]:
    """Argument lists to try: each documented alternative (a|b|c), else a value of the option's type."""
    if action.nargs == 0:
        return [[]]
    if len(documented) == 1 and "|" in documented[0]:
        return [[choice] for choice in documented[0].split("|")]
    if action.nargs == "+":  # documented as "E [E ...]"
        assert documented[1:] == [f"[{documented[0]}", "...]"], f"{action.option_strings}: documented {documented}"
        documented = documented[:1]
    count = action.nargs if isinstance(action.nargs, int) else 1
    assert len(documented) == count, f"{action.option_strings}: documented {documented}, parser takes {count}"
    value = {int: "3", positive_int: "3", non_negative_int: "3", float: "0.5", crop_fraction: "0.875",
             registered_model: "mixnet_s"}.get(action.type, "x")
    return [[value] * count]


@pytest.mark.parametrize("command, header", [("train", "option"), ("eval", "eval option"),
                                             ("predict", "predict option")])
def test_every_documented_option_parses(command, header):
    parser = subparser(command)
    actions = {flag: a for a in parser._actions for flag in a.option_strings}
    documented_flags = set()
    required = {"eval": ["--checkpoint", "c.safetensors"], "predict": ["x.png", "--checkpoint", "c"]}.get(command, [])
    for cell in table_options(header):
        for variant in cell.split(" / "):
            flag, *values = variant.strip("`").split()
            assert flag in actions, f"README documents {flag}, which `mobileconv {command}` does not accept"
            documented_flags.add(flag)
            for args in sample_values(actions[flag], values):
                parser.parse_args([*required, flag, *args])
    undocumented = {f for f in actions if f.startswith("--") and f != "--help"} - documented_flags
    assert not undocumented, f"options missing from the README: {sorted(undocumented)}"


def test_every_command_in_the_section_parses():
    commands = [line for line in section().splitlines() if re.match(r"(mobileconv|torchrun|python -m torch)", line)]
    assert len(commands) >= 8
    parser = build_parser()
    for line in commands:
        argv = shlex.split(line.split("#")[0])
        argv = argv[argv.index("mobileconv") + 1:]
        parser.parse_args(argv)
