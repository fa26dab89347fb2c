"""Checked exports: ONNX (run in onnxruntime), TorchScript and ``torch.export`` programs.

An exported file is only useful if it computes what the PyTorch model computes, so
:func:`export_model` checks every export before the file appears:

1. the model is prepared for inference: a copy in eval mode with the ``"fast"`` operator
   implementations (one depthwise conv per MixConv, see :class:`mobileconv.layers.MixConv2d`)
   and BatchNorm folded into the convs (:func:`mobileconv.deploy.optimize.optimize_for_inference`);
2. it is exported to a temporary file in the output's directory;
3. that file is loaded back the way a user would load it (ONNX: an ``onnxruntime``
   ``InferenceSession``; TorchScript: ``torch.jit.load``; exported program:
   ``torch.export.load``) and run on a seeded random batch, and, for a dynamic batch size, on a
   batch one larger than the one it was exported with;
4. the outputs are compared with the eager, eval-mode PyTorch model (not the prepared copy, so
   the check covers BN folding too), and only when they agree is the temporary file flushed to
   disk (``fsync``) and renamed to the output path (``os.replace``: the output is either the old
   file or the complete new one, even after a crash or power loss). On any failure the temporary
   file is removed and nothing is left behind.

Agreement is measured as the error relative to the output scale,

    ``rel_err(a, b) = max|a - b| / max(1, max|a|)``

with ``a`` the PyTorch logits and ``b`` the exported program's: an absolute error for logits
of magnitude up to 1, a relative one for larger logits. The default tolerance is ``1e-4``.
Float32 rounding alone puts 1e-6 to 2e-5 there: exporters and runtimes order the sums of a conv
differently, and a deep network amplifies a one-ulp change of its input to about ``1e-5 * max|a|``
(measured on timm's ``mobilenetv3_large_100`` reference weights, logits up to 101: onnxruntime
differs from timm's logits by 1.1e-3, PyTorch itself by 0 to 8e-4 depending on the thread count,
and all three from a float64 run by 6e-4 to 1.3e-3). A check that accepts errors above 10% of
the outputs' scale (tiny outputs of an untrained model, or a large ``tolerance``) is reported as
weak in the result's notes. A model whose own output is NaN or infinite is refused before export.

Shapes: the batch dimension is dynamic unless ``dynamic_batch=False``; the spatial size is
fixed at ``input_size`` in ONNX and exported programs (TF "SAME" padding of the ``tf_mixnet_*``
models is computed from the input size, and fixing it makes the graph static and simple:
onnxruntime rejects any other size with a clear error instead of computing wrong paddings).
Export again with another ``input_size`` for another resolution. A scripted TorchScript model
keeps the Python control flow and runs at any size.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..layers import IMPLS, set_layer_impl
from ..layers.helpers import check_module
from .weights import check_output_path, fsync_dir, fsync_file, replacement_mode, temporary_path, unwrap_model

FORMATS: dict[str, str] = {  # format -> usual file suffix
    "onnx": ".onnx",
    "torchscript": ".pt",
    "exported-program": ".pt2",
}
SUFFIX_FORMATS: dict[str, str] = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript",
                                  ".pt2": "exported-program"}  # file suffix (any case) -> format
MIN_OPSET = 17  # the oldest opset we test and support (every op these models use exists since 13)
DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-4
DEFAULT_BATCH = 2
INPUT_NAME, OUTPUT_NAME = "input", "output"
WEAK_CHECK_RATIO = 0.1  # a check accepting errors above 10% of the outputs' scale proves little: say so


class ExportError(ValueError):
    """The model could not be exported, or its export does not reproduce the PyTorch model."""


class ExportCheckError(ExportError):
    """The exported program loads and runs, but its output differs from PyTorch's beyond the tolerance."""


@dataclass(frozen=True)
class ExportCheck:
    """One comparison of the exported program with PyTorch on a random batch."""

    batch_size: int
    max_abs_diff: float
    rel_err: float  # max|a - b| / max(1, max|a|)
    output_scale: float  # max|a|


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote and how well the file reproduces PyTorch."""

    path: Path
    format: str
    input_shape: tuple[int, ...]  # (batch, C, H, W) of the example the model was exported with
    dynamic_batch: bool
    method: str  # "onnx (opset 17)", "torch.jit.script", "torch.jit.trace", "torch.export"
    optimized: bool  # BN folded / operators fused by optimize_for_inference
    tolerance: float
    checks: tuple[ExportCheck, ...]
    size_bytes: int
    notes: tuple[str, ...] = field(default=())

    @property
    def rel_err(self) -> float:
        """The worst relative error over the checks."""
        return max(c.rel_err for c in self.checks)

    @property
    def max_abs_diff(self) -> float:
        return max(c.max_abs_diff for c in self.checks)

    def summary(self, name: str | None = None) -> str:
        """Human-readable lines: what was written and the measured agreement."""
        c, h, w = self.input_shape[1:]
        batch = "N" if self.dynamic_batch else str(self.input_shape[0])
        runner = "onnxruntime" if self.format == "onnx" else "reloaded program"
        lines = [f"{name + ': ' if name else ''}{self.format} via {self.method}, input {batch}x{c}x{h}x{w}"
                 f"{' (dynamic N)' if self.dynamic_batch else ''}, BN folded: {'yes' if self.optimized else 'no'}"]
        for chk in self.checks:
            lines.append(f"check, batch {chk.batch_size}: max |{runner} - pytorch| = {chk.max_abs_diff:.2e}, "
                         f"relative {chk.rel_err:.2e} (tolerance {_short(self.tolerance)}, output scale "
                         f"{chk.output_scale:.3g})")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"wrote {self.path} ({self.size_bytes / 1e6:.1f} MB)")
        return "\n".join(lines)


def _short(value: float) -> str:
    """``1e-04`` for a one-digit value, else its shortest exact form (``0.00015``): never a rounded one."""
    text = f"{value:.0e}"
    return text if float(text) == value else repr(float(value))


def relative_error(reference: torch.Tensor, actual: torch.Tensor) -> tuple[float, float]:
    """``(max|a - b|, max|a - b| / max(1, max|a|))`` with ``a = reference``; inf for NaN or a shape mismatch."""
    reference, actual = reference.detach().double(), actual.detach().double()
    if reference.shape != actual.shape:
        return float("inf"), float("inf")
    diff = (reference - actual).abs().max().item() if reference.numel() else 0.0
    if diff != diff:  # NaN
        return float("inf"), float("inf")
    scale = max(1.0, reference.abs().max().item() if reference.numel() else 0.0)
    return diff, diff / scale


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(map(repr, FORMATS))}, got {fmt!r}")
    return fmt


def check_export_path(path: str | os.PathLike, fmt: str) -> Path:
    """The file an export in ``fmt`` replaces (:func:`~mobileconv.deploy.weights.check_output_path`).

    A known suffix must be ``fmt``'s: an ONNX file named ``.pt`` would be loaded as the wrong thing.
    """
    suffix = Path(path).suffix if isinstance(path, (str, os.PathLike)) else ""
    suffix_format = SUFFIX_FORMATS.get(suffix.lower())
    if suffix_format is not None and suffix_format != fmt:
        raise ValueError(f"the suffix {suffix!r} of {path} is for format {suffix_format!r}, not {fmt!r}; "
                         f"name the file *{FORMATS[fmt]} or use format {suffix_format!r}")
    return check_output_path(path)


def check_tolerance(tolerance: float) -> float:
    """A positive finite tolerance (``inf`` would pass NaN outputs and shape mismatches, whose error is inf)."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance < math.inf:
        raise ValueError(f"tolerance must be a positive finite number, got {tolerance!r}")
    return float(tolerance)


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is torch failing to allocate a tensor (CPU or CUDA), e.g. for a huge batch or image size."""
    return isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e)


@contextlib.contextmanager
def memory_errors_as_value_errors(what: str, advice: str) -> Iterator[None]:
    """A failed allocation becomes a one-line ``ValueError``: ``not enough memory for WHAT (why); ADVICE``.

    Torch's CPU or CUDA allocator refusing a tensor (:func:`is_out_of_memory`), or a ``MemoryError`` (PIL
    decoding or resizing an image).
    """
    try:
        yield
    except (RuntimeError, MemoryError) as e:
        if not (isinstance(e, MemoryError) or is_out_of_memory(e)):
            raise
        raise ValueError(f"not enough memory for {what} ({first_line(e)}); {advice}") from e


def max_onnx_opset() -> int:
    """The newest opset the TorchScript-based ONNX exporter of this torch writes."""
    from torch.onnx import _constants  # noqa: PLC0415 - private, read only for the bound

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20))


def check_opset(opset: int) -> int:
    high = max_onnx_opset()
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= high:
        raise ValueError(f"opset must be an integer from {MIN_OPSET} to {high}, got {opset!r}")
    return opset


def resolve_input_shape(model: nn.Module, input_size: int | Sequence[int] | None = None,
                        batch_size: int = DEFAULT_BATCH) -> tuple[int, int, int, int]:
    """``(batch, C, H, W)`` of the export example.

    Args:
        model: gives ``C`` (``model.in_chans``, else 3) and the default size
            (``model.pretrained_cfg["input_size"]``, else 224).
        input_size: ``N`` (square), ``(H, W)`` or ``(C, H, W)``; ``None`` for the model's default.
        batch_size: batch of the example (the exported batch size if it is static).
    """
    in_chans = int(getattr(model, "in_chans", 3))
    if input_size is None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        input_size = tuple(cfg.get("input_size", (in_chans, 224, 224)))
    size = (input_size,) * 2 if isinstance(input_size, int) and not isinstance(input_size, bool) else input_size
    size = tuple(size) if isinstance(size, Sequence) and not isinstance(size, str) else ()
    if len(size) == 2:
        size = (in_chans, *size)
    if len(size) != 3 or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in size):
        raise ValueError(f"input_size must be a positive integer N (an N x N image), (H, W) or (C, H, W), "
                         f"got {input_size!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return (batch_size, *size)


def export_model(model: nn.Module, path: str | os.PathLike, format: str = "onnx", *,  # noqa: A002
                 input_size: int | Sequence[int] | None = None, batch_size: int = DEFAULT_BATCH,
                 dynamic_batch: bool = True, opset: int = DEFAULT_OPSET, optimize: bool = True,
                 impl: str | None = "fast", tolerance: float = DEFAULT_TOLERANCE, seed: int = 0,
                 log: Callable[[str], None] | None = None) -> ExportResult:
    """Export ``model`` to ``path`` and check that the file reproduces the PyTorch model.

    Args:
        model: a model returning one tensor (logits or pooled features); it is not changed.
        path: output file; written only after the check passes (atomically, via a temporary
            file in the same directory).
        format: ``"onnx"``, ``"torchscript"`` or ``"exported-program"`` (``torch.export``, ``.pt2``).
        input_size: ``N``, ``(H, W)`` or ``(C, H, W)``; default the model's
            ``pretrained_cfg["input_size"]``. The exported ONNX / ``torch.export`` graphs are
            static in H and W.
        batch_size: batch of the export example and of the first check.
        dynamic_batch: export a symbolic batch dimension (checked at ``batch_size`` and
            ``batch_size + 1``); ``False`` fixes it at ``batch_size``.
        opset: ONNX opset, 17 or newer (the TorchScript-based exporter writes up to 20).
        optimize: fold BN and fuse operators first (``optimize_for_inference``); fewer nodes,
            faster TorchScript / exported programs. The check compares with the original model.
        impl: ``"fast"`` (one depthwise conv per MixConv / XSepConv 2x2 conv, the default),
            ``"reference"`` (split / conv per group / concat), or ``None`` to keep the model's.
            Only matters with ``optimize=False``: the optimised model is fused anyway.
        tolerance: largest accepted ``max|a - b| / max(1, max|a|)`` (``a``: PyTorch's output);
            positive and finite.
        seed: seed of the random check input.
        log: called with a line per step (the CLI prints them).

    Returns:
        An :class:`ExportResult` with the measured differences.

    Raises:
        ValueError: a bad argument (format, opset, input size, tolerance, a ``path`` with another
            format's suffix...), an existing ``path`` that is not a regular file, or a batch too
            large for the memory.
        OSError: the output path cannot be written.
        ExportError: the exporter failed, or (``ExportCheckError``) the exported file does not
            reproduce the model within ``tolerance``. Nothing is written then.

    Example:
        >>> model = mobileconv.create_model("mixnet_s", pretrained="timm_mixnet_s.safetensors")
        >>> print(export_model(model, "mixnet_s.onnx", "onnx").summary())
    """
    check_module(model)
    model = uncompiled(model)
    check_format(format)
    if format == "onnx":
        check_opset(opset)
    if impl is not None and impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS} or None, got {impl!r}")
    check_tolerance(tolerance)
    shape = resolve_input_shape(model, input_size, batch_size)
    path = check_export_path(path, format)
    log = log or (lambda line: None)
    cast = sorted({str(t.dtype).removeprefix("torch.") for t in (*model.parameters(), *model.buffers())
                   if t.is_floating_point() and t.dtype != torch.float32})
    model = _on_cpu_float32(model)

    try:
        inputs = check_inputs(shape, dynamic_batch, seed)
        expected = [reference_output(model, x) for x in inputs]
    except RuntimeError as e:
        if not is_out_of_memory(e):
            raise
        raise ValueError(f"not enough memory to run the model on a batch of {'x'.join(map(str, shape))} "
                         f"({first_line(e)}); use a smaller batch or input size") from e
    check_finite(expected, shape)
    # each run gets its own copy of the input: a model may change its input in place
    prepared, optimized, notes = prepare_for_export(model, inputs[0].clone(), optimize=optimize, impl=impl,
                                                    channels_last=format == "torchscript")
    if cast:
        notes.append(f"the model's {' / '.join(cast)} weights were exported as float32, and the check "
                     f"compared with the model in float32")
    tmp = temporary_path(path)
    try:
        log(f"exporting to {format} ...")
        method = _run_exporter(format, prepared, inputs[0].clone(), tmp, opset=opset, dynamic_batch=dynamic_batch,
                               notes=notes)
        log(f"checking the exported file against PyTorch ({'onnxruntime' if format == 'onnx' else 'reloaded'}) ...")
        run = load_exported(tmp, format)
        checks = tuple(_compare(run, x, ref) for x, ref in zip(inputs, expected))
        worst = max(checks, key=lambda c: c.rel_err)
        if not worst.rel_err <= tolerance:
            raise ExportCheckError(
                f"the {format} export does not reproduce the PyTorch model: at batch {worst.batch_size} "
                f"max|diff| = {worst.max_abs_diff:.3g}, relative error {worst.rel_err:.3g} > tolerance "
                f"{tolerance:g}; nothing was written to {path}")
        weak = weak_check_note(tolerance, min(c.output_scale for c in checks))
        if weak:
            notes.append(weak)
        size = tmp.stat().st_size
        # mkstemp made it private; give it the mode a plain open() would: the old file's, else the umask's
        tmp.chmod(replacement_mode(path))
        fsync_file(tmp)  # the data on disk before the rename: a crash cannot leave an empty file at path
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)  # the rename itself
    return ExportResult(path=path, format=format, input_shape=shape, dynamic_batch=dynamic_batch, method=method,
                        optimized=optimized, tolerance=float(tolerance), checks=checks, size_bytes=size,
                        notes=tuple(notes))


def check_finite(outputs: Sequence[torch.Tensor], shape: Sequence[int]) -> None:
    """Refuse a model whose own output is NaN / inf: no export can be checked against it."""
    if all(bool(torch.isfinite(out).all()) for out in outputs):
        return
    raise ValueError(f"the PyTorch model's own output is NaN or infinite on a random batch of "
                     f"{'x'.join(map(str, shape))}, so no export of it can be checked: its weights or BN "
                     f"statistics are broken (a diverged or damaged checkpoint?); nothing was exported")


def weak_check_note(tolerance: float, output_scale: float) -> str | None:
    """A note when ``tolerance`` accepts errors above ``WEAK_CHECK_RATIO`` of the outputs' scale, else None.

    The accepted error is ``tolerance * max(1, s)`` for outputs of scale ``s = max|a|``: at the
    default ``1e-4`` that is 10% of outputs smaller than 1e-3 (an untrained model's logits are
    about 1e-8), and with ``tolerance=1e-2`` already of outputs smaller than 0.1.
    """
    accepted = tolerance * max(1.0, output_scale)
    if accepted <= WEAK_CHECK_RATIO * output_scale:
        return None
    if output_scale < 1:
        return (f"the model's outputs are tiny (max |logit| {output_scale:.2g}, untrained weights?), so this "
                f"check, which accepts errors up to {accepted:.2g}, says little; export trained weights (--checkpoint)")
    return (f"the tolerance {_short(tolerance)} accepts errors up to {accepted / output_scale:.0%} of the outputs' "
            f"scale ({output_scale:.3g}), so this check says little")


def check_inputs(shape: Sequence[int], dynamic_batch: bool, seed: int = 0) -> list[torch.Tensor]:
    """Seeded standard-normal batches: ``shape``, and one with batch + 1 when the batch is dynamic."""
    gen = torch.Generator().manual_seed(seed)
    batches = [shape[0], shape[0] + 1] if dynamic_batch else [shape[0]]
    return [torch.randn(b, *shape[1:], generator=gen) for b in batches]


@torch.no_grad()
def reference_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The eager model's eval-mode output on a copy of ``x``.

    Every submodule's train / eval flag is restored afterwards, one by one: a model in training
    mode with some modules in eval mode (BatchNorm frozen for fine-tuning) keeps them so, which a
    plain ``model.train(was_training)`` would undo.
    """
    modes = [(module, module.training) for module in model.modules()]
    try:
        out = model.eval()(x.clone())
    finally:
        for module, training in modes:
            module.training = training
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"export needs a model that returns one tensor, got {type(out).__name__} "
                         f"(a features_only backbone cannot be exported with a single output name)")
    return out


def prepare_for_export(model: nn.Module, example: torch.Tensor, *, optimize: bool = True,
                       impl: str | None = "fast", channels_last: bool = False) -> tuple[nn.Module, bool, list[str]]:
    """An eval-mode copy to export, whether its BN was folded, and notes for the user.

    With ``optimize``: :func:`~mobileconv.deploy.optimize.optimize_for_inference` (BN folded,
    MixConv / XSepConv / grouped convs as plain convs); if it cannot handle the model, the plain
    eval copy is used and a note says so. Otherwise only ``impl`` is set on the copy.
    """
    notes: list[str] = []
    if optimize:
        from .optimize import optimize_for_inference  # noqa: PLC0415

        try:
            prepared = optimize_for_inference(model, example_input=example, channels_last=channels_last,
                                              onednn=False, micro_batch=False, verify=False)  # portable graphs
            return whole_batches(prepared), True, notes
        except Exception as e:  # noqa: BLE001 - an unusual user model: export it unoptimised
            notes.append(f"optimize_for_inference failed ({first_line(e)}); exported without BN folding")
    prepared = whole_batches(copy.deepcopy(model).eval())
    if impl is not None:
        set_layer_impl(prepared, impl)
    return prepared, False, notes


def whole_batches(model: nn.Module) -> nn.Module:
    """``model`` with the micro-batching of an ``optimize_for_inference`` model undone, in place.

    ``micro_batch=False`` only keeps the rewrite from being made: a model the user optimised
    already (``micro_batch`` is on by default on CPU) still plans its chunks from the batch size,
    which ``torch.export`` records as a guard on the symbolic batch ("Constraints violated
    (batch)"). The plain classes compute the same function on the whole batch.
    """
    from ..models._builder import MobileNet  # noqa: PLC0415
    from .optimize import MicroBatchedMobileNet, MicroBatchedStages  # noqa: PLC0415

    for module in model.modules():
        if type(module) is MicroBatchedMobileNet:
            module.__class__ = MobileNet
        elif type(module) is MicroBatchedStages:
            module.__class__ = nn.Sequential
    return model


def _run_exporter(fmt: str, model: nn.Module, example: torch.Tensor, path: Path, *, opset: int,
                  dynamic_batch: bool, notes: list[str]) -> str:
    try:
        if fmt == "onnx":
            export_onnx(model, example, path, opset=opset, dynamic_batch=dynamic_batch)
            return f"torch.onnx (TorchScript-based exporter, opset {opset})"
        if fmt == "torchscript":
            return export_torchscript(model, example, path, notes=notes)
        export_program(model, example, path, dynamic_batch=dynamic_batch)
        return "torch.export"
    except (ExportError, OSError):
        raise
    except Exception as e:  # noqa: BLE001 - exporter internals raise many types; report one line
        raise ExportError(f"{fmt} export failed: {first_line(e)}") from e


def export_onnx(model: nn.Module, example: torch.Tensor, f, *, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = True) -> None:
    """``torch.onnx.export`` with the TorchScript-based exporter (``dynamo=False``).

    It is several times faster than the dynamo exporter and handles every registered model
    once MixConv / XSepConv weights are plain tensors (the layers build their fused kernels
    with shape-preserving ops, see :func:`mobileconv.layers.helpers.pad_kernel`).
    Input ``"input"`` (N, C, H, W), output ``"output"``; N symbolic (``"batch"``) if ``dynamic_batch``.
    """
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        # the shape checks in forward() trace to constants (TracerWarning); the exporter's deprecation notice
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)  # strided weight slices
        with torch.no_grad():
            torch.onnx.export(model, (example,), f if not isinstance(f, Path) else str(f), dynamo=False,
                              opset_version=opset, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes=axes, do_constant_folding=True)
    if isinstance(f, (str, Path)):
        import onnx  # noqa: PLC0415

        onnx.checker.check_model(str(f))


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, *, notes: list[str] | None = None) -> str:
    """``torch.jit.script`` (keeps control flow: any input size), ``torch.jit.trace`` if scripting fails."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit", DeprecationWarning)  # still the way to get TorchScript
        try:
            program = torch.jit.script(model)
            method = "torch.jit.script"
        except Exception as e:  # noqa: BLE001 - a user model that is not scriptable
            if notes is not None:
                notes.append(f"torch.jit.script failed ({first_line(e)}); traced instead, "
                             f"so the input size is fixed at the export size")
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            program = torch.jit.trace(model, example, check_trace=False)
            method = "torch.jit.trace"
        torch.jit.save(program, str(path))
    return method


def export_program(model: nn.Module, example: torch.Tensor, path: Path, *, dynamic_batch: bool = True) -> None:
    """``torch.export.export`` + ``torch.export.save`` (a ``.pt2`` archive).

    A dynamic batch has no upper bound. torch.export specialises a dimension whose example
    size is 1, so a batch-1 example is traced as a batch of 2 (the program still runs at 1).
    """
    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    if dynamic_batch and example.shape[0] == 1:
        example = torch.cat([example, example])
    program = torch.export.export(model, (example,), dynamic_shapes=shapes)
    torch.export.save(program, str(path))


def load_exported(path: str | os.PathLike, fmt: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Load an exported file the way a user would, as a function ``x -> output``."""
    check_format(fmt)
    try:
        if fmt == "onnx":
            from .onnxrt import OrtModel  # noqa: PLC0415

            return OrtModel(path)
        if fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "`torch.jit", DeprecationWarning)
                return torch.jit.load(str(path), map_location="cpu")
        return torch.export.load(str(path)).module()
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"the exported {fmt} file could not be loaded back: {first_line(e)}") from e


@torch.no_grad()
def _compare(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, expected: torch.Tensor) -> ExportCheck:
    try:
        out = run(x.clone())
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"the exported program failed on a batch of {x.shape[0]}: {first_line(e)}") from e
    diff, rel = relative_error(expected, torch.as_tensor(out))
    return ExportCheck(batch_size=x.shape[0], max_abs_diff=diff, rel_err=rel,
                       output_scale=expected.abs().max().item())


def uncompiled(model: nn.Module) -> nn.Module:
    """The model inside ``torch.compile``'s wrapper (and ``DataParallel`` / DDP), else ``model``.

    The exporters trace Python code, which a compiled wrapper hides behind dynamo (the ONNX and
    TorchScript exporters refuse it, ``torch.export`` misreads its arguments); the wrapped module
    holds the same parameters and computes the same function
    (:func:`mobileconv.deploy.weights.unwrap_model`).
    """
    return unwrap_model(model)


def _on_cpu_float32(model: nn.Module) -> nn.Module:
    """The model itself if it is a float32 CPU model, else a float32 CPU copy (exports are made on CPU)."""
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.device.type == "cpu" and (t.dtype == torch.float32 or not t.is_floating_point()) for t in tensors):
        return model
    return copy.deepcopy(model).float().cpu()


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type where it has none), at most 300 characters."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]
