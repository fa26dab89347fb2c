"""A run resumed with another --batch-size (or --max-train-samples) carries on from the end of its last
epoch in the new schedule: the lr follows the warm-up + cosine formula at epoch * new steps per epoch."""
import math

import pytest

from mobileconv.cli import main
from mobileconv.engine import trainer

from .helpers import TINY


def cosine_lr(lr, step, total, warmup):
    """The documented schedule after ``step`` optimizer steps (warm-up done): cosine from lr to 0."""
    assert step >= warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def test_resume_with_a_larger_batch_continues_after_the_last_epoch(tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0  # 64 samples / batch 16: 4 steps

    # resumed with batch 32: 2 steps per epoch, 3 epochs = 6 steps, one warm-up epoch = 2 steps
    runs = []
    monkeypatch.setattr(trainer, "train_epochs", lambda run: runs.append(run) or {})
    resume = ["train", "--resume", str(out), "--epochs", "3", "--batch-size", "32", "--quiet"]
    assert main(resume) == 0
    run = runs[0]
    assert len(run.train_loader) == 2
    assert run.scheduler.last_epoch == 1 * 2  # one epoch done, not the 4 steps of the old batch size
    for group in run.optimizer.param_groups:
        assert group["lr"] == pytest.approx(cosine_lr(0.1, 2, 6, 2))

    monkeypatch.undo()
    assert main(resume) == 0
    rows = [line.split(",") for line in (out / "metrics.csv").read_text().splitlines()]
    lr = rows[0].index("lr")
    assert [r[0] for r in rows[1:]] == ["1", "2", "3"]
    assert float(rows[2][lr]) == pytest.approx(cosine_lr(0.1, 4, 6, 2), rel=1e-5)  # 0.05, not 0
