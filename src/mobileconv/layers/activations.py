"""Activations by name: ReLU, ReLU6, swish, hard-swish, hard-sigmoid, sigmoid.

Formulas (MobileNetV3 paper, Sec. 5.2; Swish: Ramachandran et al. 2017):
``swish(x) = x * sigmoid(x)``, ``h-swish(x) = x * relu6(x + 3) / 6``,
``h-sigmoid(x) = relu6(x + 3) / 6``. PyTorch's own modules compute exactly these.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .helpers import check_flag

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "hswish": nn.Hardswish,
    "hard_swish": nn.Hardswish,
    "hsigmoid": nn.Hardsigmoid,
    "hard_sigmoid": nn.Hardsigmoid,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}

ActLayer = Callable[..., nn.Module] | str | None


def get_act(name: ActLayer, *, arg_name: str = "activation") -> Callable[..., nn.Module] | None:
    """Return the activation module class for ``name``.

    ``None`` stays ``None`` (no activation); a callable (a module class) is returned as is.
    Names are case-insensitive and ``-`` may stand for ``_`` (``"hard-swish"``).

    Args:
        name: a name, a module class or ``None``.
        arg_name: the caller's argument name (``"act_layer"``, ``"gate_layer"``) for error messages.
    """
    if isinstance(name, nn.Module):  # callable, but calling it runs its forward
        raise ValueError(f"{arg_name} must be a module class, a name or None, not a module instance; "
                         f"pass {type(name).__name__} rather than {type(name).__name__}()")
    if name is None or callable(name):
        return name
    key = str(name).lower().replace("-", "_")
    if key not in _ACTIVATIONS:
        raise ValueError(f"{arg_name} must be one of {sorted(_ACTIVATIONS)}, a module class or None; "
                         f"got unknown activation {name!r}")
    return _ACTIVATIONS[key]


def create_act(name: ActLayer, inplace: bool = False, *, arg_name: str = "activation") -> nn.Module:
    """Instantiate an activation by name (``nn.Identity`` for ``None``); the result must be an ``nn.Module``."""
    check_flag(inplace, "inplace")  # a truthy string such as "no" would silently run it in place
    layer = get_act(name, arg_name=arg_name)
    if layer is None:
        return nn.Identity()
    try:
        module = layer(inplace=inplace)
    except TypeError:
        try:
            module = layer()
        except TypeError as e:  # a function such as F.relu: it needs a tensor, it builds no module
            raise ValueError(f"{arg_name} must build an nn.Module when called with no arguments (a module class "
                             f"such as nn.ReLU, not a function such as F.relu), but {name!r} failed: {e}") from None
    if not isinstance(module, nn.Module):
        raise ValueError(f"{arg_name} must build an nn.Module when called (a module class such as nn.ReLU), "
                         f"but {name!r} returned {type(module).__name__}")
    return module
