"""torchrun with 2 CPU processes (gloo): the reported test metrics are those of the saved weights, every test
image is counted exactly once, and only the main process writes the run folder.

Oracles: a plain PyTorch forward of the saved weights over the whole test set in one process; NumPy on
known logits.
"""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mobileconv.data import build_datasets, limit_samples
from mobileconv.engine import trainer
from mobileconv.engine.checkpoint import load_weights
from mobileconv.models import create_model

from .helpers import MODEL, TINY, run_cli

TORCHRUN = ("-m", "torch.distributed.run")
VAL = 33  # the last global batch of 16 leaves one image: one process gets a batch, the other none


def test_reported_metrics_are_those_of_the_saved_weights_without_sync_bn(tmp_path):
    """Without synchronised BN each process's running statistics follow its own shards; the evaluation after
    an epoch used them, so process 1 scored another model than the one saved (test loss off by ~3e-4)."""
    out = tmp_path / "run"
    args = ["--standalone", "--nproc_per_node", "2", "-m", "mobileconv", "train", *TINY, "--max-val-samples",
            str(VAL), "--epochs", "2", "--no-aug", "--drop", "0", "--warmup-epochs", "0", "--lr", "0.05",
            "--no-sync-bn", "--out", str(out)]
    result = run_cli(args, module=TORCHRUN)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(trainer.RUN_FILES)  # no temporary or extra file

    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["test_samples"] == VAL
    weights, meta = load_weights(out / "last.safetensors")
    model = create_model(MODEL, num_classes=10)
    model.load_state_dict(weights)
    _, test_set, _ = build_datasets("synthetic", 16)
    test_set = limit_samples(test_set, VAL)
    mean, std = (torch.tensor(meta[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        logits = model.eval()((test_set.images.float() / 255 - mean) / std)
    labels = test_set.labels
    top5 = logits.topk(5, dim=1).indices
    assert summary["top1"] == pytest.approx(100 * (logits.argmax(1) == labels).float().mean().item())
    assert summary["top5"] == pytest.approx(100 * (top5 == labels[:, None]).any(1).float().mean().item())
    assert summary["test_loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=2e-6)


EVAL_SCRIPT = """
import json, sys
import torch
from torch import nn
from torch.utils.data import TensorDataset
from mobileconv.engine import TrainConfig, exit_process
from mobileconv.engine.distributed import cleanup_distributed, init_distributed
from mobileconv.engine.loop import evaluate
from mobileconv.engine.trainer import make_loaders

env = init_distributed("cpu")
data = torch.load(sys.argv[1])
test_set = TensorDataset(data["logits"], data["targets"])
_, loader = make_loaders(TrainConfig(batch_size=8), test_set, test_set, env)
seen = torch.cat([targets for _, targets in loader]).numel()
result = evaluate(nn.Identity(), loader, nn.Identity(), 6, env)
if env.is_main:
    json.dump({**result, "rank0_seen": seen}, open(sys.argv[2], "w"))
cleanup_distributed()
exit_process(0)
"""


def test_distributed_evaluation_counts_every_test_image_once(tmp_path):
    n, num_classes = VAL, 6  # batch 8: the last global batch holds one image
    rng = np.random.default_rng(1)
    targets = rng.integers(0, num_classes, n)
    logits = rng.normal(size=(n, num_classes)).astype(np.float32)
    logits[np.arange(n), targets] += 1.0
    torch.save({"logits": torch.from_numpy(logits), "targets": torch.from_numpy(targets)}, tmp_path / "data.pt")
    (tmp_path / "eval.py").write_text(EVAL_SCRIPT)
    result = run_cli(["--standalone", "--nproc_per_node", "2", str(tmp_path / "eval.py"), str(tmp_path / "data.pt"),
                      str(tmp_path / "out.json")], module=TORCHRUN)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads((tmp_path / "out.json").read_text())

    assert got["count"] == n and got["rank0_seen"] == 17  # 4 batches of 4, and the last image
    predicted = logits.argmax(1)
    expected_confusion = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(expected_confusion, (targets, predicted), 1)
    assert got["confusion"] == expected_confusion.tolist()
    assert got["top1"] == pytest.approx(100 * np.mean(predicted == targets))
    top5 = np.argsort(-logits, axis=1)[:, :5]
    assert got["top5"] == pytest.approx(100 * np.mean((top5 == targets[:, None]).any(1)))
    shifted = logits.astype(np.float64) - logits.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    assert got["loss"] == pytest.approx(-log_probs[np.arange(n), targets].mean(), rel=1e-6)
