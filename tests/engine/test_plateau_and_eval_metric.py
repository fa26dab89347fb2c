"""``--sched plateau`` (timm's PlateauLRScheduler) and ``--eval-metric top1|top5|loss``.

Oracles: ``torch.optim.lr_scheduler.ReduceLROnPlateau`` fed the same metrics (what timm's scheduler wraps), and the
best epochs read off metrics.csv in the test.
"""
import pytest
import torch
import yaml

from mobileconv.cli import main
from mobileconv.engine.checkpoint import load_weights
from mobileconv.engine.metrics import read_metrics_csv
from mobileconv.engine.optim import create_scheduler, refresh_lr

from .helpers import TINY, failed_train

DETERMINISTIC = [*TINY, "--deterministic", "--warmup-epochs", "0", "--lr", "0.2", "--seed", "3"]


def torch_plateau_lrs(metrics, lr, mode, rate, patience, min_lr=0.0):
    """The rate after each epoch from torch's ReduceLROnPlateau (relative threshold 1e-4, no cooldown)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=rate, patience=patience,
                                                       threshold=1e-4, min_lr=min_lr)
    lrs = []
    for metric in metrics:
        sched.step(metric)
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("mode, metrics", [
    ("max", [10, 20, 20, 20.001, 19, 30, 30, 30, 30, 30, 31, 5, 5, 5]),
    ("min", [2.0, 1.5, 1.6, 1.4999, 1.7, 1.0, 1.0, 1.0, 1.0, 0.5, 0.6, 0.7]),
])
@pytest.mark.parametrize("patience", [0, 1, 2])
def test_plateau_decays_as_torchs_reduce_lr_on_plateau(mode, metrics, patience):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = create_scheduler(opt, len(metrics), 2, 0, 0.1, 0.001, "plateau", None, 0.5, None, None, 0.67, 0, None,
                             patience, mode)
    seen = []
    for done, metric in enumerate(metrics, 1):
        for _ in range(2):
            opt.step()
            sched.step()
        sched.lr_lambdas[0].record(done, metric)
        seen.append(refresh_lr(sched)[0])
    assert seen == pytest.approx(torch_plateau_lrs(metrics, 0.1, mode, 0.5, patience, 0.001))


def test_plateau_passes_over_the_warmup_epochs():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = create_scheduler(opt, 6, 4, 2, 0.1, 0.0, "plateau", None, 0.5, None, None, 0.67, 0, None, 0)
    schedule = sched.lr_lambdas[0]
    for done, metric in enumerate([50, 40, 30], 1):  # falling, but epochs 1 and 2 are the warm-up
        schedule.record(done, metric)
    assert schedule.decays == 0 and schedule.best == 30
    schedule.record(4, 20)
    assert schedule.decays == 1  # a bad epoch with patience 0


def test_train_with_plateau_follows_the_oracle_and_resumes_to_the_same_rates(tmp_path, capsys):
    plateau = ["--sched", "plateau", "--patience-epochs", "0", "--decay-rate", "0.5", "--eval-metric", "loss"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(["train", *DETERMINISTIC, *plateau, "--epochs", "6", "--out", str(whole)]) == 0, \
        capsys.readouterr().err
    rows = read_metrics_csv(whole / "metrics.csv")
    assert [r["lr"] for r in rows] == pytest.approx(torch_plateau_lrs([r["test_loss"] for r in rows], 0.2, "min",
                                                                      0.5, 0))
    assert main(["train", *DETERMINISTIC, *plateau, "--epochs", "3", "--out", str(split)]) == 0
    assert main(["train", "--resume", str(split), "--epochs", "6", "--quiet"]) == 0, capsys.readouterr().err
    assert [r["lr"] for r in read_metrics_csv(split / "metrics.csv")] == pytest.approx([r["lr"] for r in rows])
    config = yaml.safe_load((whole / "config.yaml").read_text())
    assert (config["sched"], config["patience_epochs"], config["decay_rate"], config["eval_metric"]) == \
        ("plateau", 0, 0.5, "loss")


def test_eval_metric_loss_picks_the_lowest_test_loss(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "4", "--lr", "0.5", "--eval-metric", "loss", "--checkpoint-hist", "2",
                 "--out", str(run)]) == 0, capsys.readouterr().err
    rows = read_metrics_csv(run / "metrics.csv")
    by_loss = sorted(rows, key=lambda r: (r["test_loss"], r["epoch"]))
    _, meta = load_weights(run / "best.safetensors")
    assert meta["epoch"] == by_loss[0]["epoch"]
    assert sorted(int(p.stem.split("-")[1]) for p in run.glob("checkpoint-*.safetensors")) == \
        sorted(int(r["epoch"]) for r in by_loss[:2])
    summary = yaml.safe_load((run / "summary.json").read_text())
    assert summary["eval_metric"] == "loss" and summary["best_epoch"] == by_loss[0]["epoch"]


def test_plateau_defaults_are_timms(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--sched", "plateau", "--out", str(run)]) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["patience_epochs"], config["decay_rate"], config["eval_metric"]) == (10, 0.1, "top1")


@pytest.mark.parametrize("argv, message", [
    (["--patience-epochs", "3"], "--patience-epochs 3 (set on the command line) is used by --sched plateau only, "
                                 "not by --sched cosine: leave --patience-epochs out, or add --sched plateau"),
    (["--sched", "plateau", "--patience-epochs", "-1"], "--patience-epochs must be >= 0, got -1"),
    (["--sched", "plateau", "--decay-rate", "1.5"], "--decay-rate must be in (0, 1], got 1.5"),
])
def test_bad_plateau_options_are_refused(argv, message, capsys):
    assert message in failed_train([*TINY, *argv], capsys)
