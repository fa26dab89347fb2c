"""Plain convolutions with PyTorch or TensorFlow "same" padding, and the one conv factory.

``create_conv2d`` decides dense / grouped / depthwise / MixConv from its arguments, so
blocks never branch on operator types (timm's ``create_conv2d`` pattern).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .helpers import (check_flag, check_input_channels, check_kernel_size, check_kernel_sizes, check_positive,
                      check_stride, tf_same_pad)

PADDING_MODES = ("", "same", "tf")


def check_padding_mode(padding: str) -> str:
    if padding not in PADDING_MODES:
        raise ValueError(f"padding must be one of {PADDING_MODES} ('' or 'same' = symmetric PyTorch padding, "
                         f"'tf' = TensorFlow SAME padding), got {padding!r}")
    return padding


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding computed from the input size.

    For stride 2 on an even input TF puts the extra row / column at the bottom / right,
    which checkpoints ported from the official TF MixNet / EfficientNet release rely on.
    The state_dict is that of ``nn.Conv2d``, and so is the signature (timm's ``Conv2dSame``):
    ``padding`` may only be ``0`` or ``"same"`` (the padding is computed) and ``padding_mode``
    only ``"zeros"`` (TF SAME pads with zeros); anything else is a ``ValueError``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None) -> None:
        if not (padding == 0 or padding == "same" or padding == (0, 0)):  # an explicit padding would be ignored
            raise ValueError(f"Conv2dSame computes TensorFlow SAME padding from the input size: padding must be 0 "
                             f"or 'same', got {padding!r}")
        if padding_mode != "zeros":  # F.pad in forward pads with zeros whatever padding_mode says
            raise ValueError(f"Conv2dSame pads with zeros (TensorFlow SAME): padding_mode must be 'zeros', "
                             f"got {padding_mode!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, dilation, groups, bias, padding_mode,
                         device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_channels(x, self.in_channels, "Conv2dSame")
        ph = tf_same_pad(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        pw = tf_same_pad(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        x = F.pad(x, [pw[0], pw[1], ph[0], ph[1]])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def runs_as_plain_conv(*convs: nn.Module) -> bool:
    """Whether calling each of ``convs`` is just ``F.conv2d`` with its ``weight``: what the fused paths read directly.

    False for a conv with hooks of its own (forward, forward-pre, backward): ``torch.nn.utils.prune`` and
    the hook-based ``weight_norm`` / ``spectral_norm`` compute ``weight`` in a forward pre-hook, and a
    forward hook (feature extraction, eager-mode quantization observers) must see the conv run. False too
    for a subclass with a forward of its own (a QAT ``Conv2d`` fake-quantizes its weight there). Such
    layers run their convs as modules (the reference formulation) instead. A ``torch.nn.utils.parametrize``
    parametrization makes ``weight`` a property that the fused paths read like any other weight. The fused
    paths read a conv's ``bias`` too (the convs are built bias-free; ``fold_batchnorms`` gives them one).

    Global hooks (``torch.nn.modules.module.register_module_forward_hook`` and the like) are deliberately not
    looked at, as in PyTorch's own fast paths (``nn.TransformerEncoderLayer`` checks its sub-modules' hooks,
    not global ones): they see the operator, not its convs. Their main users are PyTorch's module trackers
    (``FlopCounterMode``, ``CommDebugMode``, the memory tracker), which must measure the computation that
    runs without them, not the reference one. Hook the convs themselves to make them run as modules.

    A ``torch.jit.script``-ed operator cannot look at hooks as it runs: it decides when it is scripted
    (``__prepare_scriptable__``), as TorchScript compiles the hooks the module has at that moment.
    """
    return all([type(conv).forward in (nn.Conv2d.forward, Conv2dSame.forward)
                and type(conv)._conv_forward is nn.Conv2d._conv_forward
                and not (conv._forward_hooks or conv._forward_pre_hooks or conv._backward_hooks
                         or conv._backward_pre_hooks) for conv in convs])


def bias_free(*convs: nn.Module) -> bool:
    """Whether none of ``convs`` has a bias, the usual case, in one dict look-up each (the fused paths' check).

    ``False`` also where ``bias`` is no registered parameter (a ``parametrize`` property, say): read it then.
    """
    return all([conv._parameters.get("bias", 0) is None for conv in convs])


def conv2d(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
           groups: int = 1, bias: bool = False, padding: str = "") -> nn.Conv2d:
    """A single conv with "same" padding: symmetric ``(k - 1) // 2 * d`` or TF SAME (``padding='tf'``)."""
    in_channels = check_positive(in_channels, "in_channels")
    out_channels = check_positive(out_channels, "out_channels")
    kernel_size = check_kernel_size(kernel_size)  # odd: symmetric padding keeps the size
    stride = check_stride(stride)
    dilation = check_positive(dilation, "dilation")
    groups = check_positive(groups, "groups")
    check_flag(bias, "bias")
    check_padding_mode(padding)
    if padding == "tf" and stride > 1:
        return Conv2dSame(in_channels, out_channels, kernel_size, stride, dilation=dilation,
                          groups=groups, bias=bias)
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=(kernel_size - 1) // 2 * dilation,
                     dilation=dilation, groups=groups, bias=bias)


def create_conv2d(in_channels: int, out_channels: int, kernel_size: int | Sequence[int], stride: int = 1,
                  dilation: int = 1, depthwise: bool = False, bias: bool = False, padding: str = "",
                  split: str = "equal", dilated: bool = False) -> nn.Module:
    """The conv factory used by every block.

    * ``kernel_size`` a list and ``depthwise`` -> :class:`MixConv2d` (one kernel per channel group);
    * ``kernel_size`` a list, not depthwise -> :class:`GroupedConv2d` (MixNet's grouped 1x1 conv);
    * an int, or a list of one -> a dense or depthwise ``nn.Conv2d`` (the two give the same conv).

    ``dilated=True`` (depthwise, stride 1) turns a ``k x k`` kernel into a 3x3 one with dilation
    ``(k - 1) // 2``, as in :class:`MixConv2d`; it is an error with a dense conv, stride 2 or
    ``dilation > 1``. ``split`` chooses MixConv's channel split (with one kernel, all channels form
    one group). MixConv2d and GroupedConv2d have no bias and no ``dilation``, so with several
    kernels ``bias=True`` and ``dilation > 1`` are errors, and so is ``split="exponential"`` for a
    GroupedConv2d.
    """
    from .grouped import GroupedConv2d
    from .mixconv import SPLITS, MixConv2d

    in_channels = check_positive(in_channels, "in_channels")
    out_channels = check_positive(out_channels, "out_channels")
    stride = check_stride(stride)
    dilation = check_positive(dilation, "dilation")
    for flag, name in ((depthwise, "depthwise"), (bias, "bias"), (dilated, "dilated")):
        check_flag(flag, name)
    check_padding_mode(padding)
    kernel_sizes = check_kernel_sizes(kernel_size, "kernel_size")  # odd: "same" padding is symmetric
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if depthwise and in_channels != out_channels:
        raise ValueError(f"a depthwise conv needs in_channels == out_channels, got {in_channels} -> {out_channels}")
    if dilated:
        if not depthwise:
            raise ValueError("create_conv2d: dilated=True (MixConv's dilated kernels) needs depthwise=True")
        if stride != 1:
            raise ValueError(f"create_conv2d: dilated=True needs stride=1, got stride={stride}")
        if dilation != 1:
            raise ValueError(f"create_conv2d: dilated=True sets the dilation itself, got dilation={dilation} too")
    if len(kernel_sizes) == 1:
        k, d = kernel_sizes[0], dilation
        if dilated and k > 3:  # MixConv2d's rule
            k, d = 3, (k - 1) // 2
        return conv2d(in_channels, out_channels, k, stride, d, in_channels if depthwise else 1, bias, padding)
    layer = "MixConv2d" if depthwise else "GroupedConv2d"
    if bias:
        raise ValueError(f"create_conv2d: bias=True is not supported with a list of kernel sizes "
                         f"({layer} has no bias), got kernel_size={kernel_sizes}")
    if dilation != 1:
        hint = "; a MixConv can use dilated=True" if depthwise else ""
        raise ValueError(f"create_conv2d: dilation={dilation} is not supported with a list of kernel sizes "
                         f"({layer}), got kernel_size={kernel_sizes}{hint}")
    if depthwise:
        return MixConv2d(in_channels, kernel_sizes, stride, split=split, dilated=dilated, padding=padding)
    if split != "equal":
        raise ValueError(f"create_conv2d: split={split!r} is not supported by GroupedConv2d (depthwise=False with "
                         f"a list of kernel sizes), which splits channels equally")
    return GroupedConv2d(in_channels, out_channels, kernel_sizes, stride, padding=padding)
