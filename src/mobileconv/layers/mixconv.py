"""MixConv: mixed depthwise kernel sizes in one layer (Tan & Le, arXiv 1907.09595)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .conv import bias_free, check_padding_mode, conv2d, runs_as_plain_conv
from .depthwise_grad import MixedDepthwiseConv, low_precision_cpu_training, use_grouped_weight_grad
from .grouped import FixedConvList
from .helpers import (as_int, cached_derived, check_flag, check_impl, check_input_channels, check_kernel_sizes,
                      check_positive, check_stride, dilate_kernel, pad_kernel, reuses_derived_weights, split_channels,
                      tf_same_pad)

SPLITS = ("equal", "exponential")


def exponential_split(channels: int, num_groups: int) -> list[int]:
    """Group ``i`` gets ``channels * 2^-(i+1)`` channels, the last group the rest (MixConv paper, Sec. 3.1)."""
    num_groups = check_positive(num_groups, "num_groups")
    if as_int(channels) is None:
        raise ValueError(f"channels must be a positive integer, got {channels!r}")
    channels = as_int(channels)
    splits = [int(channels * 2.0 ** -(i + 1)) for i in range(num_groups - 1)]
    splits.append(channels - sum(splits))
    if min(splits) < 1:
        raise ValueError(f"channels={channels} is too few for an exponential split into {num_groups} groups "
                         f"(would give {splits}); need channels >= {2 ** (num_groups - 1)}")
    return splits


class MixConv2d(FixedConvList):
    """Mixed depthwise convolution, MDConv (MixConv paper, Sec. 3, Eq. 2).

    The ``channels`` are split into ``g = len(kernel_sizes)`` groups; group ``t`` is convolved
    depthwise with its own ``k_t x k_t`` kernel and the outputs are concatenated, so the layer
    has ``sum(c_t * k_t^2)`` weights, stored per group as children ``0 .. g-1`` (timm's layout).

    Args:
        channels: input = output channels.
        kernel_sizes: odd kernel sizes, one per group (e.g. ``(3, 5, 7)``).
        stride: 1 or 2; the output is ``ceil(H / stride)`` for any input size.
        split: ``"equal"`` (remainder to the first group) or ``"exponential"`` (1/2, 1/4, ...).
        dilated: replace a ``k x k`` kernel by a 3x3 one with dilation ``(k - 1) // 2`` (stride 1 only).
        padding: ``""`` symmetric, ``"tf"`` TensorFlow SAME.
        impl: ``"fast"`` runs one depthwise conv with every kernel zero-padded to the largest
            (same result, one kernel launch); ``"reference"`` is split / conv per group / concat.
            Switch a whole model with :func:`mobileconv.layers.set_layer_impl`. Convs with hooks of their
            own (``torch.nn.utils.prune``, forward hooks) or a forward of their own (eager QAT) always run
            as modules, the reference way (:func:`.conv.runs_as_plain_conv`), also once scripted.

    Slicing (``conv[0:2]``) gives a plain ``nn.ModuleList`` of those groups' convs. The groups are fixed:
    ``append`` / ``insert`` / ``del`` and the like are refused, a conv may only be replaced by one of the
    same geometry, and ``impl`` is checked whenever it is assigned (:class:`.grouped.FixedConvList`).

    Example:
        >>> conv = MixConv2d(144, (3, 5, 7))
        >>> conv.splits
        [48, 48, 48]
    """

    _layout = ("channels", "kernel_sizes", "splits", "stride", "dilated", "padding", "split", "max_kernel", "fusable")

    def __init__(self, channels: int, kernel_sizes: int | Sequence[int], stride: int = 1, *, split: str = "equal",
                 dilated: bool = False, padding: str = "", impl: str = "fast") -> None:
        channels = check_positive(channels, "channels")
        kernel_sizes = check_kernel_sizes(kernel_sizes, "kernel_sizes")
        stride = check_stride(stride)
        check_padding_mode(padding)
        check_impl(impl)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        check_flag(dilated, "dilated")  # a truthy string such as "no" would silently dilate the kernels
        if dilated and stride != 1:
            raise ValueError(f"stride must be 1 for a dilated MixConv (dilated=True), got stride={stride}")
        g = len(kernel_sizes)
        splits = split_channels(channels, g) if split == "equal" else exponential_split(channels, g)
        convs = []
        for c, k in zip(splits, kernel_sizes):
            d = (k - 1) // 2 if dilated and k > 3 else 1
            kk = 3 if d > 1 else k
            convs.append(conv2d(c, c, kk, stride, dilation=d, groups=c, padding=padding))
        super().__init__(convs)
        self.channels, self.kernel_sizes, self.splits = channels, kernel_sizes, splits
        self.stride, self.dilated, self.padding = stride, dilated, padding
        self.split = split
        self.max_kernel = max(kernel_sizes)
        # TF SAME pads a 1x1 kernel by -1 (clamped to 0) for stride 2 on even inputs, so it is not the
        # largest kernel's padding cut down: such a layer cannot be fused into one conv.
        self.fusable = not (padding == "tf" and stride == 2 and min(kernel_sizes) == 1)
        self.impl = impl  # checked again on every assignment (FixedLayout)

    def extra_repr(self) -> str:
        return (f"k={','.join(map(str, self.kernel_sizes))} splits={','.join(map(str, self.splits))}"
                f"{' dilated' if self.dilated else ''} stride={self.stride}")

    def fused_weight(self) -> torch.Tensor:
        """All groups' kernels as one ``(C, 1, K, K)`` depthwise weight, ``K = max(kernel_sizes)``.

        Each kernel is centred and zero-padded (a dilated 3x3 kernel is first spread out to
        its ``k x k`` footprint), so one depthwise conv computes exactly the mixed conv.
        """
        weights = []
        for conv in self:
            w = dilate_kernel(conv.weight, conv.dilation[0])  # 3x3 dilated d == (2d+1)x(2d+1) with zero taps
            p = (self.max_kernel - w.shape[-1]) // 2
            weights.append(pad_kernel(w, p, p, p, p))
        return torch.cat(weights, 0)

    def _cached_fused_weight(self) -> torch.Tensor:
        """``fused_weight()``, rebuilt only when a kernel changes (see :class:`.helpers.DerivedTensorCache`).

        Replaced, moved / cast, changed in place or by an optimizer step; not by a write through ``.data``.
        """
        return cached_derived(self, "_fused_cache", [conv.weight for conv in self], self.fused_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_channels(x, self.channels, "MixConv2d")
        fused = self.impl == "fast" and self.fusable
        # the fused conv reads the weights directly: a conv with hooks (prune, hook-based weight_norm,
        # forward hooks) or a forward of its own (QAT) must run as a module, as in the reference
        if torch.jit.is_scripting():
            fused = fused and not self.scripted_calls_convs
        else:
            fused = fused and runs_as_plain_conv(*self)
            # bfloat16 / float16 CPU training: the split computes each group's weight gradient at its own kernel
            # size, where the fused conv's would run oneDNN's slow generic kernel at the largest one
            fused = fused and not low_precision_cpu_training(x, [conv.weight for conv in self])
        if fused:
            if torch.jit.is_scripting():
                bias = self.fused_bias()
            else:  # None unless a BN was folded into the convs
                bias = None if bias_free(*self) else self.fused_bias()
            k, s = self.max_kernel, self.stride
            pad = (k - 1) // 2
            if self.padding == "tf":  # TF SAME for the largest kernel is TF SAME for every centred one
                ph = tf_same_pad(x.shape[-2], k, s)
                pw = tf_same_pad(x.shape[-1], k, s)
                x = F.pad(x, [pw[0], pw[1], ph[0], ph[1]])
                pad = 0
            if not torch.jit.is_scripting():
                weights = [conv.weight for conv in self]
                if reuses_derived_weights(weights):  # eager inference, or frozen weights
                    return F.conv2d(x, self._cached_fused_weight(), bias, s, pad, 1, self.channels)
                if not self.dilated and use_grouped_weight_grad(x, weights):  # CPU training: per-group weight grad
                    y = MixedDepthwiseConv.apply(x, s, pad, self.kernel_sizes, self.splits, *weights)
                    return y if bias is None else y + bias.view(1, -1, 1, 1)
            return F.conv2d(x, self.fused_weight(), bias, s, pad, 1, self.channels)
        xs = torch.split(x, self.splits, 1)
        return torch.cat([conv(xs[i]) for i, conv in enumerate(self)], 1)
