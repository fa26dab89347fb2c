"""Model registry: ``register_model``, ``list_models``, ``create_model``.

A family file registers one small function per name; the function takes ``in_chans``, keyword
overrides and ``num_classes`` when the caller gives one (else its own default), and returns the
model. No lookup through ``globals()``.
"""
from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Sequence
from os import PathLike

from torch import nn

ModelFn = Callable[..., nn.Module]
_MODELS: dict[str, ModelFn] = {}


def register_model(fn: ModelFn | None = None, *, name: str | None = None):
    """Register ``fn`` under ``name`` (default: ``fn.__name__``); refuses a name already taken.

    Usable as ``@register_model`` or ``@register_model(name="my_net")``. The function is called
    as ``fn(in_chans=..., **kwargs)``, with ``num_classes=...`` among the keywords when the caller
    of :func:`create_model` gives one, and must return an ``nn.Module``.
    """
    def decorator(f: ModelFn) -> ModelFn:
        key = name or f.__name__
        if not isinstance(key, str) or not key:
            raise ValueError(f"model name must be a non-empty string, got {key!r}")
        if key in _MODELS:
            raise ValueError(f"a model named {key!r} is already registered ({_MODELS[key].__module__}); "
                             f"choose another name")
        _MODELS[key] = f
        return f

    return decorator(fn) if fn is not None else decorator


def list_models(pattern: str | Sequence[str] = "*") -> list[str]:
    """Sorted registered names matching the ``fnmatch`` pattern (``"mixnet_*"``, ``"*cifar"``), or any of a list of
    patterns (``["mixnet_*", "mobilenetv1_*"]``, as timm's ``list_models`` takes)."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    if not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"pattern must be a string or a list of strings, got {pattern!r}")
    return sorted({name for p in patterns for name in fnmatch.filter(_MODELS, p)})


def close_model_names(name: str, n: int = 5) -> list[str]:
    """Up to ``n`` registered names close to ``name`` (``difflib``), best first: the hint of an unknown name."""
    return difflib.get_close_matches(str(name), list(_MODELS), n=n, cutoff=0.5)


def get_model_fn(name: str) -> ModelFn:
    """The registered function for ``name``; a ValueError lists close names otherwise."""
    if name not in _MODELS:
        close = close_model_names(name)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (list_models() gives all {len(_MODELS)} names)")
    return _MODELS[name]


def create_model(name: str, *, num_classes: int | None = None, in_chans: int = 3,
                 pretrained: str | PathLike | None = None, use_ema: bool = False, features_only: bool = False,
                 **kwargs) -> nn.Module:
    """Build a registered model by name.

    Args:
        name: a name from :func:`list_models`.
        num_classes: classifier outputs (0: no classifier, ``forward`` returns pooled features);
            default: the model's own (``pretrained_cfg["num_classes"]``: 1000 for the ImageNet
            forms, 10 for the ``_cifar`` forms).
        in_chans: input channels.
        pretrained: path to a checkpoint (mobileconv safetensors, or a timm / torchvision
            state_dict file), loaded by :func:`mobileconv.deploy.weights.load_pretrained`; ``None`` or
            ``False`` (timm's default) for fresh weights. ``True`` is refused: nothing is downloaded.
        use_ema: take a training checkpoint's EMA weights (``state_dict_ema``, else ``model_ema``,
            or those of ``mobileconv train --ema``); an error if it has none.
        features_only: return a :class:`~mobileconv.models._builder.FeatureListNet` giving the
            four deepest feature maps (stride 4/8/16/32 for ImageNet forms).
        **kwargs: family options: ``drop_rate``, ``drop_path_rate``, ``width_mult``.

    Example:
        >>> model = create_model("mixnet_s", num_classes=10)
        >>> model.num_features
        1536
    """
    fn = get_model_fn(name)
    for flag, value in (("features_only", features_only), ("use_ema", use_ema)):
        if not isinstance(value, bool):  # a truthy string such as "no" would silently give a backbone
            raise ValueError(f"{flag} must be True or False, got {value!r}")
    if pretrained is False:  # timm's create_model(name, pretrained=False)
        pretrained = None
    if use_ema and pretrained is None:
        raise ValueError("use_ema=True needs a checkpoint: pass pretrained=PATH")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = fn(in_chans=in_chans, **kwargs)
    if pretrained is not None:
        from ..deploy.weights import load_pretrained

        load_pretrained(model, pretrained, use_ema=use_ema)
    if features_only:
        from ._builder import FeatureListNet

        model = FeatureListNet(model)
    return model
