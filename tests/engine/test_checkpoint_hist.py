"""``--checkpoint-hist N``: the weights of the N epochs of the best test top-1, as timm's CheckpointSaver keeps them.

Oracle: the N best epochs worked out from metrics.csv in the test (sorted by top-1, the earlier epoch first among
equals), and the weights compared with last.safetensors, which the run writes independently.
"""
import torch

from mobileconv.cli import main
from mobileconv.engine.checkpoint import load_weights
from mobileconv.engine.metrics import read_metrics_csv

from .helpers import TINY, failed_train


def best(rows, n):
    order = sorted(rows, key=lambda row: (-row["top1"], row["epoch"]))
    return sorted(int(row["epoch"]) for row in order[:n])


def kept(run):
    return sorted(int(p.name[len("checkpoint-"):-len(".safetensors")]) for p in run.glob("checkpoint-*.safetensors"))


def test_the_best_epochs_are_kept_and_the_rest_removed(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "4", "--lr", "0.3", "--checkpoint-hist", "2", "--out", str(run)]) == 0, \
        capsys.readouterr().err
    rows = read_metrics_csv(run / "metrics.csv")
    assert kept(run) == best(rows, 2)
    for epoch in kept(run):
        weights, meta = load_weights(run / f"checkpoint-{epoch}.safetensors")
        assert meta["epoch"] == epoch and meta["model"] == TINY[1]
    if 4 in kept(run):  # the last epoch's file holds what last.safetensors holds
        last, _ = load_weights(run / "last.safetensors")
        weights, _ = load_weights(run / "checkpoint-4.safetensors")
        assert all(torch.equal(weights[k], last[k]) for k in last)


def test_resuming_with_fewer_drops_the_extra_files_and_overwrite_removes_them(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "3", "--checkpoint-hist", "3", "--out", str(run)]) == 0
    assert kept(run) == [1, 2, 3]
    assert main(["train", "--resume", str(run), "--epochs", "4", "--checkpoint-hist", "1", "--quiet"]) == 0, \
        capsys.readouterr().err
    assert kept(run) == best(read_metrics_csv(run / "metrics.csv"), 1)
    assert main(["train", *TINY, "--epochs", "1", "--overwrite", "--out", str(run)]) == 0
    assert kept(run) == []  # the previous run's files went with it


def test_off_by_default_and_a_negative_count_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run)]) == 0
    assert kept(run) == []
    assert "--checkpoint-hist must be >= 0" in failed_train([*TINY, "--checkpoint-hist", "-1"], capsys)


def test_a_folder_with_only_epoch_files_is_still_a_run(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint-3.safetensors").write_bytes(b"x")
    message = failed_train([*TINY, "--epochs", "1", "--checkpoint-hist", "1", "--out", str(run)], capsys)
    assert "already holds a run (checkpoint-3.safetensors)" in message
