"""``evaluate``'s top-1 / top-5 / per-class accuracy, confusion matrix and loss against scikit-learn / NumPy."""
import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, log_loss, recall_score, top_k_accuracy_score
from torch import nn

from mobileconv.engine.distributed import DistEnv
from mobileconv.engine.loop import evaluate


def known_logits(n: int, num_classes: int, seed: int = 0):
    """Random logits (no ties) that are right a bit more often than chance, and targets missing the last class."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, num_classes - 1, n)  # the last class has no images
    logits = rng.normal(size=(n, num_classes)).astype(np.float32)
    logits[np.arange(n), targets] += rng.uniform(0, 2, n).astype(np.float32)
    return logits, targets


def batches(logits, targets, sizes):
    start = 0
    for size in sizes:
        yield torch.from_numpy(logits[start:start + size]), torch.from_numpy(targets[start:start + size])
        start += size


@pytest.mark.filterwarnings("ignore:'k' .* greater than or equal to 'n_classes'")
@pytest.mark.parametrize("num_classes", [3, 7])  # 3: fewer classes than top-5 asks for
def test_evaluate_matches_sklearn(num_classes):
    n, sizes = 61, [16, 16, 16, 13]
    logits, targets = known_logits(n, num_classes)
    result = evaluate(nn.Identity(), batches(logits, targets, sizes), nn.Identity(), num_classes, DistEnv())

    labels = np.arange(num_classes)
    predicted = logits.argmax(1)
    assert result["count"] == n
    assert result["top1"] == pytest.approx(100 * accuracy_score(targets, predicted))
    assert result["top5"] == pytest.approx(100 * top_k_accuracy_score(targets, logits, k=min(5, num_classes),
                                                                      labels=labels))
    assert result["confusion"] == confusion_matrix(targets, predicted, labels=labels).tolist()
    recall = recall_score(targets, predicted, labels=labels[:-1], average=None, zero_division=0)
    assert result["per_class"][:-1] == pytest.approx(list(100 * recall))
    assert result["per_class"][-1] is None  # no images: undefined, not 0
    shifted = logits.astype(np.float64) - logits.max(1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
    assert result["loss"] == pytest.approx(log_loss(targets, probs, labels=labels), rel=1e-5)
