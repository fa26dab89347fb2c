"""``--sched poly``, ``tanh`` and ``multistep``: timm's PolyLRScheduler, TanhLRScheduler and MultiStepLRScheduler.

Oracles: timm's formulas written out here (``(1 - p) ** power``, ``(1 - tanh(-7 (1 - p) + 3 p)) / 2``), fractions
worked out by hand, and milestone counts listed by hand, not the scheduler's own expressions.
"""
import math

import pytest
import yaml

from mobileconv.cli import main
from mobileconv.engine.metrics import read_metrics_csv

from .helpers import TINY, failed_train, scheduled_lrs

QUICK = [*TINY[:TINY.index("--max-train-samples")], "--max-train-samples", "16", "--max-val-samples", "8",
         "--batch-size", "8", "--quiet"]


def test_poly_decays_with_decay_rate_as_its_power_to_min_lr():
    seen, after = scheduled_lrs(2, 3, 0, 0.1, 0.01, "poly", None, 2.0)
    # p = t / 6 after no warm-up: (1 - p) ** 2 = 36/36, 25/36, 16/36, 9/36, 4/36, 1/36 of the way from 0.01 to 0.1
    assert seen == pytest.approx([0.01 + 0.09 * n / 36 for n in (36, 25, 16, 9, 4, 1)])
    assert after == pytest.approx(0.01)


def test_poly_counts_its_progress_from_the_warmups_end():
    seen, _ = scheduled_lrs(3, 2, 1, 1.0, 0.0, "poly", None, 1.0)
    assert seen == pytest.approx([0.01, 0.505, 1.0, 0.75, 0.5, 0.25])  # warm-up from lr / 100, then linear to 0


def test_tanh_follows_timms_curve_between_lr_and_min_lr():
    lr, low, steps = 0.2, 0.02, 8
    seen, after = scheduled_lrs(2, 4, 0, lr, low, "tanh")
    expected = [low + (lr - low) * 0.5 * (1 - math.tanh(-7 * (1 - t / steps) + 3 * t / steps)) for t in range(steps)]
    assert seen == pytest.approx(expected)
    assert seen[0] == pytest.approx(lr, rel=1e-6)  # tanh(-7) = -0.9999983
    assert after == pytest.approx(low + (lr - low) * 0.0024726, rel=1e-4)  # (1 - tanh(3)) / 2: timm's never-quite-min


def test_multistep_decays_at_each_milestone_and_not_below_min_lr():
    seen, after = scheduled_lrs(7, 2, 1, 0.1, 0.0, "multistep", None, 0.5, None, None, 0.67, 0, (2, 5))
    decays = [0, 0, 1, 1, 1, 2, 2]  # epochs 0-6: how many of the milestones 2 and 5 are <= the epoch
    assert seen[:2] == pytest.approx([0.001, 0.0505])  # the warm-up
    assert seen[2:] == pytest.approx([0.1 * 0.5 ** decays[t // 2] for t in range(2, 14)])
    assert after == pytest.approx(0.025)
    floored, _ = scheduled_lrs(3, 1, 0, 0.1, 0.04, "multistep", None, 0.1, None, None, 0.67, 0, (1, 2))
    assert floored == pytest.approx([0.1, 0.04, 0.04])


def test_train_with_multistep_records_the_rate_after_each_epoch(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *QUICK, "--epochs", "3", "--warmup-epochs", "0", "--lr", "0.08", "--sched", "multistep",
                 "--decay-milestones", "1", "2", "--decay-rate", "0.5", "--out", str(run)]) == 0, \
        capsys.readouterr().err
    assert [row["lr"] for row in read_metrics_csv(run / "metrics.csv")] == pytest.approx([0.04, 0.02, 0.02])
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["sched"], config["decay_milestones"], config["decay_rate"]) == ("multistep", [1, 2], 0.5)
    assert config["decay_epochs"] is None  # step's option, of no use here


@pytest.mark.parametrize("sched, recorded", [("multistep", {"decay_milestones": [90, 180, 270], "decay_rate": 0.1}),
                                             ("poly", {"decay_milestones": None, "decay_rate": 0.1}),
                                             ("tanh", {"decay_milestones": None, "decay_rate": None})])
def test_defaults_are_timms_and_recorded(tmp_path, capsys, sched, recorded):
    run = tmp_path / "run"
    assert main(["train", *QUICK, "--epochs", "1", "--sched", sched, "--out", str(run)]) == 0, capsys.readouterr().err
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert {name: config[name] for name in recorded} == recorded


def test_poly_cooldown_trains_on_at_min_lr(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *QUICK, "--epochs", "4", "--cooldown-epochs", "2", "--warmup-epochs", "0", "--lr", "0.1",
                 "--min-lr", "0.02", "--sched", "poly", "--decay-rate", "1", "--out", str(run)]) == 0, \
        capsys.readouterr().err
    # 2 steps per epoch; the linear decay spans the first 2 epochs (4 steps): 1/2 of the way after epoch 1
    assert [row["lr"] for row in read_metrics_csv(run / "metrics.csv")] == pytest.approx([0.06, 0.02, 0.02, 0.02])


def test_milestones_from_a_config_file(tmp_path, capsys):
    run, config = tmp_path / "run", tmp_path / "recipe.yaml"
    config.write_text("sched: multistep\ndecay-milestones: [1]\ndecay-rate: 0.25\n")
    assert main(["train", *QUICK, "--epochs", "2", "--warmup-epochs", "0", "--lr", "0.08", "--config", str(config),
                 "--out", str(run)]) == 0, capsys.readouterr().err
    assert [row["lr"] for row in read_metrics_csv(run / "metrics.csv")] == pytest.approx([0.02, 0.02])


def test_resuming_a_multistep_run_with_cosine_drops_the_recorded_milestones(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *QUICK, "--epochs", "1", "--sched", "multistep", "--decay-milestones", "5",
                 "--out", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "2", "--sched", "cosine", "--quiet"]) == 0, \
        capsys.readouterr().err
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["sched"], config["decay_milestones"], config["decay_rate"]) == ("cosine", None, None)


@pytest.mark.parametrize("argv, message", [
    (["--sched", "multistep", "--decay-milestones", "3", "2"],
     "--decay-milestones must be epochs >= 1 in increasing order, got (3, 2)"),
    (["--sched", "multistep", "--decay-milestones", "0", "2"],
     "--decay-milestones must be epochs >= 1 in increasing order, got (0, 2)"),
    (["--sched", "poly", "--decay-rate", "0"],
     "--decay-rate must be a finite number > 0 with --sched poly (the power)"),
    (["--sched", "step", "--decay-rate", "2"], "--decay-rate must be in (0, 1], got 2.0"),
    (["--sched", "step", "--decay-milestones", "30"], "--decay-milestones 30 (set on the command line) is used by "
                                                      "--sched multistep only, not by --sched step"),
    (["--sched", "tanh", "--decay-rate", "0.5"], "--decay-rate 0.5 (set on the command line) is used by --sched poly, "
                                                 "step, multistep or plateau only, not by --sched tanh"),
    (["--sched", "multistep", "--cooldown-epochs", "1"], "--cooldown-epochs 1 (set on the command line) ends the "
                                                         "decay early, and --sched multistep has no end"),
])
def test_bad_schedule_options_are_refused(argv, message, capsys):
    assert message in failed_train([*QUICK, *argv], capsys)


def test_a_single_milestone_in_a_config_file_must_be_a_list(tmp_path, capsys):
    config = tmp_path / "recipe.yaml"
    config.write_text("sched: multistep\ndecay_milestones: 30\n")
    assert "option 'decay-milestones' expects one or more values, got 30" in failed_train(
        [*QUICK, "--config", str(config), "--out", str(tmp_path / "run")], capsys)
