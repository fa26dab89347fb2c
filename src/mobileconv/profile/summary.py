"""Per-layer parameters, MACs, output shapes and activation memory of any ``nn.Module``.

What a *layer* (a row) is:

* a module without children (``Conv2d``, ``BatchNorm2d``, ``ReLU``, ``Linear`` ...);
* a mobileconv operator, :class:`MixConv2d`, :class:`GroupedConv2d` or :class:`XSepConv2d`,
  as one row: its sub-modules are the operator's implementation (per-group convs, the
  XSepConv's 2x2 / 1xK / Kx1 convs with their BN and activations);
* a container that holds parameters of its own or runs convs / matmuls in its own
  ``forward`` gets an extra row ``(own ops)`` carrying just those, so that nothing is lost.
* a parametrized module (``torch.nn.utils.parametrize``, ``weight_norm``, ``orthogonal``...)
  is the module it parametrizes: a parametrized ``Conv2d`` is one row, with its original
  weights as its parameters and the work of computing its weight in its MACs;
* a TorchScript module (``torch.jit.script`` / ``trace``) is one row: its sub-modules do not run
  as modules. TorchScript takes no hooks, so a scripted *sub-module*'s MACs show in the row
  of the module calling it.

``torch.compile``, ``DataParallel`` and ``DistributedDataParallel`` wrappers are looked through:
a wrapped model is profiled as the model it wraps (eagerly, in this thread: ``DataParallel``'s
replicas would run in threads that neither the hooks nor the thread-local MAC counter see), with
its own layer names; a wrapped block inside a model shows its layers under the block's name.

Figures (all for one forward pass of ``batch_size`` inputs, in eval mode, without gradients):

* **params**: the layer's parameters (a parameter shared by several layers counts once,
  in the first); the total is ``sum(p.numel() for p in model.parameters())``.
* **MACs**: multiply-adds of convolutions and matrix products only (SPEC.md's convention;
  see :mod:`mobileconv.profile.macs`), each charged to the innermost layer running it, so the
  layers' MACs add up exactly to the total. MixConv / XSepConv / grouped convs are counted in
  their *reference* formulation, as the papers count them (MixConv paper, Eq. 2:
  ``sum(c_t * k_t^2) * H * W`` for a MixConv), not as the zero-padded fused kernel that their
  ``"fast"`` implementation runs.
* **activation memory**: the bytes of the new tensor(s) each layer outputs,
  ``numel * element_size`` (4 bytes per value in float32) at the given batch size, summed
  over the layer's calls; the total is the sum over layers. An output that shares storage with
  the layer's input is not new and counts 0: in-place activations (``ReLU(inplace=True)``),
  pass-through layers (``Identity``, ``DropPath`` / ``Dropout`` in eval) and views
  (``Flatten``). Tensors made outside layers (residual additions, SE's scaling) are not layer
  outputs and are not counted. It is the size of the activations the layers produce, not a
  measurement of peak memory (which depends on when tensors are freed).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..deploy.weights import unwrap_model
from ..layers import GroupedConv2d, MixConv2d, XSepConv2d, set_layer_impl
from .describe import describe
from .macs import MacCounter

#: mobileconv operators reported as one layer each, counted in their reference formulation.
OPERATORS = (MixConv2d, GroupedConv2d, XSepConv2d)


@dataclass(frozen=True)
class LayerSummary:
    """One row of a :class:`ModelSummary`.

    Attributes:
        name: the module's qualified name (``blocks.1.0.conv_dw``; ``""`` for the model itself).
        type: class name with the key settings, e.g. ``MixConv2d k=3,5,7 splits=48,48,48``.
        output_shape: shape of the output of the layer's first call (a list of shapes when it
            returns several tensors), ``None`` for a layer that forward never called (``calls == 0``)
            or that returned no tensor.
        params: parameters counted in this layer.
        macs: multiply-adds run by this layer, over all its calls.
        activation_bytes: bytes of this layer's new output tensors (not aliases of its input), over all
            its calls.
        calls: how many times forward called the layer.
    """

    name: str
    type: str
    output_shape: list | None
    params: int
    macs: int
    activation_bytes: int
    calls: int = 1


@dataclass(frozen=True)
class ModelSummary:
    """Per-layer rows and totals returned by :func:`summarize`."""

    input_size: tuple[int, ...]
    batch_size: int
    layers: list[LayerSummary]
    params: int
    trainable_params: int
    macs: int
    activation_bytes: int
    dtype: str = "float32"

    def to_dict(self) -> dict:
        """A JSON-ready dict: totals, ``input_size``, ``batch_size`` and ``layers`` (one dict per row)."""
        out = {"input_size": list(self.input_size), "batch_size": self.batch_size, "dtype": self.dtype,
               "params": self.params, "trainable_params": self.trainable_params, "macs": self.macs,
               "activation_bytes": self.activation_bytes}
        out["layers"] = [dataclasses.asdict(row) for row in self.layers]
        return out


def _check_sizes(input_size: Sequence[int], batch_size: int) -> tuple[int, ...]:
    def is_positive_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    if isinstance(input_size, (str, bytes)) or not isinstance(input_size, Sequence) or not input_size \
            or not all(is_positive_int(v) for v in input_size):
        raise ValueError(f"input_size must be a sequence of positive integers such as (3, 224, 224) "
                         f"(channels, height, width, without the batch), got {input_size!r}")
    if not is_positive_int(batch_size):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return tuple(input_size)


def _children(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``named_children()`` without the ``parametrizations`` holder of a parametrized module.

    The holder computes the module's weight when the module reads it; it is part of the module, not
    a layer (the tensor it returns is a weight, not an activation).
    """
    for name, child in module.named_children():
        if not (name == "parametrizations" and parametrize.is_parametrized(module)):
            yield name, child


def _own_parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    """A container's own parameters: ``parameters(recurse=False)`` and its parametrizations' originals."""
    yield from module.parameters(recurse=False)
    if parametrize.is_parametrized(module):
        yield from module.parametrizations.parameters()


def _layer_modules(model: nn.Module) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    """Split the module tree into layers (leaves, operators, TorchScript modules) and the containers above them."""
    layers: dict[str, nn.Module] = {}
    containers: dict[str, nn.Module] = {}
    seen: set[int] = set()

    def visit(name: str, module: nn.Module) -> None:
        module = unwrap_model(module)  # a compiled / DataParallel block: its model's layers, under the block's name
        if id(module) in seen:  # a module shared by two parents is one layer
            return
        seen.add(id(module))
        if isinstance(module, (*OPERATORS, torch.jit.ScriptModule)) or not any(True for _ in _children(module)):
            layers[name] = module
            return
        containers[name] = module
        for child_name, child in _children(module):
            visit(f"{name}.{child_name}" if name else child_name, child)

    visit("", model)
    return layers, containers


def _tensors(output) -> Iterator[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, (list, tuple)):
        for item in output:
            yield from _tensors(item)
    elif isinstance(output, dict):
        for item in output.values():
            yield from _tensors(item)


def _shape(output) -> list | None:
    tensors = list(_tensors(output))
    if isinstance(output, torch.Tensor):
        return list(output.shape)
    return [list(t.shape) for t in tensors] or None


def _storage(t: torch.Tensor) -> int:
    """Identifies the tensor's storage, also on the meta device, where every ``data_ptr()`` is 0."""
    return t.untyped_storage()._cdata


def _new_bytes(inputs, output) -> int:
    """Bytes of the output tensors that do not share storage with an input (pass-through / in-place outputs).

    A tensor returned twice (``(y, y)``) counts once.
    """
    input_storages = {_storage(t) for t in _tensors(inputs)}
    new = {id(t): t for t in _tensors(output) if _storage(t) not in input_storages}
    return sum(t.numel() * t.element_size() for t in new.values())


@contextmanager
def _profiling_state(model: nn.Module) -> Iterator[None]:
    """Eval mode and reference operators for the count; the model's own settings come back after.

    ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` in eval mode run one fused kernel
    (``_native_multi_head_attention``) whose projections and attention matmuls no counter sees; their
    fast path is switched off for the count, so the same products run as ``addmm`` / ``bmm``.
    """
    training = {m: m.training for m in model.modules()}
    impls = {m: m.impl for m in model.modules() if isinstance(m, OPERATORS)}
    mha_fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        model.eval()
        set_layer_impl(model, "reference")
        torch.backends.mha.set_fastpath_enabled(False)
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(mha_fastpath)
        for m, mode in training.items():
            m.training = mode
        for m, impl in impls.items():
            m.impl = impl


@dataclass
class _Record:
    order: int
    calls: int = 0
    output_shape: list | None = None
    activation_bytes: int = 0


def _trace(model: nn.Module, x: torch.Tensor, tracked: dict[str, nn.Module], layers: dict[str, nn.Module]):
    """Run ``model(x)`` once with hooks on the tracked modules; returns per-name records and MACs.

    The model itself (``""``) is recorded here, around the call, so that it needs no hooks (a
    TorchScript model takes none); ops that run outside every hooked module are charged to it.
    """
    counter = MacCounter()
    records: dict[str, _Record] = {"": _Record(order=0)}
    handles = []

    def pre_hook(name):
        def hook(module, args, kwargs):
            counter.owners.append(name)
            if name not in records:
                records[name] = _Record(order=len(records))
        return hook

    def post_hook(name):
        def hook(module, args, kwargs, output):
            counter.owners.pop()
            record(name, (args, kwargs), output)
        return hook

    def record(name, inputs, output):
        rec = records[name]
        rec.calls += 1
        if name in layers:
            if rec.output_shape is None:
                rec.output_shape = _shape(output)
            rec.activation_bytes += _new_bytes(inputs, output)  # inputs passed by keyword included

    try:
        for name, module in tracked.items():
            if name and not isinstance(module, torch.jit.ScriptModule):  # ScriptModules refuse hooks
                handles.append(module.register_forward_pre_hook(pre_hook(name), with_kwargs=True))
                handles.append(module.register_forward_hook(post_hook(name), with_kwargs=True, always_call=True))
        with torch.no_grad(), counter:
            output = model(x)
        record("", (x,), output)
    finally:
        for h in handles:
            h.remove()
    return records, counter.macs


def summarize(model: nn.Module, input_size: Sequence[int] = (3, 224, 224), batch_size: int = 1) -> ModelSummary:
    """Profile ``model`` on one zero input of shape ``(batch_size, *input_size)``.

    Runs one forward pass in eval mode with mobileconv operators switched to their reference
    implementation (both settings are restored afterwards) and reports, per layer, the output
    shape, parameters, MACs and activation memory; see the module docstring for the exact
    definitions. Works for any ``nn.Module`` taking one tensor; a ``torch.compile`` /
    ``DataParallel`` / ``DistributedDataParallel`` wrapper is looked through (the wrapped model is
    profiled, with its own layer names).

    Args:
        model: the network.
        input_size: one input without the batch dimension, e.g. ``(3, 224, 224)``.
        batch_size: inputs per forward pass (MACs and activation memory scale with it; the
            papers' figures are for ``batch_size=1``).

    Returns:
        A :class:`ModelSummary`; its layers' ``params`` / ``macs`` / ``activation_bytes`` add up
        exactly to its totals.

    Raises:
        ValueError: bad ``input_size`` / ``batch_size``, or the model cannot run on that input (too
            small for its kernels, too large for the memory...).

    Example:
        >>> from mobileconv.layers import MixConv2d
        >>> s = summarize(MixConv2d(144, (3, 5, 7)), input_size=(144, 56, 56))
        >>> s.macs == (48 * 9 + 48 * 25 + 48 * 49) * 56 * 56
        True
    """
    input_size = _check_sizes(input_size, batch_size)
    model = unwrap_model(model)  # DataParallel would run replicas in threads that no hook or counter sees
    ref = next(model.parameters(), None)
    if ref is None:
        ref = next(model.buffers(), torch.empty(0))
    dtype = ref.dtype if ref.is_floating_point() else torch.get_default_dtype()
    layers, containers = _layer_modules(model)
    with _profiling_state(model):
        try:
            x = torch.zeros(batch_size, *input_size, dtype=dtype, device=ref.device)
            records, macs = _trace(model, x, {**containers, **layers}, layers)
        except RuntimeError as e:  # shape mismatches, inputs smaller than a kernel, out of memory...
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"{type(model).__name__} cannot run on an input of size {list(input_size)} "
                             f"(batch {batch_size}): {first_line}") from e
    rows = _rows(model, layers, containers, records, macs)
    return ModelSummary(
        input_size=input_size, batch_size=batch_size, layers=rows,
        params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        macs=sum(macs.values()), activation_bytes=sum(r.activation_bytes for r in rows),
        dtype=str(dtype).removeprefix("torch."))


def _rows(model: nn.Module, layers: dict[str, nn.Module], containers: dict[str, nn.Module],
          records: dict[str, _Record], macs: dict[str, int]) -> list[LayerSummary]:
    """Layers in call order (never-called ones with parameters last), parameters counted once."""
    named_order = {name: i for i, name in enumerate({**containers, **layers})}
    uncalled = len(named_order)

    def sort_key(name: str) -> tuple[int, int]:
        rec = records.get(name)
        return (rec.order if rec else uncalled, named_order[name])

    counted: set[int] = set()

    def new_params(params) -> int:
        total = 0
        for p in params:
            if id(p) not in counted:
                counted.add(id(p))
                total += p.numel()
        return total

    rows = []
    for name in sorted(named_order, key=sort_key):
        rec = records.get(name)
        if name in layers:
            module = layers[name]
            params = new_params(module.parameters())
            if rec is None and params == 0:
                continue
            kind = describe(module)
            if name and isinstance(module, torch.jit.ScriptModule):  # not hooked, see _trace
                kind += " (TorchScript: its MACs are in its caller's row)"
        else:
            module = containers[name]
            params = new_params(_own_parameters(module))
            if params == 0 and macs.get(name, 0) == 0:
                continue
            kind = f"{type(module).__name__} (own ops)"
        rows.append(LayerSummary(
            name=name, type=kind, output_shape=rec.output_shape if rec else None, params=params,
            macs=macs.get(name, 0), activation_bytes=rec.activation_bytes if rec else 0,
            calls=rec.calls if rec else 0))
    return rows
