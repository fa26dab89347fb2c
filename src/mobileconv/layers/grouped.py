"""Grouped convolution as MixNet uses it: one conv per channel group, outputs concatenated."""
from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

import torch
import torch.nn.functional as F
from torch import nn
from torch._jit_internal import _copy_to_script_wrapper

from .conv import bias_free, check_padding_mode, conv2d, runs_as_plain_conv
from .helpers import (FixedLayout, check_impl, check_input_channels, check_kernel_sizes, check_positive, check_stride,
                      split_channels)


def concat_biases(biases: list[torch.Tensor | None], sizes: list[int]) -> torch.Tensor | None:
    """The groups' biases as one vector, zeros for a group without one; ``None`` when no group has a bias."""
    present: list[torch.Tensor] = []
    for b in biases:
        if b is not None:
            present.append(b)
    if len(present) == 0:
        return None
    parts: list[torch.Tensor] = []
    for b, n in zip(biases, sizes):
        parts.append(b if b is not None else present[0].new_zeros(n))
    return torch.cat(parts)


class FixedConvList(FixedLayout, nn.ModuleList):
    """An ``nn.ModuleList`` of one conv per channel group, fixed by the constructor (MixConv2d, GroupedConv2d).

    Its list of convs, channel splits and kernel sizes must agree, so ``append`` / ``extend`` / ``insert`` /
    ``+=`` / ``del`` / ``pop``, adding any other child and setting one to ``None`` are a ``TypeError``: build a
    new layer for other groups. A conv may be replaced (``layer[i] = conv`` or ``setattr``, as eager QAT and
    ``fuse_modules`` do) by one of the same geometry (:class:`.helpers.FixedLayout`).
    """

    def __init__(self, convs: Sequence[nn.Module]) -> None:
        super().__init__()
        for i, conv in enumerate(convs):
            nn.Module.add_module(self, str(i), conv)  # the list's own add_module refuses new children

    def _refuse(self, what: str) -> TypeError:
        name = type(self).__name__
        return TypeError(f"{name}: cannot {what}: its convs, channel splits and kernel sizes are fixed by the "
                         f"constructor (a conv can be replaced by one of the same geometry); build a new {name}")

    def __setattr__(self, name: str, value: object) -> None:
        modules = self.__dict__.get("_modules")
        if modules is not None:
            if name in modules and value is None:
                raise self._refuse(f"set conv {name!r} to None")
            if name not in modules and isinstance(value, nn.Module):
                raise self._refuse(f"add a child module {name!r}")
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if name in self.__dict__.get("_modules", {}):
            raise self._refuse(f"delete conv {name!r}")
        super().__delattr__(name)

    def add_module(self, name: str, module: nn.Module | None) -> None:  # also register_module, append, extend, +=
        if name not in self._modules:
            raise self._refuse(f"add a child module {name!r}")
        setattr(self, name, module)  # a replacement, checked as one

    def append(self, module: nn.Module) -> NoReturn:
        raise self._refuse("append a conv")

    def extend(self, modules) -> NoReturn:
        raise self._refuse("extend it")

    def __iadd__(self, modules) -> NoReturn:
        raise self._refuse("add convs with +=")

    def insert(self, index: int, module: nn.Module) -> NoReturn:
        raise self._refuse("insert a conv")

    def pop(self, key) -> NoReturn:
        raise self._refuse("pop a conv")

    def __delitem__(self, idx) -> NoReturn:
        raise self._refuse("delete a conv")

    __repr__ = nn.Module.__repr__  # nn.ModuleList's own repr leaves out extra_repr (kernels, splits, stride)

    @_copy_to_script_wrapper  # as nn.ModuleList / nn.Sequential's: a scripted layer indexes the same way
    def __getitem__(self, idx):
        if isinstance(idx, slice):  # nn.ModuleList would call type(self)(list_of_convs): a slice is no such layer
            return nn.ModuleList(list(self._modules.values())[idx])
        return super().__getitem__(idx)

    def fused_bias(self) -> torch.Tensor | None:
        """All groups' biases as one ``(out_channels,)`` vector (zeros for a bias-free conv); ``None`` when no conv has one.

        The convs are built bias-free; folding a BN into them (``fold_batchnorms``) gives them a bias.
        """
        biases: list[torch.Tensor | None] = []
        sizes: list[int] = []
        for conv in self:
            biases.append(conv.bias)
            sizes.append(conv.out_channels)
        return concat_biases(biases, sizes)

    def __prepare_scriptable__(self) -> FixedConvList:
        """Called by ``torch.jit.script``: whether the scripted forward must call the convs as modules.

        TorchScript compiles the convs' hooks as they are now, and a scripted forward cannot look at them.
        """
        self.scripted_calls_convs = not runs_as_plain_conv(*self)
        return self


class GroupedConv2d(FixedConvList):
    """MixNet's grouped conv (``a1.1`` / ``p1.1`` in its block strings; MixConv paper, Sec. 4).

    Input and output channels are split into ``len(kernel_sizes)`` groups (equal split,
    remainder to the first group) and group ``i`` is convolved by its own ``k_i x k_i`` conv.
    With an uneven split this is *not* ``nn.Conv2d(groups=g)``. Parameters:
    ``sum(k_i^2 * cin_i * cout_i)``. The sub-convs are the children ``0 .. g-1``.

    ``impl="fast"`` runs one ``groups=g`` conv in training when the split is even and the kernels
    equal (1.4-2.5x faster per layer on CPU); in eval mode it keeps the per-group convs so that
    outputs match timm's bit for bit (``optimize_for_inference`` fuses them for deployment).
    ``impl="reference"`` is the split / conv-per-group / concat formulation, which also runs whenever a
    sub-conv has hooks of its own or a forward of its own (:func:`.conv.runs_as_plain_conv`), also once
    scripted. Slicing (``conv[0:2]``) gives a plain ``nn.ModuleList`` of those groups' convs. The groups are
    fixed: ``append`` / ``insert`` / ``del`` and the like are refused, a conv may only be replaced by one of the
    same geometry, and ``impl`` is checked whenever it is assigned (:class:`FixedConvList`).
    """

    _layout = ("in_channels", "out_channels", "stride", "kernel_sizes", "in_splits", "out_splits", "single_conv")

    def __init__(self, in_channels: int, out_channels: int, kernel_sizes: int | Sequence[int], stride: int = 1,
                 *, padding: str = "", impl: str = "fast") -> None:
        in_channels = check_positive(in_channels, "in_channels")
        out_channels = check_positive(out_channels, "out_channels")
        kernel_sizes = check_kernel_sizes(kernel_sizes, "kernel_sizes")
        stride = check_stride(stride)
        check_padding_mode(padding)
        check_impl(impl)
        g = len(kernel_sizes)
        in_splits = split_channels(in_channels, g, "in_channels")
        out_splits = split_channels(out_channels, g, "out_channels")
        super().__init__([conv2d(ci, co, k, stride, padding=padding)
                          for ci, co, k in zip(in_splits, out_splits, kernel_sizes)])
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.kernel_sizes = kernel_sizes
        self.in_splits, self.out_splits = in_splits, out_splits
        self.impl = impl  # checked again on every assignment (FixedLayout)
        self.single_conv = (len(set(in_splits)) == 1 and len(set(out_splits)) == 1 and len(set(kernel_sizes)) == 1
                            and (padding != "tf" or kernel_sizes[0] == 1))

    def extra_repr(self) -> str:
        splits = ",".join(map(str, self.out_splits))
        if self.in_splits != self.out_splits:
            splits = f"{','.join(map(str, self.in_splits))}->{splits}"
        return f"k={','.join(map(str, self.kernel_sizes))} splits={splits} stride={self.stride}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_channels(x, self.in_channels, "GroupedConv2d")
        # Fused only while training: one grouped GEMM sums in another order than g dense ones
        # (~1e-4 on ImageNet logits), and eval-mode outputs should match timm's split form bit for
        # bit. Inference speed comes from optimize_for_inference, which fuses these convs for good.
        fused = self.impl == "fast" and self.single_conv and self.training
        # the fused conv reads the weights directly: hooked convs (prune, ...) and QAT convs run as modules
        if torch.jit.is_scripting():
            fused = fused and not self.scripted_calls_convs
        else:
            fused = fused and runs_as_plain_conv(*self)
        if fused:
            weight = torch.cat([conv.weight for conv in self], 0)
            if torch.jit.is_scripting():
                bias = self.fused_bias()
            else:  # None unless a BN was folded into the convs
                bias = None if bias_free(*self) else self.fused_bias()
            k = self.kernel_sizes[0]
            return F.conv2d(x, weight, bias, self.stride, (k - 1) // 2, 1, len(self.kernel_sizes))
        xs = torch.split(x, self.in_splits, 1)
        return torch.cat([conv(xs[i]) for i, conv in enumerate(self)], 1)
