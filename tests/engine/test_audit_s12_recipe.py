"""Audit of the training recipe's mathematics (optimizer epsilon, EMA of tied weights, schedule, mixup targets).

Every expected value comes from an independent oracle: torch.optim / torch.optim.lr_scheduler classes,
torch.optim.swa_utils.AveragedModel, or the formula written out here, never from the code under test.
"""

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from mobileconv.data import MixupCutmix
from mobileconv.engine.config import TrainConfig
from mobileconv.engine.ema import ModelEma
from mobileconv.engine.optim import create_optimizer

from .helpers import scheduled_lrs

# ---- optimizer epsilon ------------------------------------------------------------------------------


def zero_grad_step(optimizer_class, **kwargs) -> torch.Tensor:
    """One step of a torch optimizer on a weight whose gradient is 0 (a dead ReLU channel)."""
    weight = nn.Parameter(torch.ones(3))
    weight.grad = torch.zeros(3)
    optimizer_class([weight], lr=0.01, **kwargs).step()
    return weight.detach()


def test_an_epsilon_of_zero_makes_rmsprop_and_adamw_weights_nan():
    # why --opt-eps 0 is nonsense: torch's own optimizers divide 0 by sqrt(0) + 0
    assert torch.isnan(zero_grad_step(torch.optim.RMSprop, alpha=0.9, eps=0.0, momentum=0.9)).all()
    assert torch.isnan(zero_grad_step(torch.optim.AdamW, eps=0.0)).all()
    assert torch.isfinite(zero_grad_step(torch.optim.RMSprop, alpha=0.9, eps=1e-3 ** 0.5, momentum=0.9)).all()


@pytest.mark.parametrize("eps", [0.0, -0.0])
def test_config_refuses_an_optimizer_epsilon_of_zero(eps):
    with pytest.raises(ValueError, match=r"^--opt-eps must be a finite number > 0"):
        TrainConfig(opt="rmsprop", opt_eps=eps).validate()
    with pytest.raises(ValueError, match=r"^--opt-eps must be a finite number > 0"):
        TrainConfig.from_mapping({"opt": "adamw", "opt-eps": eps}, "--config c.yaml").validate()
    TrainConfig(opt="rmsprop", opt_eps=1e-8).validate()  # any positive epsilon stays accepted
    with pytest.raises(ValueError, match=r"^--opt-eps .* is not used by --opt sgd"):  # SGD has no epsilon
        TrainConfig(opt="sgd", opt_eps=eps).validate()


@pytest.mark.parametrize("opt", ["rmsprop", "adamw"])
def test_create_optimizer_refuses_an_epsilon_of_zero(opt):
    with pytest.raises(ValueError, match="--opt-eps must be a finite number > 0"):
        create_optimizer(nn.Linear(2, 2), opt, lr=0.01, weight_decay=0.0, eps=0.0)
    with pytest.raises(ValueError, match="--opt-eps 0.0 is not used by --opt sgd"):  # SGD has no epsilon
        create_optimizer(nn.Linear(2, 2), "sgd", lr=0.01, weight_decay=0.0, eps=0.0)


# ---- EMA ----------------------------------------------------------------------------------------------


class TiedNet(nn.Module):
    """An encoder / decoder pair sharing one weight (as in tied-embedding models) and a batch norm."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Linear(4, 4, bias=False)
        self.norm = nn.BatchNorm1d(4)
        self.decode = nn.Linear(4, 4)
        self.decode.weight = self.encode.weight

    def forward(self, x):
        return self.decode(self.norm(self.encode(x)))


def warmed_decay(decay: float, t: int) -> float:
    return min(decay, (1 + t) / (10 + t))


def test_ema_of_a_tied_weight_is_averaged_not_copied():
    torch.manual_seed(0)
    model, decay, steps = TiedNet(), 0.9, 6
    ema = ModelEma(model, decay)
    # oracle: AveragedModel averages model.parameters() (each shared tensor once); its first update copies,
    # so its update n >= 2 (averaged count n - 1 so far) is ModelEma's update t = n - 1 (t = 1, 2, ...), whose
    # decay is min(D, (1 + t) / (10 + t))
    oracle = AveragedModel(model, avg_fn=lambda avg, p, n: avg * warmed_decay(decay, int(n))
                           + p * (1 - warmed_decay(decay, int(n))), use_buffers=False)
    oracle.update_parameters(model)
    by_hand = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for t in range(steps):
        model.train()
        loss = model(torch.randn(8, 4)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(model)
        oracle.update_parameters(model)
        d = warmed_decay(decay, t + 1)
        for name, p in model.named_parameters():
            by_hand[name] = d * by_hand[name] + (1 - d) * p.detach()
    assert not torch.allclose(ema.module.encode.weight, model.encode.weight)  # not the live weight
    torch.testing.assert_close(ema.module.encode.weight, by_hand["encode.weight"])
    torch.testing.assert_close(ema.module.decode.weight, by_hand["encode.weight"])  # still one tensor
    assert ema.module.decode.weight is ema.module.encode.weight
    for (name, mine), theirs in zip(ema.module.named_parameters(), oracle.module.parameters()):
        torch.testing.assert_close(mine, theirs, msg=name)
    # the batch-norm statistics are still the live model's, as documented
    torch.testing.assert_close(ema.module.norm.running_mean, model.norm.running_mean)
    assert ema.module.norm.num_batches_tracked == model.norm.num_batches_tracked == steps


def test_ema_without_ties_matches_averaged_model():
    torch.manual_seed(1)
    model, decay = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(12, 2)), 0.95
    ema = ModelEma(model, decay)
    oracle = AveragedModel(model, avg_fn=lambda avg, p, n: avg * warmed_decay(decay, int(n))
                           + p * (1 - warmed_decay(decay, int(n))), use_buffers=False)
    oracle.update_parameters(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(30):
        loss = model(torch.randn(4, 2, 4, 4)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(model)
        oracle.update_parameters(model)
    for (name, mine), theirs in zip(ema.module.named_parameters(), oracle.module.parameters()):
        torch.testing.assert_close(mine, theirs, msg=name)


# ---- schedule -------------------------------------------------------------------------------------------


def torch_lrs(total, warm, lr, min_lr):
    """torchvision's recipe: LinearLR(start 0.01) for ``warm`` steps, then CosineAnnealingLR to ``min_lr``."""
    param = nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.SGD([param], lr=lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warm, eta_min=min_lr)
    if warm:
        linear = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=warm)
        sched = torch.optim.lr_scheduler.SequentialLR(opt, [linear, cosine], milestones=[warm])
    else:
        sched = cosine
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return seen, opt.param_groups[0]["lr"]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("epochs, steps, warmup_epochs, warm", [
    (5, 7, 1, 7),       # the default: one epoch of warm-up
    (3, 4, 0, 0),       # no warm-up: the first step at the peak
    (4, 6, 0.5, 3),     # a fractional warm-up, round(0.5 * 6) steps
    (1, 9, 1, 8),       # warm-up as long as the run: shortened to end at its last step
    (2, 5, 10, 9),      # longer than the run: likewise
])
def test_schedule_matches_torchs_linear_then_cosine(epochs, steps, warmup_epochs, warm):
    lr, min_lr = 0.3, 0.003
    mine, after = scheduled_lrs(epochs, steps, warmup_epochs, lr, min_lr)
    theirs, theirs_after = torch_lrs(epochs * steps, warm, lr, min_lr)
    assert mine == pytest.approx(theirs, rel=1e-9, abs=1e-12)
    assert after == pytest.approx(theirs_after) == pytest.approx(min_lr)  # what metrics.csv reports
    assert mine[0] == pytest.approx(lr / 100 if warm else lr)


# ---- mixup / cutmix targets --------------------------------------------------------------------------


def smoothed(targets, num_classes, eps):
    """timm's label smoothing: (1 - eps) * one_hot + eps / num_classes."""
    return (1 - eps) * nn.functional.one_hot(targets, num_classes).float() + eps / num_classes


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixed_targets_follow_timms_formula_for_odd_batches(batch, kind):
    torch.manual_seed(4)
    num_classes, eps = 7, 0.1
    y = torch.arange(batch) % num_classes
    x = torch.arange(batch, dtype=torch.float32).view(batch, 1, 1, 1).expand(batch, 1, 12, 12).clone()
    alphas = {"mixup_alpha": 0.8} if kind == "mixup" else {"cutmix_alpha": 1.0}
    mixed, soft = MixupCutmix(num_classes, smoothing=eps, **alphas)(x, y)
    partner = x.flip(0)
    if kind == "mixup":  # mixed = lam * x + (1 - lam) * partner, one lam for the batch
        lam = float(mixed[0, 0, 0, 0] - partner[0, 0, 0, 0]) / float(x[0, 0, 0, 0] - partner[0, 0, 0, 0]) \
            if batch > 1 else None
    else:  # the fraction of pixels of sample 0 left in place (sample 0 and its partner differ when batch > 1)
        lam = float((mixed[0] == x[0]).float().mean()) if batch > 1 else None
    torch.testing.assert_close(soft.sum(1), torch.ones(batch))
    if lam is None:  # a batch of one mixes with itself: images and targets unchanged
        torch.testing.assert_close(mixed, x)
        torch.testing.assert_close(soft, smoothed(y, num_classes, eps))
        return
    expected = lam * smoothed(y, num_classes, eps) + (1 - lam) * smoothed(y.flip(0), num_classes, eps)
    torch.testing.assert_close(soft, expected, atol=1e-5, rtol=0)
