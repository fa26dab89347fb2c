"""Run models in onnxruntime: load an exported file, or turn a model into an onnxruntime callable.

:class:`OrtModel` wraps an ``onnxruntime.InferenceSession`` (CPU) as a function on torch
tensors, so an exported file is used like the model it came from. :func:`make_ort_callable`
exports a model in memory (no file) and returns such a function; ``mobileconv bench
--backend onnxruntime`` times it beside the PyTorch model. Its output is checked against
PyTorch once, so a benchmark never times a wrong graph.
"""
from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .export import (DEFAULT_OPSET, DEFAULT_TOLERANCE, ExportCheckError, ExportError, _on_cpu_float32, check_finite,
                     check_inputs, check_opset, check_tolerance, export_onnx, first_line, prepare_for_export,
                     reference_output, relative_error, uncompiled)

PROVIDERS = ["CPUExecutionProvider"]


def create_session(model: str | os.PathLike | bytes, *, threads: int | None = None):
    """An ``onnxruntime.InferenceSession`` on CPU for a file or serialized model.

    Args:
        model: path of an ``.onnx`` file, or its bytes.
        threads: intra-op threads; default ``torch.get_num_threads()``, so that a timing compares
            onnxruntime and PyTorch on the same number of cores.
    """
    import onnxruntime as ort  # noqa: PLC0415

    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    # no busy-waiting after a call: on a small machine the spinning threads take the cores from whatever runs next
    # (the PyTorch rounds that `mobileconv bench --backend torch,onnxruntime` alternates with)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else os.fspath(model)
    if not isinstance(model, bytes) and not os.path.isfile(source):
        raise FileNotFoundError(f"no ONNX file at {source}")
    return ort.InferenceSession(source, options, providers=PROVIDERS)


class OrtModel:
    """An ONNX model in onnxruntime, called like the PyTorch model: ``logits = OrtModel(path)(x)``.

    Takes a float32 ``(N, C, H, W)`` tensor or array, returns a ``torch.Tensor`` (sharing the
    onnxruntime output's memory).
    """

    def __init__(self, model: str | os.PathLike | bytes, *, threads: int | None = None) -> None:
        self.session = create_session(model, threads=threads)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.input_shape = self.session.get_inputs()[0].shape  # ints, or names for symbolic dims

    def __call__(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        array = np.ascontiguousarray(array, dtype=np.float32)
        (out,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(out)

    def __repr__(self) -> str:
        return f"OrtModel(input {self.input_name}{self.input_shape}, output {self.output_name})"


def make_ort_callable(model: nn.Module, input_shape: Sequence[int], *, threads: int | None = None,
                      opset: int = DEFAULT_OPSET, optimize: bool = True, dynamic_batch: bool = False,
                      tolerance: float = DEFAULT_TOLERANCE) -> OrtModel:
    """Export ``model`` to ONNX in memory and return an onnxruntime callable ``x -> output``.

    The timing backend of ``mobileconv bench --backend onnxruntime``: call it with a batch of
    ``input_shape`` exactly as the PyTorch model. The ONNX graph is that of
    :func:`mobileconv.deploy.export.export_model` (BN folded, fused MixConv), with a static
    batch by default (what a deployment would use), and its output is checked against the
    eager model on a random batch before it is returned (with ``dynamic_batch``, also on a batch
    one larger, as :func:`~mobileconv.deploy.export.export_model` checks it).

    Args:
        model: the PyTorch model (not changed).
        input_shape: ``(N, C, H, W)`` of the batches it will be called with.
        threads: onnxruntime intra-op threads (default ``torch.get_num_threads()``).
        opset: ONNX opset (>= 17).
        optimize: fold BN first (``optimize_for_inference``).
        dynamic_batch: accept any batch size instead of ``N`` only.
        tolerance: largest accepted ``max|a - b| / max(1, max|a|)`` on the check batch.

    Returns:
        An :class:`OrtModel`; ``.rel_err`` holds the measured relative error.

    Raises:
        ExportCheckError: the onnxruntime output differs from PyTorch's beyond ``tolerance``.
        ExportError: the graph fails in onnxruntime on a check batch.
        ValueError: the model's own output is NaN or infinite (nothing to check against).
    """
    shape = tuple(input_shape)
    if len(shape) != 4 or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in shape):
        raise ValueError(f"input_shape must be (N, C, H, W) with positive integers, got {input_shape!r}")
    check_opset(opset)
    check_tolerance(tolerance)
    model = _on_cpu_float32(uncompiled(model))  # onnxruntime runs here on CPU; a torch.compile wrapper unwrapped
    inputs = check_inputs(shape, dynamic_batch=dynamic_batch)
    expected = [reference_output(model, x) for x in inputs]
    check_finite(expected, shape)
    # copies of x: a model may change its input in place
    prepared, _, _ = prepare_for_export(model, inputs[0].clone(), optimize=optimize)
    buffer = io.BytesIO()
    export_onnx(prepared, inputs[0].clone(), buffer, opset=opset, dynamic_batch=dynamic_batch)
    runner = OrtModel(buffer.getvalue(), threads=threads)
    worst = 0.0
    for x, ref in zip(inputs, expected):
        try:
            out = runner(x.clone())
        except Exception as e:  # noqa: BLE001 - onnxruntime's own error types
            raise ExportError(f"the ONNX graph failed in onnxruntime on a batch of {x.shape[0]}: "
                              f"{first_line(e)}") from e
        _, rel = relative_error(ref, out)
        if not rel <= tolerance:
            raise ExportCheckError(f"onnxruntime output differs from PyTorch at batch {x.shape[0]}: relative error "
                                   f"{rel:.3g} > {tolerance:g}")
        worst = max(worst, rel)
    runner.rel_err = worst
    return runner
