"""Optimizers (SGD, RMSProp as in the MobileNetV3 / MixNet papers, AdamW) and the warm-up + cosine schedule."""
from __future__ import annotations

import math

import torch
from torch import nn

# per-optimizer defaults for the options left unset (batch 64; scale lr with the batch)
DEFAULT_LR = {"sgd": 0.1, "rmsprop": 0.01, "adamw": 0.002}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "rmsprop": 1e-5, "adamw": 0.05}
# TF's RMSProp adds eps inside the square root: sqrt(v + 1e-3) ~ sqrt(v) + sqrt(1e-3) for torch's form
DEFAULT_EPS = {"sgd": None, "rmsprop": 1e-3 ** 0.5, "adamw": 1e-8}
RMSPROP_DECAY = 0.9  # TF "decay" = torch "alpha" (MnasNet / MobileNetV3 / MixNet training setup)


def param_groups_weight_decay(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two parameter groups: weights of convs / linears decay, 1-d parameters (norm scales, biases) do not."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def create_optimizer(model: nn.Module, opt: str, lr: float, weight_decay: float, momentum: float = 0.9,
                     eps: float | None = None) -> torch.optim.Optimizer:
    """``sgd`` (Nesterov), ``rmsprop`` (alpha 0.9, momentum, eps sqrt(1e-3)) or ``adamw``.

    RMSProp follows the MobileNetV3 (Howard 2019, sec. 6.1) and MixNet (Tan 2019, sec. 5) setup:
    TF RMSProp with decay 0.9, momentum 0.9 and epsilon 1e-3 inside the square root, which is
    ``torch.optim.RMSprop(alpha=0.9, momentum=0.9, eps=sqrt(1e-3))`` up to where eps enters.
    """
    if opt not in DEFAULT_LR:
        raise ValueError(f"--opt must be one of {', '.join(DEFAULT_LR)}, got {opt!r}")
    groups = param_groups_weight_decay(model, weight_decay)
    eps = DEFAULT_EPS[opt] if eps is None else eps
    if opt != "sgd" and not (math.isfinite(eps) and eps > 0):  # sqrt(v) + 0 is 0 / 0 = NaN for a 0 gradient
        raise ValueError(f"--opt-eps must be a finite number > 0 (an epsilon of 0 turns a weight whose gradient "
                         f"is 0 into NaN), got {eps!r}")
    if opt == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    if opt == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=RMSPROP_DECAY, eps=eps, momentum=momentum)
    return torch.optim.AdamW(groups, lr=lr, eps=eps)


class WarmupCosine:
    """Learning-rate factor per step: linear warm-up from ``start_factor``, then cosine decay to ``min_factor``.

    ``f(t) = start + (1 - start) * t / W`` for ``t < W``, else
    ``min + (1 - min) * (1 + cos(pi * (t - W) / (T - W))) / 2`` (Loshchilov & Hutter 2017, eq. 5, one cycle).
    A plain object so that ``LambdaLR.state_dict()`` saves its fields.
    """

    def __init__(self, total_steps: int, warmup_steps: int, min_factor: float = 0.0, start_factor: float = 0.01):
        self.total_steps, self.warmup_steps = max(1, total_steps), min(warmup_steps, max(0, total_steps - 1))
        self.min_factor, self.start_factor = min_factor, start_factor

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start_factor + (1 - self.start_factor) * step / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def create_scheduler(optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int, warmup_epochs: float,
                     lr: float, min_lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step warm-up + cosine schedule (call ``step()`` after every optimizer step)."""
    schedule = WarmupCosine(epochs * steps_per_epoch, round(warmup_epochs * steps_per_epoch), min_lr / lr)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
