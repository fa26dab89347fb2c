"""Independent oracles for the operator tests, written with plain PyTorch ops only.

Nothing here imports mobileconv: the tests compare the library against these.
"""
from __future__ import annotations

import io
import math
import warnings
from unittest import mock

import torch
import torch.nn.functional as F

# The four one-sided paddings of a 2x2 conv, in the paper's order (XSepConv, Sec. 3.2), and the
# channel groups of "symmetric" padding take them in the same order.
DIRECTION_ORDER = ("right_top", "right_bottom", "left_top", "left_bottom")


def same_size(size: int, stride: int) -> int:
    """Output size of a "same" conv: ceil(size / stride)."""
    return math.ceil(size / stride)


def equal_split(channels: int, groups: int) -> list[int]:
    """MixConv paper, Sec. 3.1: [C // g] * g with the remainder added to the first group."""
    return [channels // groups + channels % groups] + [channels // groups] * (groups - 1)


def tf_same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow SAME padding of one axis (extra pixel after), from TF's documented formula."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def direction_pads(direction: str) -> list[int]:
    """``F.pad`` amounts (left, right, top, bottom) that make a 2x2 conv keep the size."""
    horizontal, vertical = direction.split("_")
    return [int(horizontal == "left"), int(horizontal == "right"), int(vertical == "top"), int(vertical == "bottom")]


def centre_of_mass(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (row, column) centre of mass of a non-negative (C, H, W) map."""
    rows = torch.arange(x.shape[-2], dtype=x.dtype).view(-1, 1)
    cols = torch.arange(x.shape[-1], dtype=x.dtype).view(1, -1)
    mass = x.sum((-2, -1))
    return (x * rows).sum((-2, -1)) / mass, (x * cols).sum((-2, -1)) / mass


def randomize_bn(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial running stats and affine params (so eval mode is not identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.3)


def count_conv2d_calls(module: torch.nn.Module, x: torch.Tensor) -> int:
    """How many ``F.conv2d`` calls (``nn.Conv2d`` goes through it too) one forward of ``module`` makes."""
    with torch.no_grad(), mock.patch.object(F, "conv2d", wraps=F.conv2d) as conv2d:
        module(x)
    return conv2d.call_count


def onnx_roundtrip(module: torch.nn.Module, x: torch.Tensor, opset: int = 17) -> torch.Tensor:
    """Export to ONNX (TorchScript exporter, dynamo exporter if the former is gone) and run onnxruntime."""
    import onnxruntime as ort

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, (x,), buffer, opset_version=opset, dynamo=False,
                              input_names=["x"], output_names=["y"])
            model_bytes = buffer.getvalue()
        except (TypeError, NotImplementedError, ImportError):  # legacy exporter removed from this torch
            program = torch.onnx.export(module, (x,), dynamo=True, opset_version=max(opset, 18))
            model_bytes = program.model_proto.SerializeToString()
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(y)


def conv_same(x: torch.Tensor, weight: torch.Tensor, stride: int = 1, dilation: int = 1,
              groups: int = 1, tf: bool = False) -> torch.Tensor:
    """A "same" conv with plain ops: symmetric (k - 1) // 2 * d padding, or TF SAME padding."""
    k = weight.shape[-1]
    if tf:
        ph = tf_same_pads(x.shape[-2], k, stride, dilation)
        pw = tf_same_pads(x.shape[-1], k, stride, dilation)
        return F.conv2d(F.pad(x, [pw[0], pw[1], ph[0], ph[1]]), weight, None, stride, 0, dilation, groups)
    return F.conv2d(x, weight, None, stride, (k - 1) // 2 * dilation, dilation, groups)


DIRECTION_PADS = {d: direction_pads(d) for d in DIRECTION_ORDER}  # F.pad (left, right, top, bottom)


def seeded_randn(*shape, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def mixconv(x: torch.Tensor, weights, biases=None, stride: int = 1, scale=None) -> torch.Tensor:
    """Symmetric "same" MixConv: one depthwise F.conv2d per channel group, concatenated
    (group ``i``'s output times ``scale[i]`` where given)."""
    biases = [None] * len(weights) if biases is None else biases
    xs = torch.split(x, [w.shape[0] for w in weights], 1)
    outs = [F.conv2d(xi, w, b, stride, (w.shape[-1] - 1) // 2, 1, w.shape[0]) for xi, w, b in zip(xs, weights, biases)]
    return torch.cat([o * (1 if scale is None else scale[i]) for i, o in enumerate(outs)], 1)


def grouped(x: torch.Tensor, weights, biases=None, scale=None) -> torch.Tensor:
    """MixNet's grouped conv: input channels split by the weights' in-channels, one "same" conv per group."""
    biases = [None] * len(weights) if biases is None else biases
    xs = torch.split(x, [w.shape[1] for w in weights], 1)
    outs = [F.conv2d(xi, w, b, 1, (w.shape[-1] - 1) // 2) for xi, w, b in zip(xs, weights, biases)]
    return torch.cat([o * (1 if scale is None else scale[i]) for i, o in enumerate(outs)], 1)
