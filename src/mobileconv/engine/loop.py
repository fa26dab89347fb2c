"""One training epoch and one evaluation pass (pytorch/examples' imagenet ``train`` / ``validate`` shape)."""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .distributed import DistEnv, all_reduce_sum
from .metrics import AccuracyCounter
from .optim import clip_gradients


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the step that produced it was not applied."""


@dataclass
class StepSettings:
    """How each step runs: autocast dtype, gradient clipping, memory format, micro-batches per step."""

    amp_dtype: torch.dtype | None = None  # autocast dtype, None = full precision
    clip_grad: float | None = None  # max global gradient norm (or as clip_mode says), None = no clipping
    channels_last: bool = False
    grad_accum_steps: int = 1  # each step's batch runs as this many micro-batches, their gradients summed
    clip_mode: str = "norm"  # optim.clip_gradients: "norm", "value" or "agc"

    def __post_init__(self) -> None:
        if self.clip_grad is not None and not self.clip_grad > 0:  # a norm of 0 would zero every gradient
            raise ValueError(f"clip_grad must be > 0 (None: no clipping), got {self.clip_grad!r}")
        if isinstance(self.grad_accum_steps, bool) or not isinstance(self.grad_accum_steps, int) \
                or self.grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be an integer >= 1, got {self.grad_accum_steps!r}")


def autocast_dtype(name: str | None, device: torch.device) -> torch.dtype | None:
    """``--amp-dtype``'s dtype: ``"auto"`` is float16 on a GPU (with a grad scaler in training) and bfloat16 on the
    CPU; ``None`` (no ``--amp``) is full precision."""
    if name is None:
        return None
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    return getattr(torch, name)


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _batches(loader):
    """The loader's batches; a ValueError raised in a worker process comes back as its own one-line message."""
    try:
        yield from loader
    except ValueError as e:
        lines = str(e).strip().splitlines()
        if len(lines) > 1 and "DataLoader worker" in lines[0]:
            raise ValueError(lines[-1].removeprefix("ValueError: ")) from None
        raise


def _progress(loader, enabled: bool, desc: str):
    if not enabled:
        return _batches(loader)
    from tqdm import tqdm

    return tqdm(_batches(loader), total=len(loader), desc=desc, leave=False, dynamic_ncols=True, unit="batch")


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, scheduler, criterion,
                    transform: nn.Module, env: DistEnv, *, epoch: int, settings: StepSettings = StepSettings(),
                    mixer=None, scaler=None, ema=None, progress: bool = False) -> dict:
    """Train over ``loader`` once; returns the mean global-batch loss, the last lr, img/s and seconds.

    The loss of every step is averaged over processes before it is checked: a non-finite loss
    raises :class:`NonFiniteLossError` on every process before the weights change.

    With ``settings.grad_accum_steps = n``, each batch runs forward and backward as ``n`` micro-batches, one after
    another, each loss weighted by its share of the batch: the gradient of the whole batch's mean loss in a
    ``1/n`` of the activation memory (batch norm normalises each micro-batch with its own statistics). Processes
    exchange gradients once per step, at the last micro-batch.
    """
    model.train()
    loss_total, steps, images_seen = 0.0, 0, 0
    start = time.perf_counter()
    bar = _progress(loader, progress, f"epoch {epoch}")
    for images, targets in bar:
        images, targets = images.to(env.device, non_blocking=True), targets.to(env.device, non_blocking=True)
        images = transform(images)
        splits = len(images) // len(targets)  # --aug-splits: the transform stacks versions of the batch
        if settings.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        loss_targets = targets.repeat(splits)
        if mixer is not None and mixer.enabled:
            images, loss_targets = mixer(images, loss_targets)
        optimizer.zero_grad(set_to_none=True)
        parts = micro_batches(images, loss_targets, settings.grad_accum_steps, splits)
        total = torch.zeros((), device=env.device)
        for i, (x, t) in enumerate(parts):
            last = i == len(parts) - 1
            with contextlib.nullcontext() if last else no_sync(model):  # gradients exchanged once, at the last
                with autocast(env.device, settings.amp_dtype):
                    loss = criterion(model(x), t)
                if len(parts) > 1:
                    loss = loss * (len(x) / len(images))
                total += loss.detach().float()
                if not last:
                    backward(loss, scaler)
        step_loss = float(all_reduce_sum(total) / env.world_size)
        if not math.isfinite(step_loss):
            raise NonFiniteLossError(f"loss is {step_loss} at epoch {epoch}, step {steps + 1}")
        backward_and_step(loss, model, optimizer, scaler, settings.clip_grad, settings.clip_mode)
        scheduler.step()
        if ema is not None:
            ema.update(unwrap(model))
        loss_total += step_loss
        steps += 1
        images_seen += len(targets) * env.world_size
        if progress:
            rate = images_seen / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss_total / steps:.4f}", img_s=f"{rate:.0f}")
    seconds = time.perf_counter() - start
    lr = max(group["lr"] for group in optimizer.param_groups)  # the schedule's own: --layer-decay scales the others
    return {"loss": loss_total / max(steps, 1), "lr": lr, "seconds": seconds,
            "img/s": images_seen / max(seconds, 1e-9), "steps": steps}


def micro_batches(images: torch.Tensor, targets: torch.Tensor, n: int,
                  splits: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A step's batch as ``n`` micro-batches (``torch.tensor_split``'s sizes; fewer when there are fewer images).

    With ``splits`` versions of the batch stacked (``[clean; augmented; ...]``, ``--aug-splits``), each
    micro-batch takes the same images from every split, stacked the same way, as the JSD loss needs them."""
    if splits == 1:
        parts = zip(images.tensor_split(n), targets.tensor_split(n))
    else:
        channels_last = not images.is_contiguous() and images.is_contiguous(memory_format=torch.channels_last)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        parts = ((x.flatten(0, 1).contiguous(memory_format=memory_format), t.flatten(0, 1))
                 for x, t in zip(images.unflatten(0, (splits, -1)).tensor_split(n, dim=1),
                                 targets.unflatten(0, (splits, -1)).tensor_split(n, dim=1)))
    return [(x, t) for x, t in parts if len(x)]  # fewer images than micro-batches: one image each


def no_sync(model: nn.Module):
    """DistributedDataParallel's ``no_sync()`` for a model that is (or wraps) one: backward passes inside it
    accumulate gradients without exchanging them; a no-op context otherwise."""
    while not isinstance(model, nn.parallel.DistributedDataParallel):
        if not hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            return contextlib.nullcontext()
        model = model._orig_mod
    return model.no_sync()


def backward(loss: torch.Tensor, scaler) -> None:
    """``loss.backward()``, through the fp16 grad scaler if any."""
    (loss if scaler is None else scaler.scale(loss)).backward()


def backward_and_step(loss: torch.Tensor, model: nn.Module, optimizer, scaler, clip_grad: float | None,
                      clip_mode: str = "norm") -> None:
    """Backward pass, optional gradient clipping (:func:`.optim.clip_gradients`), optimizer step (through the
    fp16 grad scaler if any, the gradients unscaled before they are clipped)."""
    if scaler is not None:
        scaler.scale(loss).backward()
        if clip_grad is not None:
            scaler.unscale_(optimizer)
            clip_gradients(model.parameters(), clip_grad, clip_mode)
        scaler.step(optimizer)
        scaler.update()
        return
    loss.backward()
    if clip_grad is not None:
        clip_gradients(model.parameters(), clip_grad, clip_mode)
    optimizer.step()


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, transform: nn.Module, num_classes: int, env: DistEnv, *,
             settings: StepSettings = StepSettings(), progress: bool = False) -> dict:
    """top-1 / top-5 / loss / per-class accuracy / confusion matrix over the loader, summed over processes."""
    model.eval()
    counter = AccuracyCounter(num_classes, env.device)
    criterion = nn.CrossEntropyLoss(reduction="sum")
    for images, targets in _progress(loader, progress, "eval"):
        images, targets = images.to(env.device, non_blocking=True), targets.to(env.device, non_blocking=True)
        images = transform(images)
        if settings.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(env.device, settings.amp_dtype):
            logits = model(images)
        logits = logits.float()
        counter.update(logits, targets, criterion(logits, targets))
    for tensor in counter.tensors():
        all_reduce_sum(tensor)
    return counter.result()


def unwrap(model: nn.Module) -> nn.Module:
    """The user model inside DistributedDataParallel and / or torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model
