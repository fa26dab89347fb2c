"""--no-warmup-prefix (timm's warmup_prefix=False, its default): the cosine, poly or tanh decay counted from the run's
start, the warm-up laid over its beginning. The oracle is the schedule written out per step."""
import math

import pytest

from .helpers import TINY, failed_train, scheduled_lrs

EPOCHS, STEPS, WARMUP, LR, MIN_LR = 5, 4, 2, 0.1, 0.001


def rates(sched, prefix, decay_rate=None):
    return scheduled_lrs(EPOCHS, STEPS, WARMUP, LR, MIN_LR, sched, None, decay_rate, warmup_prefix=prefix)[0]


def written_out(shape, prefix, power=1.0):
    total, warmup = EPOCHS * STEPS, WARMUP * STEPS
    curve = {"cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p)), "poly": lambda p: (1 - p) ** power,
             "tanh": lambda p: 0.5 * (1 - math.tanh(-7 * (1 - p) + 3 * p))}[shape]
    out = []
    for t in range(total):
        if t < warmup:
            out.append(LR * (0.01 + 0.99 * t / warmup))
        else:
            offset = warmup if prefix else 0
            out.append(MIN_LR + (LR - MIN_LR) * curve((t - offset) / (total - offset)))
    return out


@pytest.mark.parametrize("sched", ["cosine", "poly", "tanh"])
@pytest.mark.parametrize("prefix", [True, False])
def test_the_decay_starts_where_the_prefix_says(sched, prefix):
    power = 2.0 if sched == "poly" else 1.0
    got = rates(sched, prefix, power if sched == "poly" else None)
    assert got == pytest.approx(written_out(sched, prefix, power), rel=1e-9)
    if not prefix:  # the first step after the warm-up is already part-way down the curve
        assert got[WARMUP * STEPS] < rates(sched, True, power if sched == "poly" else None)[WARMUP * STEPS]


@pytest.mark.parametrize("argv, message", [
    (["--no-warmup-prefix", "--sched", "step"], "--no-warmup-prefix (set on the command line) says where the decay"),
    (["--no-warmup-prefix", "--warmup-epochs", "0"], "with --warmup-epochs 0 has no use for it, or leave "
                                                       "--no-warmup-prefix out"),
])
def test_it_is_refused_where_nothing_uses_it(argv, message, tmp_path, capsys):
    assert message in failed_train([*TINY, *argv, "--out", str(tmp_path / "run")], capsys)
