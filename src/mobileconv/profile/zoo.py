"""Profiles of registered models: the figures behind ``mobileconv summary`` and ``mobileconv models``."""
from __future__ import annotations

import math
import sys

import torch
from torch import nn

from .summary import ModelSummary, summarize


def check_model_name(name: str) -> None:
    """Raise a one-line ``ValueError`` for a name that is not registered (with close matches)."""
    import mobileconv

    if name not in mobileconv.list_models():
        raise ValueError(f"unknown model {name!r}; {model_name_hint(name)}")


def model_name_hint(name: str) -> str:
    """The registered names close to ``name``, as a hint for an error message."""
    from ..models._registry import close_model_names

    close = close_model_names(name, n=3)
    return f"did you mean {', '.join(close)}?" if close else "`mobileconv models` lists them"


def probe_allocation(nbytes: int, device: torch.device | str = "cpu") -> None:
    """Allocate ``nbytes`` in one block on ``device`` and free it at once; torch's ``RuntimeError`` if it cannot.

    ``torch.empty`` writes no page, so this costs no memory; on CPU the kernel refuses outright a block larger
    than the machine's RAM + swap (its default overcommit heuristic), the GPU one larger than what is free there.
    A size that would overflow an int64 is tried as the largest one (refused as well).
    """
    torch.empty(min(nbytes, sys.maxsize), dtype=torch.uint8, device=device)


def weights_bytes(name: str, width_mult: float) -> int | None:
    """The bytes of the parameters and buffers of ``create_model(name, width_mult=width_mult)``, without allocating
    them (the model is built on the meta device); ``None`` where even that fails (sizes beyond an int64)."""
    import mobileconv

    try:
        with torch.device("meta"):
            model = mobileconv.create_model(name, width_mult=width_mult)
    except RuntimeError:
        return None
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def create_for_profile(name: str, width_mult: float | None = None) -> nn.Module:
    """``create_model(name)`` (with ``width_mult`` when given) after checking the name and multiplier.

    With ``width_mult``, weights the memory cannot hold are refused before any is allocated: the model's
    layers were otherwise allocated and initialised one by one (``summary --width-mult 1000``: 3 TB of weights
    in layers of a few GB each) for minutes, until the memory ran out.
    """
    import mobileconv

    check_model_name(name)
    if width_mult is None:
        return mobileconv.create_model(name)
    if not 0 < width_mult < math.inf:
        raise ValueError(f"width multiplier must be a positive finite number, got {width_mult!r}")
    try:
        nbytes = weights_bytes(name, width_mult)
        if nbytes is not None:  # else the real build fails at its first (too large) allocation
            _check_weights_fit(name, width_mult, nbytes)
        return mobileconv.create_model(name, width_mult=width_mult)
    except TypeError as e:  # the family's builder has no width_mult argument
        if "width_mult" not in str(e):
            raise
        raise ValueError(f"model {name!r} does not take a width multiplier (width_mult)") from e
    except RuntimeError as e:  # a huge multiplier: the weights cannot be allocated
        from ..deploy.export import first_line

        raise ValueError(f"cannot build {name} with width multiplier {width_mult:g}: {first_line(e)}") from e


def _check_weights_fit(name: str, width_mult: float, nbytes: int) -> None:
    from ..deploy.export import first_line, is_out_of_memory
    from .report import human

    try:
        probe_allocation(nbytes)
    except RuntimeError as e:
        if not is_out_of_memory(e):
            raise
        raise ValueError(f"cannot build {name} with width multiplier {width_mult:g}: its weights take "
                         f"{human(nbytes, 'B')}, more than the memory can hold ({first_line(e)}); use a smaller "
                         f"width multiplier") from e


def default_input_size(model: nn.Module) -> tuple[int, ...]:
    """``pretrained_cfg["input_size"]``, else ``(in_chans, 224, 224)``."""
    cfg = getattr(model, "pretrained_cfg", {})
    return tuple(cfg.get("input_size", (getattr(model, "in_chans", 3), 224, 224)))


def min_input_size(model: nn.Module) -> int:
    """The smallest input side the model accepts: the zoo's ``pretrained_cfg["min_input_size"]``.

    The zoo sets it to the output stride (32 for the ImageNet forms, 8 for the 32x32 forms);
    a model without one accepts any size its layers can run on.
    """
    cfg = getattr(model, "pretrained_cfg", {})
    return int(cfg.get("min_input_size") or getattr(model, "min_input_size", 1))


def summarize_registered(name: str, input_size: int | None = None, width_mult: float | None = None,
                         batch_size: int = 1) -> ModelSummary:
    """:func:`summarize` a registered model at ``input_size x input_size`` (default: its own resolution).

    Raises:
        ValueError: unknown model, a model without a width multiplier, or an input size that is not
            a positive integer or is smaller than the model's output stride (below it the deepest
            feature maps are made of padding only).
    """
    if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1):
        raise ValueError(f"input size must be a positive integer (pixels), got {input_size!r}")
    model = create_for_profile(name, width_mult)
    default = default_input_size(model)
    if input_size is None:
        size = default
    else:
        size = (default[0], input_size, input_size)
        smallest = min_input_size(model)
        if input_size < smallest:
            raise ValueError(f"input size {input_size} is too small for {name}: it needs at least {smallest} pixels "
                             f"(its output stride; below it the deepest feature maps are padding only)")
    return summarize(model, size, batch_size)


def profile_models(pattern: str = "*", progress: bool | None = None) -> list[dict]:
    """Params and MACs of every registered model matching ``pattern``, at its default resolution.

    Returns one dict per model: ``name``, ``input_size``, ``params``, ``macs`` (counted by
    :func:`summarize`, batch 1) and the published ``paper_top1`` / ``paper_macs`` /
    ``paper_params`` from ``model.pretrained_cfg`` (``None`` where unpublished), with the
    ``paper_dataset`` the top-1 is measured on (``"imagenet"`` unless the config says otherwise).
    ``progress=None`` shows a progress bar only on a terminal.
    """
    import mobileconv
    from tqdm import tqdm

    names = mobileconv.list_models(pattern)
    if not names:
        raise ValueError(f"no registered model matches {pattern!r}; `mobileconv models` lists them all")
    records = []
    for name in tqdm(names, desc="profiling", unit="model", disable=None if progress is None else not progress):
        model = mobileconv.create_model(name)
        cfg = getattr(model, "pretrained_cfg", {})
        s = summarize(model, default_input_size(model))
        records.append({"name": name, "input_size": list(s.input_size), "params": s.params, "macs": s.macs,
                        "paper_top1": cfg.get("paper_top1"), "paper_macs": cfg.get("paper_macs"),
                        "paper_params": cfg.get("paper_params"),
                        "paper_dataset": cfg.get("paper_dataset", "imagenet")})
    return records
