"""Accuracy bookkeeping, the per-epoch metrics.csv, and the PNG plots (matplotlib, Agg backend)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from .checkpoint import atomic_write_text, save_figure

METRIC_COLUMNS = ("epoch", "loss", "top1", "top5", "lr", "img/s", "seconds", "test_loss")


class AccuracyCounter:
    """Accumulates a confusion matrix, top-5 hits and the loss sum over batches (summable across processes)."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes, self.k = num_classes, min(5, num_classes)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
        self.topk_hits = torch.zeros((), dtype=torch.long, device=device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)

    def update(self, logits: torch.Tensor, targets: torch.Tensor, loss_sum: torch.Tensor | None = None) -> None:
        top = logits.topk(self.k, dim=1).indices
        self.confusion += torch.bincount(targets * self.num_classes + top[:, 0],
                                         minlength=self.num_classes ** 2).view(self.num_classes, -1)
        self.topk_hits += (top == targets.view(-1, 1)).any(dim=1).sum()
        if loss_sum is not None:
            self.loss_sum += loss_sum.double()

    def tensors(self) -> list[torch.Tensor]:
        """The accumulators, to be summed in place across processes."""
        return [self.confusion, self.topk_hits, self.loss_sum]

    def result(self) -> dict:
        """top-1 / top-5 (percent), mean loss, per-class accuracy (percent; None for a class without
        images, whose accuracy is undefined, not 0) and the confusion matrix."""
        confusion = self.confusion.cpu()
        total = int(confusion.sum())
        counts = confusion.sum(1).tolist()
        per_class = [100.0 * int(confusion[i, i]) / n if n else None for i, n in enumerate(counts)]
        return {
            "top1": 100.0 * int(confusion.diag().sum()) / max(total, 1),
            "top5": 100.0 * int(self.topk_hits) / max(total, 1),
            "loss": float(self.loss_sum) / max(total, 1),
            "count": total,
            "per_class": per_class,
            "confusion": confusion.tolist(),
        }


def write_metrics_csv(path: str | Path, rows: list[dict]) -> None:
    """All epochs so far, one row each (rewritten atomically, so a resumed run never duplicates rows)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    atomic_write_text(path, text.getvalue())


def read_metrics_csv(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def plot_curves(path: str | Path, rows: list[dict], title: str = "") -> None:
    """Training / test loss and test top-1 / top-5 against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["loss"] for r in rows], marker=".", label="train")
    ax_loss.plot(epochs, [r["test_loss"] for r in rows], marker=".", label="test")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.plot(epochs, [r["top1"] for r in rows], marker=".", label="top-1")
    ax_acc.plot(epochs, [r["top5"] for r in rows], marker=".", label="top-5")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    save_figure(fig, path)


def plot_confusion(path: str | Path, confusion: list[list[int]], classes: list[str], title: str = "") -> None:
    """Confusion matrix (rows: true class, columns: predicted), counts written in the cells when few classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    size = min(4 + 0.4 * n, 20)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(confusion, cmap="Blues")
    if n <= 30:
        ax.set_xticks(range(n), classes, rotation=90)
        ax.set_yticks(range(n), classes)
        peak = max(max(row) for row in confusion) or 1
        for i, row in enumerate(confusion):
            for j, count in enumerate(row):
                if count:
                    ax.text(j, i, count, ha="center", va="center", fontsize=8,
                            color="white" if count > peak / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    save_figure(fig, path)


# an epoch's test metrics that its weights files record (the metrics.csv names)
RECORDED_METRICS = ("top1", "top5", "test_loss")


def metric_of(row: dict, metric: str) -> float:
    """An epoch's ``--eval-metric`` from its metrics.csv row (``loss`` is the test loss)."""
    return row["test_loss" if metric == "loss" else metric]


def rank_key(row: dict, metric: str) -> tuple[float, int]:
    """Sorts epochs best first by ``metric`` (the lowest loss, the highest accuracy), the earlier first among equals."""
    value = metric_of(row, metric)
    return (value if metric == "loss" else -value, row["epoch"])


def ranks_above(row: dict, other: dict, metric: str) -> bool:
    return rank_key(row, metric) < rank_key(other, metric)


def best_epochs(history: list[dict], count: int, metric: str = "top1") -> set[int]:
    """The ``count`` best epochs by ``metric`` (the earlier one first among equals, as timm's ``CheckpointSaver``
    ranks them)."""
    return {int(row["epoch"]) for row in sorted(history, key=lambda row: rank_key(row, metric))[:count]}
