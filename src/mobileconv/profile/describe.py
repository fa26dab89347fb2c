"""One-line descriptions of layers for summary tables: the class name and its key settings.

``describe(MixConv2d(144, (3, 5, 7)))`` -> ``"MixConv2d k=3,5,7 splits=48,48,48"``;
``describe(nn.Conv2d(16, 32, 3, 2, 1))`` -> ``"Conv2d 3x3 s2 16->32"``. Types without a
describer of their own show their class name only.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..layers import GroupedConv2d, MixConv2d, XSepConv2d


def _ints(values) -> str:
    return ",".join(str(v) for v in values)


def _stride(stride) -> str:
    stride = tuple(stride) if isinstance(stride, (tuple, list)) else (stride, stride)
    if all(s == 1 for s in stride):
        return ""
    return f" s{stride[0]}" if len(set(stride)) == 1 else f" s{'x'.join(map(str, stride))}"


def _conv(m: nn.modules.conv._ConvNd) -> str:
    kernel = "x".join(map(str, m.kernel_size))
    text = f"{type(m).__name__} {kernel}{_stride(m.stride)} {m.in_channels}->{m.out_channels}"
    if m.groups > 1:
        text += " dw" if m.groups == m.in_channels == m.out_channels else f" g={m.groups}"
    if any(d > 1 for d in m.dilation):
        text += f" d={_ints(m.dilation)}"
    return text


def _mixconv(m: MixConv2d) -> str:
    text = f"MixConv2d k={_ints(m.kernel_sizes)} splits={_ints(m.splits)}{_stride(m.stride)}"
    return text + " dilated" if m.dilated else text


def _grouped(m: GroupedConv2d) -> str:
    return (f"GroupedConv2d k={_ints(m.kernel_sizes)}{_stride(m.stride)} {m.in_channels}->{m.out_channels} "
            f"splits={_ints(m.out_splits)}")


def _xsep(m: XSepConv2d) -> str:
    return f"XSepConv2d k={m.kernel_size} padding={m.padding}{_stride(m.stride)}"


def _linear(m: nn.Linear) -> str:
    return f"{type(m).__name__} {m.in_features}->{m.out_features}"


def _norm(m: nn.modules.batchnorm._NormBase) -> str:
    return f"{type(m).__name__} {m.num_features}"


def _dropout(m: nn.modules.dropout._DropoutNd) -> str:
    return f"{type(m).__name__} p={m.p:g}"


def _pool(m: nn.Module) -> str:
    return f"{type(m).__name__} {m.output_size}"


DESCRIBERS: dict[type, Callable[[nn.Module], str]] = {
    MixConv2d: _mixconv,
    GroupedConv2d: _grouped,
    XSepConv2d: _xsep,
    nn.modules.conv._ConvNd: _conv,
    nn.Linear: _linear,
    nn.modules.batchnorm._NormBase: _norm,
    nn.modules.dropout._DropoutNd: _dropout,
    nn.AdaptiveAvgPool2d: _pool,
    nn.AdaptiveMaxPool2d: _pool,
}


def describe(module: nn.Module) -> str:
    """The module's class name followed by its key settings (kernel, stride, channels, splits...)."""
    for cls in type(module).__mro__:
        if cls in DESCRIBERS:
            return DESCRIBERS[cls](module)
    return type(module).__name__
