"""Small shared helpers: channel rounding, argument checks and "same" padding."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
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


def check_stride(stride: int, name: str = "stride") -> int:
    if not isinstance(stride, int) or isinstance(stride, bool) or stride not in (1, 2):
        raise ValueError(f"{name} must be 1 or 2, got {stride!r}")
    return int(stride)


def check_positive(value: int, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_kernel_size(kernel_size: int, name: str = "kernel_size") -> int:
    """Check one square kernel size: a positive odd integer (so that "same" padding is symmetric)."""
    if not isinstance(kernel_size, int) or isinstance(kernel_size, bool) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"{name} must be a positive odd integer (1, 3, 5, 7, ...), got {kernel_size!r}")
    return kernel_size


def check_kernel_sizes(kernel_sizes: int | Sequence[int], name: str = "kernel_sizes", odd: bool = True) -> list[int]:
    """Normalise an int or a list of ints into a non-empty list of positive (odd) kernel sizes."""
    what = "positive odd integer (1, 3, 5, 7, ...)" if odd else "positive integer"
    if isinstance(kernel_sizes, int):
        ks = [kernel_sizes]
    elif isinstance(kernel_sizes, Sequence) and not isinstance(kernel_sizes, str) and len(kernel_sizes) > 0:
        ks = list(kernel_sizes)
    else:
        raise ValueError(f"{name} must be a {what} or a non-empty list of them, got {kernel_sizes!r}")
    for k in ks:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1 or (odd and k % 2 == 0):
            raise ValueError(f"{name} must be a {what} or a non-empty list of them, got {kernel_sizes!r} "
                             f"(bad value {k!r})")
    return ks


def split_channels(channels: int, num_groups: int, name: str = "channels") -> list[int]:
    """Equal split with the remainder added to the first group (MixConv paper, Sec. 3.1)."""
    check_positive(num_groups, "num_groups")
    if num_groups > channels:
        raise ValueError(f"{name}={channels} is fewer than the number of groups ({num_groups}); "
                         f"need {name} >= {num_groups}, at least one channel per group")
    splits = [channels // num_groups] * num_groups
    splits[0] += channels - sum(splits)
    return splits


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
