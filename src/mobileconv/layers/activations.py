"""Activations by name: ReLU, ReLU6, swish, hard-swish, hard-sigmoid, sigmoid.

Formulas (MobileNetV3 paper, Sec. 5.2; Swish: Ramachandran et al. 2017):
``swish(x) = x * sigmoid(x)``, ``h-swish(x) = x * relu6(x + 3) / 6``,
``h-sigmoid(x) = relu6(x + 3) / 6``. PyTorch's own modules compute exactly these.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

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


def get_act(name: ActLayer) -> Callable[..., nn.Module] | None:
    """Return the activation module class for ``name``.

    ``None`` stays ``None`` (no activation); a callable (a module class) is returned as is.
    """
    if name is None or callable(name):
        return name
    key = str(name).lower().replace("-", "_")
    if key not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[key]


def create_act(name: ActLayer, inplace: bool = False) -> nn.Module:
    """Instantiate an activation by name (``nn.Identity`` for ``None``)."""
    layer = get_act(name)
    if layer is None:
        return nn.Identity()
    try:
        return layer(inplace=inplace)
    except TypeError:
        return layer()
