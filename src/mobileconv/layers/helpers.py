"""Small shared helpers: channel rounding, argument checks and "same" padding."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


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


def check_stride(stride: int, name: str = "stride") -> int:
    if stride not in (1, 2):
        raise ValueError(f"{name} must be 1 or 2, got {stride!r}")
    return int(stride)


def check_positive(value: int, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_kernel_sizes(kernel_sizes: int | Sequence[int], name: str = "kernel_sizes", odd: bool = True) -> list[int]:
    """Normalise an int or a list of ints into a non-empty list of positive (odd) kernel sizes."""
    ks = [kernel_sizes] if isinstance(kernel_sizes, int) else list(kernel_sizes)
    if not ks:
        raise ValueError(f"{name} must be a non-empty list of positive odd integers, got {kernel_sizes!r}")
    for k in ks:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1 or (odd and k % 2 == 0):
            what = "positive odd integers (3, 5, 7, ...)" if odd else "positive integers"
            raise ValueError(f"{name} must contain only {what}, got {kernel_sizes!r}")
    return ks


def split_channels(channels: int, num_groups: int, name: str = "channels") -> list[int]:
    """Equal split with the remainder added to the first group (MixConv paper, Sec. 3.1)."""
    if num_groups > channels:
        raise ValueError(f"{name}={channels} is smaller than the number of groups ({num_groups}); "
                         f"need at least one channel per group")
    splits = [channels // num_groups] * num_groups
    splits[0] += channels - sum(splits)
    return splits


def check_input_channels(x: torch.Tensor, expected: int, module: str) -> None:
    if x.dim() != 4 or x.shape[1] != expected:
        raise ValueError(f"{module} expected input of shape (N, {expected}, H, W), got {tuple(x.shape)}")


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
