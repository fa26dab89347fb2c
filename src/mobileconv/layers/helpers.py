"""Small shared helpers: channel rounding, argument checks and "same" padding."""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round a channel count to a multiple of ``divisor`` (MobileNetV2 / V3 convention).

    ``max(min_value, int(v + divisor / 2) // divisor * divisor)``, plus ``divisor``
    when rounding down lost more than 10% (``round_limit``) of ``v``.
    """
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < round_limit * value:
        new_value += divisor
    return new_value


def check_flag(value: object, name: str) -> bool:
    """``value`` must be a bool (a truthy string such as ``"no"`` would silently switch the option on)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def as_int(value: object) -> int | None:
    """``value`` as an ``int`` if it is an integer, a Python or a NumPy one (``np.int64(32)``, as ``nn.Conv2d``
    takes); ``None`` for anything else, bools included (``True`` is no channel count)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return None


def check_module(model: object, name: str = "model") -> nn.Module:
    """``model`` if it is an ``nn.Module``; else a ``ValueError`` naming what it is."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    return model


def check_stride(stride: int, name: str = "stride") -> int:
    value = as_int(stride)
    if value not in (1, 2):
        raise ValueError(f"{name} must be 1 or 2, got {stride!r}")
    return value


def check_positive(value: int, name: str) -> int:
    n = as_int(value)
    if n is None or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return n


def check_kernel_size(kernel_size: int, name: str = "kernel_size") -> int:
    """Check one square kernel size: a positive odd integer (so that "same" padding is symmetric)."""
    k = as_int(kernel_size)
    if k is None or k < 1 or k % 2 == 0:
        raise ValueError(f"{name} must be a positive odd integer (1, 3, 5, 7, ...), got {kernel_size!r}")
    return k


def check_kernel_sizes(kernel_sizes: int | Sequence[int], name: str = "kernel_sizes", odd: bool = True) -> list[int]:
    """Normalise an int or a list of ints (or a 1-d NumPy array / tensor) into a non-empty list of positive (odd)
    kernel sizes (Python ints)."""
    what = "positive odd integer (1, 3, 5, 7, ...)" if odd else "positive integer"
    if as_int(kernel_sizes) is not None:
        ks = [kernel_sizes]
    elif isinstance(kernel_sizes, Sequence) and not isinstance(kernel_sizes, str) and len(kernel_sizes) > 0:
        ks = list(kernel_sizes)
    elif getattr(kernel_sizes, "ndim", None) == 1 and len(kernel_sizes) > 0:  # a NumPy array / tensor of sizes
        ks = kernel_sizes.tolist()
    else:
        raise ValueError(f"{name} must be a {what} or a non-empty list of them, got {kernel_sizes!r}")
    for i, k in enumerate(ks):
        ks[i] = as_int(k)
        if ks[i] is None or ks[i] < 1 or (odd and ks[i] % 2 == 0):
            raise ValueError(f"{name} must be a {what} or a non-empty list of them, got {kernel_sizes!r} "
                             f"(bad value {k!r})")
    return ks


def split_channels(channels: int, num_groups: int, name: str = "channels") -> list[int]:
    """Equal split with the remainder added to the first group (MixConv paper, Sec. 3.1)."""
    num_groups = check_positive(num_groups, "num_groups")
    if as_int(channels) is None:
        raise ValueError(f"{name} must be a positive integer, got {channels!r}")
    channels = as_int(channels)
    if num_groups > channels:
        raise ValueError(f"{name}={channels} is fewer than the number of groups ({num_groups}); "
                         f"need {name} >= {num_groups}, at least one channel per group")
    splits = [channels // num_groups] * num_groups
    splits[0] += channels - sum(splits)
    return splits


IMPLS = ("fast", "reference")


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return IMPLS[IMPLS.index(impl)]  # the str itself, whatever compared equal to it


# What a conv computes besides its weights: a replacement conv must agree on all of it
_CONV_GEOMETRY = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                  "padding_mode")


def _conv_geometry(module: torch.nn.Module) -> tuple | None:
    """The ``_CONV_GEOMETRY`` attributes of a conv (``nn.Conv2d``, its QAT / quantized forms); ``None`` otherwise."""
    if not isinstance(module, torch.nn.Module) or not all(hasattr(module, a) for a in _CONV_GEOMETRY):
        return None
    return tuple(getattr(module, a) for a in _CONV_GEOMETRY)


class FixedLayout:
    """Mixin for the operators with a fused path: the attributes the forward computes with stay what they were built as.

    * ``impl`` is checked on every assignment (``layer.impl = "Fast"`` is a ``ValueError``, not a silent
      reference path), and stored as a plain attribute: the forward reads it at no extra cost, and
      ``torch.jit.script`` sees a ``str``.
    * The attributes named in ``_layout`` (channels, kernel sizes, splits, stride, padding...) are set once,
      in the constructor: the fused path computes with them while the child convs keep their own, so a
      later assignment is an ``AttributeError`` (build a new layer instead).
    * A child conv may be replaced (eager QAT and ``fuse_modules`` replace children with ``setattr``), by a
      conv of the same geometry only (``_CONV_GEOMETRY``); a module that is no conv is run as a module.
    """

    _layout: tuple[str, ...] = ()

    def __setattr__(self, name: str, value: object) -> None:
        if name == "impl":
            value = check_impl(value)
        elif name in self._layout and name in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.{name} is fixed by the constructor (the fused path computes "
                                 f"with it, the convs keep their own); build a new {type(self).__name__} instead")
        elif isinstance(value, torch.nn.Module):
            old = self.__dict__.get("_modules", {}).get(name)
            before, after = _conv_geometry(old), _conv_geometry(value)
            if before is not None and after is not None and before != after:
                shown = ", ".join(f"{a}={v}" for a, v in zip(_CONV_GEOMETRY, before))
                raise ValueError(f"{type(self).__name__}: conv {name!r} can only be replaced by a conv of the same "
                                 f"geometry ({shown}), got {value}; build a new {type(self).__name__} instead")
        super().__setattr__(name, value)


def check_input_channels(x: torch.Tensor, expected: int, module: str) -> None:
    """Raise a ValueError unless ``x`` is a batch of images with ``expected`` channels (TorchScript-able)."""
    if x.dim() != 4 or x.shape[1] != expected:
        raise ValueError(f"{module}: input x must have shape (N, {expected}, H, W), i.e. {expected} channels, "
                         f"got shape {list(x.shape)}")


def pad_kernel(weight: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """Zero-pad a conv weight ``(O, I, h, w)`` spatially.

    Same result as ``F.pad(weight, [left, right, top, bottom])``, but written with ``torch.cat`` so
    that the TorchScript-based ONNX exporter still knows the kernel shape (it needs it for ``Conv``).
    """
    o, i, h, w = weight.shape
    if top > 0 or bottom > 0:
        weight = torch.cat([weight.new_zeros(o, i, top, w), weight, weight.new_zeros(o, i, bottom, w)], 2)
        h = h + top + bottom
    if left > 0 or right > 0:
        weight = torch.cat([weight.new_zeros(o, i, h, left), weight, weight.new_zeros(o, i, h, right)], 3)
    return weight


def dilate_kernel(weight: torch.Tensor, dilation: int) -> torch.Tensor:
    """Spread a ``(O, I, k, k)`` kernel to its dilated footprint ``(k - 1) * d + 1`` (zeros between taps).

    A conv with the result and dilation 1 equals a conv with ``weight`` and dilation ``d``.
    """
    if dilation == 1:
        return weight
    o, i, h, w = weight.shape
    d = dilation
    # columns: (.., w) -> (.., w, d) with d - 1 zeros after each tap -> (.., w * d) -> drop the trailing zeros
    weight = torch.cat([weight.unsqueeze(4), weight.new_zeros(o, i, h, w, d - 1)], 4).reshape(o, i, h, w * d)
    weight = weight[:, :, :, : (w - 1) * d + 1]
    wd = (w - 1) * d + 1
    # rows: the same along dim 2
    weight = torch.cat([weight.unsqueeze(3), weight.new_zeros(o, i, h, d - 1, wd)], 3).reshape(o, i, h * d, wd)
    return weight[:, :, : (h - 1) * d + 1, :]


def tf_same_pad(size: int, kernel_size: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow "SAME" padding for one axis: (before, after); the extra pixel goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def pad_tf_same(x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int],
                dilation: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """Pad ``x`` so that a conv with no padding gives TF "SAME" output (ceil(H / stride))."""
    ph = tf_same_pad(x.shape[-2], kernel_size[0], stride[0], dilation[0])
    pw = tf_same_pad(x.shape[-1], kernel_size[1], stride[1], dilation[1])
    if ph == (0, 0) and pw == (0, 0):
        return x
    return F.pad(x, (pw[0], pw[1], ph[0], ph[1]))


# torch.optim steps so far: fused optimizers (``fused=True``) write the parameters without bumping
# their version counters, so no derived tensor outlives a step.
_optimizer_steps = 0


def _count_optimizer_step(optimizer: object, args: tuple, kwargs: dict) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_optimizer_step)


def reuses_derived_weights(weights: Sequence[torch.Tensor]) -> bool:
    """Whether a kernel derived from ``weights`` (a fused or embedded kernel) may come from a cache.

    Not while a trace or ``torch.compile`` records (they must build it from the parameters instead of
    baking in a constant), nor while autograd needs it in its graph: grad mode with a weight that
    requires grad. So in inference and for frozen weights (a fine-tuned model's frozen backbone).
    """
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return not torch.is_grad_enabled() or not any(w.requires_grad for w in weights)


def cached_derived(module: nn.Module, name: str, sources: Sequence[torch.Tensor],
                   build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``build()``, kept in a :class:`DerivedTensorCache` at ``module.__dict__[name]`` and rebuilt when a source
    changes. A plain attribute: not in ``state_dict``, not moved by ``.to()``, not a submodule."""
    cache = module.__dict__.get(name)
    if cache is None:
        cache = module.__dict__[name] = DerivedTensorCache()
    return cache.get(sources, build)


class DerivedTensorCache:
    """Tensors derived from some source tensors (a fused or packed weight), rebuilt when a source changes.

    A source counts as unchanged while it is the same tensor, at the same address and with the same
    shape, strides and dtype (``.data`` assignments and ``.to()`` swap a parameter's memory; the cache
    holds the old storage, so its address cannot be reused meanwhile; a ``.data`` view of the same
    memory, ``p.data = p.data.transpose(2, 3)``, keeps the address but not the strides), with the
    same version counter (in-place updates, also by
    ``load_state_dict``, ``torch.nn.init`` and optimizers), and no ``torch.optim`` optimizer has
    stepped since (fused optimizers write without bumping the version). Not seen: in-place writes
    that bypass the version counter, such as those through ``.data`` (``p.data.mul_(2)``; write
    ``with torch.no_grad(): p.mul_(2)`` instead) or through a NumPy / DLPack view of the memory;
    call :meth:`clear` after those. Tensors made under ``inference_mode`` have no version counter, and
    those a ``torch.func`` transform passes in (``vmap`` over stacked weights) have no storage and live
    for one call: for them nothing is cached. Values are kept per ``key`` (an input shape, say), at most
    ``max_entries`` of them. Never copied or pickled: a copy or an unpickled module starts with
    an empty cache.
    """

    def __init__(self, max_entries: int = 1) -> None:
        self.max_entries = max_entries
        self.clear()

    def clear(self) -> None:
        """Drop every value: the next :meth:`get` builds it again."""
        self._sources: list[tuple[torch.Tensor, int, int, tuple, tuple, torch.dtype, torch.UntypedStorage]] = []
        self._steps = -1
        self.entries: dict = {}

    def get(self, sources: Sequence[torch.Tensor], build: Callable[[], torch.Tensor], key=None) -> torch.Tensor:
        """The value made by ``build()`` for ``key``, from the cache while no tensor of ``sources`` changed."""
        value = self.entries.get(key)
        if value is not None and self._unchanged(sources):  # the common case, first: once per layer call
            return value
        if any(t.is_inference() or torch._C._functorch.is_functorch_wrapped_tensor(t) for t in sources):
            return build()  # no version counter, or (under torch.func.vmap / grad) no storage and a short life
        if not self._unchanged(sources):
            self.clear()
            self._sources = [(t, t._version, t.data_ptr(), t.shape, t.stride(), t.dtype,
                              t.untyped_storage()) for t in sources]
            self._steps = _optimizer_steps
        if len(self.entries) >= self.max_entries:
            self.entries.clear()
        value = self.entries[key] = build()
        return value

    def _unchanged(self, sources: Sequence[torch.Tensor]) -> bool:
        if len(sources) != len(self._sources) or self._steps != _optimizer_steps:
            return False
        for t, (held, version, address, shape, strides, dtype, _) in zip(sources, self._sources):
            if t is not held or t._version != version or t.data_ptr() != address:
                return False
            if t.shape != shape or t.stride() != strides or t.dtype != dtype:  # another view set through .data
                return False
        return True

    def __deepcopy__(self, memo: dict) -> DerivedTensorCache:
        return DerivedTensorCache(self.max_entries)

    def __reduce__(self):
        return DerivedTensorCache, (self.max_entries,)


def check_norm_layer(norm_layer: object) -> None:
    """``norm_layer`` must be ``None`` (no normalisation) or a callable taking the channel count."""
    if isinstance(norm_layer, torch.nn.Module):  # callable, but calling it runs its forward
        raise ValueError(f"norm_layer must be a callable taking the channel count or None, not a module instance; "
                         f"pass {type(norm_layer).__name__} rather than {type(norm_layer).__name__}(...)")
    if norm_layer is not None and not callable(norm_layer):
        raise ValueError(f"norm_layer must be a callable taking the channel count (e.g. nn.BatchNorm2d) "
                         f"or None for no normalisation, got {norm_layer!r}")
