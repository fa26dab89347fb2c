"""Per-class accuracy of a class without images is undefined: ``None`` in JSON, ``n/a`` in the table, not 0%.

Oracle: scikit-learn's recall per class (``recall_score(average=None)``), which is per-class
accuracy, over the classes that have images.
"""
from __future__ import annotations

import pytest
import torch
from sklearn.metrics import recall_score

from mobileconv.cli.train import format_eval_table
from mobileconv.engine.metrics import AccuracyCounter


def test_class_without_images_has_no_accuracy():
    torch.manual_seed(0)
    targets = torch.tensor([0, 0, 1, 1, 1, 3, 3, 0])  # class 2 has no images
    logits = torch.randn(len(targets), 4)
    counter = AccuracyCounter(4)
    counter.update(logits, targets)
    result = counter.result()
    assert result["per_class"][2] is None
    present = [0, 1, 3]
    expected = recall_score(targets.numpy(), logits.argmax(1).numpy(), labels=present, average=None) * 100
    assert [result["per_class"][c] for c in present] == pytest.approx(list(expected))
    table = format_eval_table({**result, "classes": ["a", "b", "c", "d"], "model": "m", "checkpoint": "x",
                               "dataset": "d", "split": "test", "img_size": 8})
    row = next(line for line in table.splitlines() if line.startswith("c "))
    assert row.split() == ["c", "n/a", "0"]
