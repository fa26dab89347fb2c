"""``--sched step``: timm's StepLRScheduler, ``lr * decay_rate ** (epoch // decay_epochs)`` after a linear warm-up.

Oracle: the decay counts written out by hand for whole epochs (``epoch // 2.4`` for epochs 0-7 is
0, 0, 0, 1, 1, 2, 2, 2), not the scheduler's own expression.
"""
import pytest
import torch

from mobileconv.cli import main
from mobileconv.engine.metrics import read_metrics_csv
from mobileconv.engine.optim import create_scheduler

from .helpers import scheduled_lrs

MODEL = "mobilenetv3_small_100_cifar"
QUICK = ["--model", MODEL, "--data", "synthetic", "--img-size", "16", "--max-train-samples", "16",
         "--max-val-samples", "8", "--batch-size", "8", "--quiet"]


def test_step_schedule_decays_at_whole_epochs_after_the_warmup():
    lr, steps = 0.1, 3
    seen, after = scheduled_lrs(8, steps, 1, lr, 0.0, "step", 2.4, 0.5)
    decays = [0, 0, 0, 1, 1, 2, 2, 2]  # epochs 0-7 // 2.4, as timm counts them
    for t, value in enumerate(seen):
        expected = lr * (0.01 + 0.99 * t / steps) if t < steps else lr * 0.5 ** decays[t // steps]
        assert value == pytest.approx(expected), t
    assert after == pytest.approx(lr * 0.5 ** 3)  # epoch 8 // 2.4 = 3


def test_step_schedule_never_goes_below_min_lr():
    seen, after = scheduled_lrs(5, 2, 0, 0.1, 0.0005, "step", 1, 0.1)
    assert seen == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.0005, 0.0005, 0.0005, 0.0005])
    assert after == pytest.approx(0.0005)


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="--sched must be one of cosine, poly, tanh, step, multistep, plateau, "
                                         "got 'linear'"):
        scheduled_lrs(1, 1, 0, 0.1, 0.0, "linear", 1, 0.5)


def test_train_with_step_schedule_records_the_rate_after_each_epoch(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *QUICK, "--epochs", "3", "--warmup-epochs", "0", "--lr", "0.08", "--sched", "step",
                 "--decay-epochs", "1", "--decay-rate", "0.5", "--out", str(run)]) == 0, capsys.readouterr().err
    rows = read_metrics_csv(run / "metrics.csv")
    # the rate the next step uses: epoch 1, 2, 3 // 1 decays
    assert [row["lr"] for row in rows] == pytest.approx([0.04, 0.02, 0.01])
    config = (run / "config.yaml").read_text()
    assert "sched: step" in config and "decay_epochs: 1.0" in config and "decay_rate: 0.5" in config


def test_step_defaults_are_timms_and_recorded(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *QUICK, "--epochs", "1", "--sched", "step", "--out", str(run)]) == 0
    config = (run / "config.yaml").read_text()
    assert "decay_epochs: 90.0" in config and "decay_rate: 0.1" in config


@pytest.mark.parametrize("option, shown, users", [
    (["--decay-epochs", "2.4"], "2.4", "step"),
    (["--decay-rate", "0.97"], "0.97", "poly, step, multistep or plateau"),
    (["--decay-milestones", "30", "60"], "30 60", "multistep"),
])
def test_decay_options_without_step_are_refused(tmp_path, capsys, option, shown, users):
    assert main(["train", *QUICK, *option, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{option[0]} {shown} (set on the command line) is used by --sched {users} only, not by " \
           f"--sched cosine: leave {option[0]} out, or add --sched {users}" in err
    assert not (tmp_path / "run").exists()


def test_resuming_a_step_run_with_cosine_drops_the_recorded_decay(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *QUICK, "--epochs", "1", "--sched", "step", "--decay-rate", "0.5", "--out", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "2", "--sched", "cosine", "--quiet"]) == 0, \
        capsys.readouterr().err
    config = (run / "config.yaml").read_text()
    assert "sched: cosine" in config and "decay_rate: null" in config


@pytest.mark.parametrize("option, value, expected", [
    ("--decay-rate", "0", "--decay-rate must be in (0, 1], got 0.0"),
    ("--decay-rate", "1.5", "--decay-rate must be in (0, 1], got 1.5"),
    ("--decay-epochs", "0", "--decay-epochs must be a finite number > 0, got 0.0"),
    ("--decay-epochs", "inf", "--decay-epochs must be a finite number > 0, got inf"),
])
def test_bad_step_options_are_refused(tmp_path, capsys, option, value, expected):
    assert main(["train", *QUICK, "--sched", "step", option, value, "--out", str(tmp_path / "run")]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_schedule_given_on_resume_applies_from_the_saved_position(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *QUICK, "--epochs", "1", "--warmup-epochs", "0", "--lr", "0.08", "--out", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "3", "--sched", "step", "--decay-epochs", "1",
                 "--decay-rate", "0.5", "--quiet"]) == 0, capsys.readouterr().err
    rows = read_metrics_csv(run / "metrics.csv")
    assert [row["lr"] for row in rows[1:]] == pytest.approx([0.02, 0.01])  # epochs 2 and 3 // 1 decays


@pytest.mark.parametrize("schedule", [(), ("step", 2, 0.5)])  # no decay before epoch 2
def test_warmup_starts_from_warmup_lr(schedule):
    lr, steps, warmup_lr = 0.1, 4, 1e-6
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched_args = (*schedule,) if schedule else ("cosine", None, None)
    sched = create_scheduler(opt, 3, steps, 1, lr, 0.0, *sched_args, warmup_lr)
    seen = []
    for _ in range(steps + 1):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # linear from 1e-6 at step 0 to lr at the end of the warm-up (step 4)
    assert seen == pytest.approx([warmup_lr + (lr - warmup_lr) * t / steps for t in range(steps)] + [lr])


def test_train_records_warmup_lr_and_refuses_a_negative_one(tmp_path, capsys):
    assert main(["train", *QUICK, "--epochs", "1", "--warmup-lr", "1e-6", "--out", str(tmp_path / "run")]) == 0
    assert "warmup_lr: 1.0e-06" in (tmp_path / "run" / "config.yaml").read_text()
    assert main(["train", *QUICK, "--warmup-lr", "-1", "--out", str(tmp_path / "bad")]) == 2
    assert "--warmup-lr must be a finite number >= 0, got -1.0" in capsys.readouterr().err
