"""Argument types shared by the subcommands: errors name what was expected."""
from __future__ import annotations

import argparse
import re


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


def positive_float(text: str) -> float:
    """A finite number above 0 (``nan`` and ``inf`` refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}") from None
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def crop_fraction(text: str) -> float:
    """A ``crop_pct`` (``--crop-pct``): a number from ``MIN_CROP_PCT`` (0.01) to 1."""
    from ..data.datasets import MIN_CROP_PCT, is_crop_pct

    try:
        value = float(text)
    except ValueError:
        value = None
    if not is_crop_pct(value):
        raise argparse.ArgumentTypeError(f"expected a number from {MIN_CROP_PCT} to 1, got {text!r}")
    return value


CROP_HELP = ("the centre crop's share of the resized shorter side: images are resized to floor(img_size / crop_pct) "
             "then centre-cropped (default: recorded, else 1.0 for a mobileconv checkpoint, 0.875 for a torchvision "
             "one and the model's pretrained_cfg, 0.875 for the ImageNet forms, for a timm one)")
INTERPOLATION_HELP = ("resampling of that resize (default: recorded, else bilinear for mobileconv and torchvision "
                      "checkpoints and the model's pretrained_cfg, bicubic for the ImageNet forms, for timm ones)")


def call_with_one_line_errors(fn, *args):
    """Call ``fn``; a multi-line ValueError / OSError message (a key listing) becomes one line.

    Each listing line ``heading: item, item, ...`` keeps its heading and its first item
    (``missing keys (49): blocks.1.0.conv_pw.weight, ...``), so the line still names a key.
    """
    try:
        return fn(*args)
    except (ValueError, OSError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        if len(lines) <= 1:
            raise
        details = "; ".join(_heading_and_first_item(line) for line in lines[1:])
        raise ValueError(f"{lines[0]} ({details})") from e


def _heading_and_first_item(line: str) -> str:
    heading, _, items = line.partition(": ")
    if not items:
        return heading
    first = re.split(r", (?![^\[]*\])", items, maxsplit=1)  # not inside a shape such as [96, 1, 3, 3]
    return f"{heading}: {first[0]}{', ...' if len(first) > 1 else ''}"


def registered_model(text: str) -> str:
    """A registered model name (``list_models()``); anything else names the close ones."""
    from ..models import list_models
    from ..profile.zoo import model_name_hint

    if text not in list_models():
        raise argparse.ArgumentTypeError(f"expected a registered model name, got {text!r}; {model_name_hint(text)}")
    return text


USE_EMA_HELP = ("take a training checkpoint's EMA weights (timm / torchvision: state_dict_ema, else model_ema; "
                "mobileconv train --ema: its weights files or state.pt) instead of its state_dict / model; "
                "an error if it has none")


def cpu_threads(text: str) -> int:
    """A thread count from 1 to the CPUs this process may use (more made torch segfault)."""
    from ..engine.bench import available_cpus

    cpus = available_cpus()
    value = _int_at_least(text, 1, f"a number of threads from 1 to {cpus} (the CPUs this process may use)")
    if value > cpus:
        raise argparse.ArgumentTypeError(
            f"expected a number of threads from 1 to {cpus} (the CPUs this process may use), got {text!r}")
    return value


def check_image_size(models, image_size: int | None) -> None:
    """Raise a ``ValueError`` naming the first of ``models`` (registered names) that cannot run at ``image_size``."""
    if image_size is None:
        return
    from ..models import create_model
    from ..profile.zoo import min_input_size

    for name in dict.fromkeys(models):
        smallest = min_input_size(create_model(name))
        if image_size < smallest:
            raise ValueError(f"--image-size {image_size} is too small for {name}: it needs at least {smallest} "
                             f"pixels")
