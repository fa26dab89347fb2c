"""Summaries as rich tables, CSV and JSON, and the top-1 vs MACs plot of the model zoo."""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

from ..engine.checkpoint import probe_writable, save_figure
from .summary import ModelSummary

LAYER_FIELDS = ("name", "type", "output_shape", "params", "macs", "activation_bytes", "calls")
DATASET_NAMES = {"imagenet": "ImageNet", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def human(value: float, unit: str = "") -> str:
    """``4134606 -> "4.13M"``; bytes with ``unit="B"``: ``1572864 -> "1.57 MB"`` (SI prefixes).

    Three significant digits; a value that rounds up to the next prefix takes it (``999600 -> "1M"``).
    """
    shown = float(f"{value:.3g}")  # the prefix is chosen on the rounded value: 999.6K is shown as 1M, not 1e+03K
    for threshold, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(shown) >= threshold:
            return f"{shown / threshold:.3g}{' ' if unit else ''}{prefix}{unit}"
    return f"{value:g}{' ' + unit if unit else ''}"


def _shape_text(shape) -> str:
    if shape is None:  # a layer that returned no tensor
        return "-"
    if shape and isinstance(shape[0], list):
        return ", ".join(_shape_text(s) for s in shape)
    return "x".join(map(str, shape))


def summary_table(summary: ModelSummary, title: str = ""):
    """A ``rich.table.Table`` with one row per layer and a totals row."""
    from rich.table import Table

    size = "x".join(map(str, (summary.batch_size, *summary.input_size)))
    table = Table(title=f"{title}  input {size}, {summary.dtype}" if title else f"input {size}, {summary.dtype}",
                  show_footer=True, title_justify="left")
    table.add_column("Layer", footer="Total")
    table.add_column("Type")
    table.add_column("Output shape")
    table.add_column("Params", justify="right", footer=f"{summary.params:,} ({human(summary.params)})")
    table.add_column("MACs", justify="right", footer=f"{summary.macs:,} ({human(summary.macs)})")
    table.add_column("Activations", justify="right", footer=human(summary.activation_bytes, "B"))
    for row in summary.layers:
        name = row.name or "(model)"
        calls = f" x{row.calls}" if row.calls > 1 else ""
        shape = _shape_text(row.output_shape) if row.calls else "- (not called)"
        table.add_row(name + calls, row.type, shape, f"{row.params:,}", f"{row.macs:,}",
                      human(row.activation_bytes, "B"))
    return table


def summary_csv(summary: ModelSummary) -> str:
    """One CSV line per layer (``LAYER_FIELDS``, the JSON layer keys; shapes as ``1x16x112x112``), header first."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LAYER_FIELDS)
    for row in summary.layers:
        writer.writerow([row.name, row.type, _shape_text(row.output_shape) if row.output_shape else "",
                         row.params, row.macs, row.activation_bytes, row.calls])
    return buf.getvalue()


def _top1_text(record: dict) -> str:
    if record.get("paper_top1") is None:
        return "-"
    dataset = _dataset(record)
    note = "" if dataset == "imagenet" else f" ({DATASET_NAMES.get(dataset, dataset)})"
    return f"{record['paper_top1']:.1f}%{note}"


def models_table(records: Sequence[dict]):
    """A ``rich.table.Table`` of :func:`mobileconv.profile.zoo.profile_models` records."""
    from rich.table import Table

    table = Table(caption="params, MACs: counted at the model's input size, batch 1; paper columns: as published",
                  caption_justify="left")
    for header in ("Model", "Input", "Params", "MACs", "Paper MACs", "Paper top-1"):
        table.add_column(header, justify="left" if header == "Model" else "right")
    for r in records:
        paper_macs = r.get("paper_macs")
        table.add_row(r["name"], "x".join(map(str, r["input_size"][1:])), human(r["params"]), human(r["macs"]),
                      human(paper_macs) if paper_macs else "-", _top1_text(r))
    return table


def check_plot_path(path: str | os.PathLike) -> Path:
    """A ``.png`` path in an existing, writable folder, or a ValueError saying what is wrong.

    A symbolic link is checked where the plot goes, at its target: a link to a missing file in an existing,
    writable folder is fine (the file is created there), a link into a missing folder is refused.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plot file must end in .png, got {str(path)!r}")
    if not path.parent.is_dir():
        raise ValueError(f"plot folder {str(path.parent)!r} does not exist")
    if path.exists() and not path.is_file():  # a folder named x.png: found only after the minutes of profiling
        raise ValueError(f"cannot write the plot {str(path)!r}: it is a directory (give a file name inside it)"
                         if path.is_dir() else f"cannot write the plot {str(path)!r}: it exists and is not a file")
    folder = path.parent
    if path.is_symlink():  # the plot is written through the link, to its target (save_figure)
        target = Path(os.path.realpath(path))
        try:
            path.stat()
        except FileNotFoundError:  # found only after the work otherwise
            if not target.parent.is_dir():
                raise ValueError(f"cannot write the plot {str(path)!r}: it is a symbolic link to a missing path "
                                 f"({str(target)!r}, whose folder does not exist)") from None
        except OSError as e:  # a loop of links
            raise ValueError(f"cannot write the plot {str(path)!r}: it is a symbolic link that cannot be followed "
                             f"({e.strerror or e})") from None
        folder = target.parent
    try:
        probe_writable(folder)
    except OSError as e:
        raise ValueError(f"cannot write the plot {str(path)!r}: folder {str(folder)!r} is not writable "
                         f"({e.strerror or e})") from e
    return path


def _dataset(record: dict) -> str:
    return record.get("paper_dataset") or "imagenet"


def _label_offsets(points: list[tuple[float, float]]) -> dict[tuple[float, float], tuple[int, int, str]]:
    """Where each point's label goes: ``(dx, dy)`` in points and the horizontal alignment.

    Above and to the right of the point; to the left for points in the right quarter of the
    axis (so it is not cut off) and for a point whose neighbour sits just above and beside it
    (so the two labels do not overlap).
    """
    xs, ys = zip(*points)
    x_span, y_span = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    offsets = {}
    for x, y in points:
        right = x > min(xs) + 0.75 * x_span
        crowded = any(0 < oy - y < 0.04 * y_span and abs(ox - x) < 0.15 * x_span for ox, oy in points)
        left = right or crowded
        offsets[x, y] = (-4 if left else 4, 4, "right" if left else "left")
    return offsets


def plot_top1_vs_macs(records: Sequence[dict], path: str | os.PathLike) -> list[str]:
    """Scatter the published top-1 against the counted MACs, one labelled point per model; PNG.

    Models without a published top-1 are left out. Accuracies on different datasets
    (``paper_dataset``: ImageNet, CIFAR-10...) go to separate panels; models at the same point
    (``mixnet_s`` and ``tf_mixnet_s``) share one label. The file is written atomically
    (:func:`mobileconv.engine.checkpoint.save_figure`).

    Returns:
        The names of the models plotted, in the order of ``records``.

    Raises:
        ValueError: ``path`` does not end in ``.png``, its folder does not exist, or no record
            has a top-1.
    """
    path = check_plot_path(path)
    points = [r for r in records if r.get("paper_top1") is not None]
    if not points:
        raise ValueError("none of the selected models has a published top-1, nothing to plot")
    datasets = sorted({_dataset(r) for r in points}, key=lambda d: (d != "imagenet", d))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(8 + 4 * (len(datasets) - 1), 5.5), dpi=120, squeeze=False)
    try:
        for ax, dataset in zip(axes[0], datasets):
            labels: dict[tuple[float, float], list[str]] = {}
            for r in points:
                if _dataset(r) == dataset:
                    labels.setdefault((r["macs"] / 1e6, r["paper_top1"]), []).append(r["name"])
            xs, ys = zip(*labels)
            ax.scatter(xs, ys, s=28, color="tab:blue", zorder=3)
            for (x, y), (dx, dy, ha) in _label_offsets(list(labels)).items():
                ax.annotate(" / ".join(labels[x, y]), (x, y), textcoords="offset points", xytext=(dx, dy),
                            ha=ha, fontsize=7)
            ax.set_xlabel("MACs (millions, counted by mobileconv, batch 1)")
            ax.set_ylabel(f"{DATASET_NAMES.get(dataset, dataset)} top-1 (%, as published)")
            ax.set_title(f"Accuracy against cost: {DATASET_NAMES.get(dataset, dataset)}")
            ax.grid(True, alpha=0.3)
            ax.margins(x=0.2, y=0.1)  # room for the labels
    except BaseException:
        plt.close(fig)
        raise
    save_figure(fig, path, dpi=120)
    return [r["name"] for r in points]
