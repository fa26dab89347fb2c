"""--lr-cycle-limit / --lr-cycle-mul / --lr-cycle-decay / --lr-k-decay: timm's cycles (SGDR's warm restarts) and
k-decay. The oracle is timm's per-epoch formula written out (one step per epoch, no warm-up), its first cycle as long
as the cycles that fill --epochs here."""
import math

import pytest

from mobileconv.cli import main
from mobileconv.engine.metrics import read_metrics_csv

from .helpers import ONE_EPOCH, failed_train, scheduled_lrs

LR, MIN_LR = 0.1, 0.001
CURVES = {"cosine": lambda p, power: 0.5 * (1 + math.cos(math.pi * p)),
          "poly": lambda p, power: (1 - p) ** power,
          "tanh": lambda p, power: 0.5 * (1 - math.tanh(-7 * (1 - p) + 3 * p))}


def timm_rate(t, first, shape, mul=1.0, decay=0.5, k=1.0, power=1.0):
    """timm's CosineLRScheduler / PolyLRScheduler / TanhLRScheduler at epoch t with t_initial = first."""
    if mul != 1:
        i = math.floor(math.log(1 - t / first * (1 - mul), mul))
        t_i, t_curr = mul ** i * first, t - (1 - mul ** i) / (1 - mul) * first
    else:
        i, t_i = t // first, first
        t_curr = t - first * i
    return MIN_LR + (LR * decay ** i - MIN_LR) * CURVES[shape](t_curr ** k / t_i ** k, power)


@pytest.mark.parametrize("shape, epochs, first, options", [
    ("cosine", 30, 10, dict(cycles=3)),
    ("cosine", 70, 10, dict(cycles=3, cycle_mul=2.0, cycle_decay=0.8)),
    ("cosine", 21, 7, dict(cycles=3, cycle_decay=1.0, k_decay=2.0)),
    ("cosine", 20, 20, dict(k_decay=0.5)),
    ("poly", 19, 4, dict(cycles=3, cycle_mul=1.5, k_decay=3.0)),  # cycles of 4, 6 and 9 epochs
    ("tanh", 24, 12, dict(cycles=2, cycle_decay=0.7)),
])
def test_the_cycles_follow_timms_formula(shape, epochs, first, options):
    power = 2.0 if shape == "poly" else None
    got, after = scheduled_lrs(epochs, 1, 0, LR, MIN_LR, shape, None, power, **options)
    mul, decay, k = (options.get(name, default) for name, default in (("cycle_mul", 1.0), ("cycle_decay", 0.5),
                                                                       ("k_decay", 1.0)))
    expected = [timm_rate(t, first, shape, mul, decay, k, power or 1.0) for t in range(epochs)]
    assert got == pytest.approx(expected, rel=1e-9)
    restarts = [t for t in range(1, epochs) if got[t] > got[t - 1]]
    assert len(restarts) == options.get("cycles", 1) - 1
    if shape != "tanh":  # timm's tanh stops short of the minimum
        assert after == pytest.approx(MIN_LR)


def test_the_warm_up_comes_once_before_the_cycles():
    steps, warmup = 2, 2  # a decay of 10 epochs = 20 steps after the warm-up's 4: two cycles of 10 steps
    got, _ = scheduled_lrs(12, steps, warmup, LR, MIN_LR, "cosine", cycles=2)
    assert got[:4] == pytest.approx([LR * (0.01 + 0.99 * t / 4) for t in range(4)])
    assert got[4] == pytest.approx(LR) and got[14] == pytest.approx(LR * 0.5)
    assert got[13] == pytest.approx(MIN_LR + (LR - MIN_LR) * 0.5 * (1 + math.cos(math.pi * 9 / 10)))


def test_a_run_restarts_its_rate(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *ONE_EPOCH, "--epochs", "4", "--warmup-epochs", "0", "--min-lr", "0.001",
                 "--lr-cycle-limit", "2", "--lr-cycle-decay", "0.6", "--out", str(out)]) == 0
    rates = [row["lr"] for row in read_metrics_csv(out / "metrics.csv")]  # each epoch's rate after its last step
    assert rates == pytest.approx([timm_rate(t, 2, "cosine", decay=0.6) for t in (1, 2, 3)] + [MIN_LR])
    assert rates[1] == pytest.approx(LR * 0.6)  # the second cycle starts at 0.6 of the first one's peak
    assert "lr_cycle_limit: 2\n" in (out / "config.yaml").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--sched", "step", "--lr-cycle-limit", "2"],
     "--lr-cycle-limit 2 (set on the command line) restarts the decay of --sched cosine, poly or tanh, and --sched "
     "step has none"),
    (["--lr-cycle-mul", "2"], "--lr-cycle-mul 2.0 (set on the command line) shapes the cycles of --lr-cycle-limit"),
    (["--lr-cycle-decay", "0.9"], "--lr-cycle-decay 0.9 (set on the command line) shapes the cycles"),
    (["--sched", "tanh", "--lr-k-decay", "2"], "--lr-k-decay 2.0 (set on the command line) reshapes the decay of "
                                               "--sched cosine or poly (timm's), not --sched tanh"),
    (["--lr-cycle-limit", "0"], "--lr-cycle-limit must be >= 1, got 0"),
    (["--lr-cycle-limit", "2", "--lr-cycle-mul", "0"], "--lr-cycle-mul must be a finite number > 0, got 0.0"),
    (["--lr-cycle-limit", "2", "--lr-cycle-decay", "1.5"], "--lr-cycle-decay must be in (0, 1], got 1.5"),
    (["--lr-k-decay", "-1"], "--lr-k-decay must be a finite number > 0, got -1.0"),
])
def test_unused_or_bad_cycle_options_are_refused(argv, message, tmp_path, capsys):
    err = failed_train([*ONE_EPOCH, *argv, "--out", str(tmp_path / "run")], capsys)
    assert message in err
