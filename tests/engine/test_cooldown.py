"""--cooldown-epochs N: the cosine reaches --min-lr N epochs before the run ends, which then trains on at --min-lr
(timm's cooldown, counted within --epochs here)."""
import math

import pytest

from mobileconv.engine.metrics import read_metrics_csv

from .helpers import TINY, failed_train, run_cli


def test_the_cosine_ends_early_and_the_rest_runs_at_min_lr(tmp_path):
    out = tmp_path / "run"
    done = run_cli(["train", *TINY, "--epochs", "5", "--cooldown-epochs", "2", "--warmup-epochs", "0", "--lr", "0.1",
                    "--min-lr", "0.01", "--out", str(out)])
    assert done.returncode == 0, done.stderr
    lrs = [row["lr"] for row in read_metrics_csv(out / "metrics.csv")]  # the rate after each epoch's last step
    steps = 4  # 64 images, batch 16
    cosine = [0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * min(1.0, e * steps / (3 * steps)))) for e in range(1, 6)]
    assert lrs == pytest.approx(cosine, abs=1e-6)
    assert lrs[2:] == pytest.approx([0.01] * 3, abs=1e-9)


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "3", "--cooldown-epochs", "3"], "--cooldown-epochs must be from 0 to --epochs - 1 = 2"),
    (["--sched", "step", "--cooldown-epochs", "1"], "--cooldown-epochs 1 (set on the command line) ends the decay "
                                                   "early, and --sched step has no end: use --sched cosine, poly or "
                                                   "tanh"),
])
def test_bad_cooldowns_are_refused(argv, message, capsys):
    assert message in failed_train([*TINY, *argv], capsys)
