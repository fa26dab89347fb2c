"""Conv + activation as one oneDNN primitive with a pre-packed weight (CPU inference).

PyTorch's eager CPU conv re-lays its weight out in oneDNN's blocked format on every call and
runs the activation as a second pass over the output. :class:`OneDNNConv2d` keeps a packed copy
of the weight (``torch._C._nn.mkldnn_reorder_conv2d_weight``, what ``torch.compile`` freezing does)
and calls ``torch.ops.mkldnn._convolution_pointwise`` with the activation as a oneDNN post-op,
and, given a ``residual``, the skip connection's add as a binary post-op before it.
It is an ``nn.Conv2d`` with the same parameters and ``state_dict``; wherever the oneDNN call does
not apply (autograd recording, autocast, another device or dtype, TorchScript, tracing, ONNX
export, ``torch.compile``, PyTorch built without oneDNN or with it disabled) it computes
``act(conv2d(x) [+ residual])`` with plain ops.

Measured (``benchmarks/cpu_steps.py``, 2 threads, 224x224): 1.08-1.10x for MixNet-S / -L and
MobileNetV3-Large at batch 1, where a call is short enough for the weight reorder to matter;
0.97-1.01x, within noise, at batch 32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.helpers import DerivedTensorCache

# activation module -> (oneDNN post-op name, its scalars)
_POST_OPS: dict[type[nn.Module], tuple[str, list[float]]] = {
    nn.ReLU: ("relu", []),
    nn.ReLU6: ("hardtanh", [0.0, 6.0]),
    nn.SiLU: ("swish", []),
    nn.Hardswish: ("hardswish", []),
    nn.Sigmoid: ("sigmoid", []),
    nn.Hardsigmoid: ("hardsigmoid", []),
}

def _bf16_supported() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# input dtypes the oneDNN call takes on this CPU (bfloat16 where oneDNN supports it)
_DTYPES = (torch.float32, torch.bfloat16) if _bf16_supported() else (torch.float32,)


def fusable_activation(module: nn.Module) -> bool:
    """Whether ``module`` is an activation oneDNN can apply as a post-op of a conv."""
    return type(module) in _POST_OPS or type(module) is nn.Identity


def _has_fused_op() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


_HAS_FUSED_OP = _has_fused_op()


def onednn_available() -> bool:
    """oneDNN (MKL-DNN) is compiled in and enabled (``torch.backends.mkldnn.enabled``), with the fused conv op."""
    return _HAS_FUSED_OP and torch._C._get_mkldnn_enabled()


# A micro-batched model calls a conv with two or three batch sizes per forward pass (its
# chunks, the last one smaller): a packed weight is kept per input shape, for this many shapes.
PACKED_SHAPES = 4


class OneDNNConv2d(nn.Conv2d):
    """``act(conv2d(x))`` for CPU inference; ``act`` is ``nn.Identity`` or one of :data:`_POST_OPS`.

    Build it with :meth:`from_conv`: it shares the conv's parameters. A packed weight is made per
    input shape (the packed layout depends on it; up to :data:`PACKED_SHAPES` are kept) and all
    are made again whenever the weight or bias changes (in place, replaced, moved or cast, or by
    an optimizer step; not by a write through ``.data``: see
    :class:`~mobileconv.layers.helpers.DerivedTensorCache`). The post-op is read from ``act`` when
    a shape is first called: to change ``act``, build a new one.
    """

    __jit_unused_properties__ = ["post_op"]

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, act: nn.Module | None = None) -> OneDNNConv2d:
        computed = any(getattr(conv, name) is not conv._parameters.get(name) for name in ("weight", "bias"))
        if type(conv) is not nn.Conv2d or isinstance(conv.padding, str) or conv.padding_mode != "zeros" or computed:
            raise ValueError("OneDNNConv2d needs a plain nn.Conv2d with numeric zero padding and parameters as "
                             f"weight and bias (no spectral_norm / weight_norm hook), got {conv}")
        act = nn.Identity() if act is None else act
        if not fusable_activation(act):
            raise ValueError(f"activation must be nn.Identity or one of {[t.__name__ for t in _POST_OPS]}, "
                             f"got {type(act).__name__}")
        new = cls.__new__(cls)
        new.__dict__.update(conv.__dict__)
        new._parameters = dict(conv._parameters)
        new._buffers = dict(conv._buffers)
        new._modules = dict(conv._modules)
        new.act = act
        new._packed = DerivedTensorCache(PACKED_SHAPES)
        return new

    def extra_repr(self) -> str:
        return super().extra_repr() + f", post_op={self.post_op[0]}"

    @property
    def post_op(self) -> tuple[str, list[float]]:
        return _POST_OPS.get(type(self.act), ("none", []))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``act(conv(x))``, or ``act(conv(x) + residual)`` with a ``residual`` of the output's shape."""
        if not torch.jit.is_scripting():
            if self._use_onednn(x) and (residual is None or self._use_onednn(residual)):
                args = self._onednn_args(x)
                if residual is None:
                    return torch.ops.mkldnn._convolution_pointwise(x, *args, None)
                # oneDNN post-ops in order: + residual, then the activation (after an add it takes ReLU only;
                # in bfloat16 PyTorch's fallback for grouped convs has no add + ReLU kernel: ReLU comes after)
                fused_act = args[-2] == "relu" and x.dtype == torch.float32
                y = torch.ops.mkldnn._convolution_pointwise.binary(
                    x, residual, *args[:-2], "add", None, "relu" if fused_act else None, [], None)
                return y if fused_act else self.act(y)
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return self.act(y if residual is None else y + residual)

    def _use_onednn(self, x: torch.Tensor) -> bool:
        # called once per conv and image batch: cheapest tests first (ONNX export traces or compiles)
        if not x.is_cpu or x.dtype not in _DTYPES or x.dim() != 4:
            return False
        w = self._parameters["weight"]
        if w.dtype != x.dtype or (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)):
            return False
        if torch.is_autocast_enabled("cpu") or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return False  # autocast picks the conv's dtype; traces and compiled graphs get plain ops
        return onednn_available()

    def _onednn_args(self, x: torch.Tensor) -> tuple:
        """The oneDNN call's arguments after the input: packed weight, bias, geometry, post-op.

        At batch 1 a conv call takes tens of microseconds, so what Python does around it counts:
        the arguments are made once per input shape and kept while the weight and bias stay the same.
        """
        weight, bias = self._parameters["weight"], self._parameters["bias"]
        sources = (weight,) if bias is None else (weight, bias)
        return self._packed.get(sources, lambda: self._make_onednn_args(x.shape, weight, bias), key=x.shape)

    def _make_onednn_args(self, shape: torch.Size, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple:
        if shape[1] != self.in_channels:  # oneDNN's own message names no shape (once per input shape: no cost)
            raise ValueError(f"{type(self).__name__}: expected input of shape (N, {self.in_channels}, H, W), "
                             f"got {tuple(shape)}: {shape[1]} channels instead of {self.in_channels}")
        padding, stride, dilation = list(self.padding), list(self.stride), list(self.dilation)
        smallest = [d * (k - 1) + 1 - 2 * p for k, p, d in zip(self.kernel_size, padding, dilation)]
        if shape[2] < smallest[0] or shape[3] < smallest[1]:  # oneDNN's: "could not construct a memory descriptor"
            raise ValueError(f"{type(self).__name__}: expected input of shape (N, {self.in_channels}, H, W) with "
                             f"H >= {smallest[0]} and W >= {smallest[1]} ({self.kernel_size[0]} x "
                             f"{self.kernel_size[1]} kernel), got {tuple(shape)}")
        packed = torch._C._nn.mkldnn_reorder_conv2d_weight(weight.detach().to_mkldnn(), padding, stride, dilation,
                                                          self.groups, list(shape))
        return (packed, bias, padding, stride, dilation, self.groups, *self.post_op)
