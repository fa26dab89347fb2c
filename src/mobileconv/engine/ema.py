"""Exponential moving average of model weights (Polyak averaging, as in the MobileNetV3 / MixNet training)."""
from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn


EMA_WARMUPS = ("tf", "timm", "none")


class ModelEma:
    """A frozen copy of ``model`` whose floating-point parameters follow ``ema = d*ema + (1-d)*w``.

    ``warmup`` sets the decay ``d_t`` of the ``t``-th update (``t = 1, 2, ...``), at most ``decay``:

    * ``"tf"``: ``min(decay, (1 + t) / (10 + t))``, TF's ExponentialMovingAverage with
      ``num_updates=global_step``, applied after the optimizer step has counted the step (the MnasNet /
      EfficientNet / MixNet training code), so the first update uses 2/11;
    * ``"timm"``: timm's ``ModelEmaV3`` with ``--model-ema-warmup``: 0 at the first update (the average starts
      as the weights after one step), then ``min(decay, 1 - t ** -0.75)``;
    * ``"none"``: timm's ``ModelEmaV3`` without it: 0 at the first update, then ``decay``.

    Early averages are thus not dominated by the random initial weights.
    Buffers (batch-norm running statistics) are copied, not averaged. A parameter shared by several
    modules (tied weights) is averaged once, under each of its names.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: str = "tf") -> None:
        if warmup not in EMA_WARMUPS:
            raise ValueError(f"warmup must be one of {EMA_WARMUPS}, got {warmup!r}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup, self.updates = decay, warmup, 0
        # every name of a parameter, a tied (shared) one included: its second name in state_dict() is the same
        # tensor, which must be averaged once, never overwritten with the live value as a buffer would be
        self.param_names = {name for name, _ in self.module.named_parameters(remove_duplicate=False)}

    def current_decay(self) -> float:
        """The decay of the next update (its ``t`` is ``updates + 1``)."""
        t = self.updates + 1
        if self.warmup == "tf":
            return min(self.decay, (1 + t) / (10 + t))
        if t == 1:  # timm's ModelEmaV3.get_decay(step=1)
            return 0.0
        return min(self.decay, 1 - t ** -0.75) if self.warmup == "timm" else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        self.updates += 1
        ema_state, state = self.module.state_dict(), model.state_dict()
        done = set()  # tensors already updated under another name (tied parameters share one tensor)
        for name, ema_value in ema_state.items():
            key = (ema_value.data_ptr(), ema_value.dtype, ema_value.shape)
            if ema_value.numel() and key in done:
                continue
            done.add(key)
            value = state[name].detach()
            if name in self.param_names:
                ema_value.mul_(d).add_(value, alpha=1 - d)
            else:
                ema_value.copy_(value)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "decay": self.decay, "updates": self.updates}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore the averaged weights and the update count; ``decay`` stays this object's setting.

        All or nothing: a ``ValueError`` says what does not fit (a missing entry, missing or unexpected
        keys, other shapes) before anything changes, where ``nn.Module.load_state_dict`` would have
        copied every tensor that fits before raising.
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"an EMA state is a mapping (ModelEma.state_dict()), got a {type(state).__name__}")
        weights, updates = state.get("module"), state.get("updates")
        if not isinstance(weights, Mapping) or type(updates) is not int or updates < 0:  # bool is no count
            raise ValueError(f"an EMA state is {{'module': state_dict, 'updates': count >= 0, 'decay': ...}} "
                             f"(ModelEma.state_dict()), got the entries {sorted(map(str, state))}")
        expected = self.module.state_dict()
        mismatches = {
            "missing": [k for k in expected if k not in weights],
            "unexpected": [str(k) for k in weights if k not in expected],
            "of another shape": [k for k in expected if k in weights and (
                not isinstance(weights[k], torch.Tensor) or weights[k].shape != expected[k].shape)],
        }
        listed = [f"{len(keys)} {kind} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                  for kind, keys in mismatches.items() if keys]
        if listed:
            raise ValueError(f"the EMA weights do not fit the model: tensors {'; '.join(listed)}")
        self.module.load_state_dict(weights)
        self.updates = updates
