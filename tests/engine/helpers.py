"""Shared settings for the engine tests: a tiny, fast training configuration."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODEL = "mobilenetv3_small_100_cifar"
TINY = ["--model", MODEL, "--data", "synthetic", "--img-size", "16", "--max-train-samples", "64",
        "--max-val-samples", "32", "--batch-size", "16", "--quiet"]


ONE_EPOCH = ["--model", MODEL, "--data", "synthetic", "--img-size", "16", "--max-train-samples", "32",
             "--max-val-samples", "16", "--batch-size", "16", "--quiet", "--epochs", "1"]


def frozen_first_epoch(out, *extra) -> dict:
    """``metrics.csv``'s row of a one-epoch run (:data:`ONE_EPOCH` plus ``extra``) whose rate is too small to move the
    weights and which has no dropout: runs that differ in their options score the same model on the same batches."""
    from mobileconv.cli import main
    from mobileconv.engine.metrics import read_metrics_csv

    args = [*ONE_EPOCH, "--lr", "1e-12", "--warmup-epochs", "0", "--drop", "0", "--out", str(out), *extra]
    assert main(["train", *args]) == 0
    return read_metrics_csv(Path(out) / "metrics.csv")[0]


def run_cli(args, env_extra=None, timeout=300, module=("-m", "mobileconv")):
    """Run a command in a fresh single-threaded Python process; returns the CompletedProcess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, *module, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


def failed_train(args, capsys) -> str:
    """Run ``mobileconv train ARGS``; check it failed with one line and return that line."""
    from mobileconv.cli import main

    capsys.readouterr()
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mobileconv train: error: "), err
    return err


def scheduled_lrs(epochs: int, steps: int, warmup_epochs: float, lr: float, min_lr: float, *schedule, **options):
    """The learning rate of each step under ``create_scheduler`` (SGD on one tensor), and the one after the last.

    ``schedule``: ``create_scheduler``'s ``sched, decay_epochs, decay_rate`` (default: the cosine); ``options``, its
    keyword arguments."""
    import torch

    from mobileconv.engine.optim import create_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2, 2))], lr=lr)
    sched = create_scheduler(opt, epochs, steps, warmup_epochs, lr, min_lr, *schedule, **options)
    seen = []
    for _ in range(epochs * steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return seen, opt.param_groups[0]["lr"]
