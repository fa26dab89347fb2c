"""--lr-noise START END / --lr-noise-pct: timm's learning-rate noise (Scheduler._add_noise), written out here as
timm computes it: in epochs START*E <= e < END*E the rate is multiplied by 1 + the first N(0, 1) draw below pct
in magnitude from torch.Generator().manual_seed(seed + e)."""
import math

import pytest
import torch
from torch import nn

from mobileconv.engine.optim import create_scheduler

from .helpers import TINY, failed_train


def timm_noise(epoch: int, pct: float, seed: int) -> float:
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    while True:
        noise = torch.randn(1, generator=g).item()
        if abs(noise) < pct:
            return noise


def rates(sched: str, noise, pct=0.67, seed=42, epochs=10, steps=3):
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    kwargs = {"decay_epochs": 2.0, "decay_rate": 0.5} if sched == "step" else {}
    scheduler = create_scheduler(optimizer, epochs, steps, 1.0, 0.1, 0.001, sched, noise=noise, noise_pct=pct,
                                 seed=seed, **kwargs)
    lrs = []
    for _ in range(epochs * steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("sched", ["cosine", "step"])
def test_noise_multiplies_the_rate_of_the_epochs_in_range(sched):
    plain, noisy = rates(sched, None), rates(sched, (0.42, 0.9))
    for step, (a, b) in enumerate(zip(plain, noisy)):
        epoch = step // 3
        factor = 1 + timm_noise(epoch, 0.67, 42) if 4.2 <= epoch < 9 else 1.0  # epochs 5-8 of 10
        assert b == pytest.approx(a * factor, rel=1e-12), (step, epoch)
    assert sum(a != b for a, b in zip(plain, noisy)) == 4 * 3  # four epochs of three steps
    assert all(abs(b / a - 1) < 0.67 for a, b in zip(plain, noisy))


def test_pct_bounds_the_noise_and_the_seed_picks_it():
    tight = rates("cosine", (0.0, 1.0), pct=0.05, seed=7)
    plain = rates("cosine", None)
    assert all(abs(b / a - 1) < 0.05 for a, b in zip(plain, tight))
    assert rates("cosine", (0.0, 1.0), seed=7) != rates("cosine", (0.0, 1.0), seed=8)
    assert rates("cosine", (0.0, 1.0), seed=7) == rates("cosine", (0.0, 1.0), seed=7)
    assert not math.isclose(rates("cosine", (0.0, 1.0), seed=7)[0], plain[0])


@pytest.mark.parametrize("argv, message", [
    (["--lr-noise-pct", "0.5"], "--lr-noise-pct 0.5 (set on the command line) bounds the noise of --lr-noise, which is "
                                "off"),
    (["--lr-noise", "0.9", "0.42"], "--lr-noise must be two finite fractions of the run, 0 <= START < END"),
    (["--lr-noise", "0.1", "0.5", "--lr-noise-pct", "0"], "--lr-noise-pct must be a finite number > 0"),
])
def test_bad_noise_options_are_refused(argv, message, capsys):
    assert message in failed_train([*TINY, *argv], capsys)
