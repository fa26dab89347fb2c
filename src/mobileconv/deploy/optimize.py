"""Inference-time rewrites: BatchNorm folding, MixConv / XSepConv as plain convs, channels_last.

BN folding (Ioffe & Szegedy 2015, Eq. of the inference transform): in eval mode
``BN(conv(x)) = gamma * (W*x + b - mu) / sqrt(var + eps) + beta``, which is one conv with
``W' = W * s`` and ``b' = (b - mu) * s + beta``, ``s = gamma / sqrt(var + eps)`` (per output channel).

MixConv (MixConv paper, Sec. 3, Eq. 2) is a depthwise conv whose per-group kernels are centred
in the largest one (:meth:`mobileconv.layers.MixConv2d.fused_weight`), so once its BN is folded it
is one ``nn.Conv2d(groups=C)`` with bias: the split / per-kernel conv / concat disappears. The
XSepConv 2x2 conv becomes a pad-1 3x3 depthwise conv and each of its three BNs folds into its conv.

Conv -> BN pairs are found from the data flow of one forward pass on a small example input (a BN
is folded into the conv whose output tensor it receives), not from module names, and the result
is checked against the eval-mode model on that input.
"""
from __future__ import annotations

import contextlib
import copy
import shutil
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..layers import Conv2dSame, GroupedConv2d, MixConv2d, SqueezeExcite, XSepConv2d, set_layer_impl
from ..layers.helpers import check_input_channels, check_module
from ..models._blocks import DepthwiseSeparableBlock, DropPath, InvertedResidual
from ..models._builder import MobileNet
from .onednn import OneDNNConv2d, fusable_activation, onednn_available

# The example input used to trace the data flow when the caller gives none.
DEFAULT_TRACE_SIZE = 64
# A grouped 1x1 conv with fewer input channels per group runs as a dense block-diagonal conv.
DENSE_MAX_GROUP_CHANNELS = 16
# Micro-batching: the largest activation a stage makes for one chunk of the batch stays below this.
MICRO_BATCH_BYTES = 16 * 2**20
# ... for the leading stages whose largest activation per image is above this (later ones run whole).
# 768 KiB: MobileNetV3-Small's stem and stage 1 (0.8 and 0.9 MB at 224x224) pass it; MixNet-S's
# stage 3 (0.75 MB) and the 14x14 stages of every model, which run best on the whole batch, do not.
MICRO_BATCH_MIN_PEAK = 3 * 2**18
# Output of the optimised model vs the eval-mode model, relative to the output scale.
VERIFY_RTOL = 1e-4
_BATCHNORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)
# Modules whose output channels are those of their conv(s): a BN right after them folds into them
# (a split / concat module per group: GroupedConv2d, and a MixConv that cannot be fused).
_CONVS = (nn.Conv2d, GroupedConv2d, MixConv2d)


def optimize_for_inference(model: nn.Module, *, example_input: torch.Tensor | None = None,
                           channels_last: bool = True, onednn: bool | None = None, micro_batch: bool | None = None,
                           verify: bool = True, compile: bool = False) -> nn.Module:
    """An inference copy of ``model``: eval mode, BN folded, MixConv / XSepConv fused, channels_last.

    The input model is not changed. The copy keeps the model contract (``forward``,
    ``forward_features``, ``forward_head``...), accepts plain NCHW input (the first conv's
    channels_last weight makes every later activation channels_last) and returns the same logits
    within ``1e-4`` of the output scale. Its parameters do not require grad, so no autograd
    graph is recorded unless the input requires grad (then every rewrite still computes correctly).

    Rewrites (what each buys was measured while developing it, README section Speed;
    ``benchmarks/mixconv_speed.py`` measures the whole):

    * every ``MixConv2d`` -> one depthwise ``nn.Conv2d`` (kernels zero-padded to the largest);
    * every ``XSepConv2d`` -> ``3x3 dw -> act -> 1xK dw -> act -> Kx1 dw``, BNs folded;
    * every ``GroupedConv2d`` with an even split -> one ``nn.Conv2d(groups=g)`` (a dense,
      block-diagonal one for 1x1 convs with few channels per group); with an uneven split its BN
      is folded into the per-group convs;
    * every BN that directly follows a conv is folded into it and becomes ``nn.Identity``;
    * every ``SqueezeExcite`` whose input nothing else reads scales that input in place
      (:class:`InplaceSqueezeExcite`): one large allocation less per block; its 1x1 convs on the
      pooled 1x1 map run as ``F.linear``;
    * on CPU, every plain conv -> :class:`~mobileconv.deploy.onednn.OneDNNConv2d` (a pre-packed
      oneDNN weight, and the activation that follows it as a post-op); ``onednn=False`` keeps
      plain convs. Autograd, TorchScript, tracing and ONNX export see plain convs either way;
    * on CPU, the skip connection of every residual block whose last conv ends the branch is
      added by that conv's oneDNN call (:func:`fuse_residual_adds`);
    * on CPU, the stem and the first, high-resolution stages of ``model.blocks`` run on chunks
      of a large batch (:class:`MicroBatchedMobileNet`; :class:`MicroBatchedStages` for the
      stages alone in models of other classes; :func:`micro_batch_stages`);
      ``micro_batch=False`` keeps whole batches;
    * weights in channels_last (``channels_last=False`` keeps NCHW, and the oneDNN step off);
    * with ``compile=True``, the model is compiled in place (:func:`compile_for_inference`).

    A module with forward hooks (or pre-hooks) is neither folded, fused nor replaced: its hooks still
    run and see the values they see in the eval-mode model (per chunk in micro-batched stages), also
    in the tensors they keep: a conv output such a hook receives or returns (a hook on a wrapper that
    ends in the conv) keeps its BN and activation, and a tensor it receives is not scaled in place.
    A conv, BN or MixConv whose parameters or statistics the forward also reads outside the module
    (a tied decoder's ``F.conv_transpose2d(y, self.conv.weight)``) is kept as it is.

    Args:
        model: any ``nn.Module`` built from ``torch.nn`` and ``mobileconv.layers``.
        example_input: a batch to trace the conv -> BN data flow and to verify the result with;
            default a random ``(2, in_chans, 64, 64)`` batch (``model.in_chans``, else 3). Its first
            image at half the size (else at its size), two images if it has one, is traced and
            verified too: a rewrite is made only where both passes agree, so a Python branch on the
            input's shape that either pass takes keeps what it needs.
        channels_last: store the conv weights in channels_last.
        onednn: fuse convs and activations into oneDNN calls (:func:`fuse_conv_activations`);
            default: when the model is on the CPU, PyTorch has oneDNN and ``channels_last`` is set
            (oneDNN's convs write channels_last activations: ``onednn=True`` needs it).
        micro_batch: run the stem and leading stages on chunks of large batches;
            default: when the model is on the CPU.
        verify: compare the result with the eval-mode model on ``example_input`` and raise
            ``RuntimeError`` if they differ by more than ``1e-4`` of the output scale.
        compile: compile the result with ``torch.compile`` (Inductor, weights frozen into the
            graph; :func:`compile_for_inference`): the lowest latency for small batches, at the
            cost of compiling on the first call of every new input shape (15-100 s on 2 CPU cores)
            and of a C++ compiler on the CPU. Implies ``onednn=False`` unless given (Inductor
            packs the conv weights and fuses the activations itself); micro-batching stays, as
            part of the compiled graph.

    Example:
        >>> fast = optimize_for_inference(mobileconv.create_model("mixnet_s"))
        >>> logits = fast(torch.randn(1, 3, 224, 224))
    """
    check_module(model)
    tensors = [*model.parameters(), *model.buffers(), *([example_input] if torch.is_tensor(example_input) else [])]
    if any(t.is_meta for t in tensors):
        raise ValueError("optimize_for_inference needs the weights and runs the model: the model or example_input "
                         "is on the meta device (no data); load the weights first (e.g. model.to_empty(device='cpu') "
                         "and load_state_dict)")
    if onednn and not channels_last:
        raise ValueError("onednn=True needs channels_last=True: oneDNN's convs write channels_last activations "
                         "(pass onednn=False to keep NCHW)")
    x = _example_input(model, example_input)
    if compile:
        check_compiler(x.device)
        onednn = False if onednn is None else onednn
    # Under torch.inference_mode() every tensor made here (the copy's parameters, the folded
    # weights) would be an inference tensor: no autograd through the result, and no version
    # counter, so each OneDNNConv2d would pack its weight again on every call.
    with torch.inference_mode(False), ieee_float32(x.device):
        return _optimize(model, x, channels_last, onednn, micro_batch, verify, compile, example_input is None)


@contextlib.contextmanager
def ieee_float32(device: torch.device):
    """On CUDA, float32 convs and matmuls in full precision (no TF32) for the duration.

    cuDNN runs float32 convs in TF32 by default (``torch.backends.cudnn.allow_tf32``: a 10-bit
    mantissa), whose rounding alone moves a model's output by about 1e-3 of its scale, ten times
    :data:`VERIFY_RTOL`: the eval model and its rewrite are compared in float32 proper. The
    flags are restored afterwards, so the optimised model runs as the user set them.
    """
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _optimize(model: nn.Module, x: torch.Tensor, channels_last: bool, onednn: bool | None, micro_batch: bool | None,
              verify: bool, compile: bool, default_input: bool = False) -> nn.Module:
    model = _copy(model).eval()
    try:
        expected = _forward(model, x) if verify or default_input else None
    except Exception as e:
        if not default_input:
            raise
        raise ValueError(f"optimize_for_inference runs the model on an example batch, by default a random one of "
                         f"shape {tuple(x.shape)} (channels: model.in_chans, else 3), and the model failed on it "
                         f"({type(e).__name__}: {e}); pass example_input=, a batch the model takes") from e
    other = _other_batch(model, x)
    batches = [x, *(batch for batch, _ in other)]
    expected = [expected, *(out for _, out in other)] if verify else None
    reference = [_float32_reference(model, b, e) for b, e in zip(batches, expected)] if verify else None
    set_layer_impl(model, "fast")
    fuse_operators(model, batches)
    fold_batchnorms(model, batches)
    scale_in_place(model, batches)
    if onednn is None:
        onednn = channels_last and x.device.type == "cpu" and onednn_available()
    if onednn:
        fuse_conv_activations(model, batches)
        fuse_residual_adds(model)
    if micro_batch if micro_batch is not None else x.device.type == "cpu":
        if not micro_batch_stages(model, x) and micro_batch:
            warnings.warn("optimize_for_inference(micro_batch=True): left out, as the model has no `blocks` "
                          "Sequential of stages, normalises with batch statistics in them, passes something other "
                          "than a batch tensor between them, or does not compute its images independently", stacklevel=3)
    model.eval()  # the modules the rewrites made too
    for p in model.parameters():
        p.requires_grad_(False)
    if channels_last:  # 4-d tensors only: .to(memory_format=...) refuses a Conv3d's 5-d weight
        model = model._apply(lambda t: t.to(memory_format=torch.channels_last) if t.dim() == 4 else t)
    if verify:
        for b, e, r in zip(batches, expected, reference):
            _verify(e, _forward(model, b), r)
    if compile:
        compile_for_inference(model)
    return model


def _other_batch(model: nn.Module, x: torch.Tensor) -> list[tuple[torch.Tensor, object]]:
    """A batch of another size and shape than ``x`` that ``model`` takes, with the model's output on it,
    in a list (empty if none).

    The first image of ``x`` at half the height and width (every other pixel), else at its size;
    two images where ``x`` has one. A model may take another path for other shapes (a Python
    branch on ``x.shape``): each rewrite is decided on a pass over ``x`` and one over this batch,
    and made only where both agree.
    """
    if not len(x):
        return []
    one = x[:1] if len(x) > 1 else torch.cat([x, x.flip(-1)])
    for other in (one[..., ::2, ::2].clone(), one.clone()):
        try:
            out = _forward(model, other)
        except Exception:  # noqa: BLE001 - a model for one input size only: try the next
            continue
        return [(other, out)]
    return []


def check_compiler(device: torch.device, option: str = "compile=True", error: type[Exception] = RuntimeError) -> None:
    """Raise ``error`` naming what is missing when Inductor cannot compile for ``device`` here.

    ``option`` is how the caller's user asked for compiling (``--compile`` on the command line).
    """
    if device.type == "cpu" and not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        raise error(f"{option} needs a C++ compiler for torch.compile's CPU backend (Inductor): none of g++, c++, "
                    f"clang++ is on PATH; install one (e.g. apt install g++) or leave out {option}")


def compile_for_inference(model: nn.Module) -> nn.Module:
    """Compile ``model`` in place for inference (``nn.Module.compile``); returns it.

    Inductor with ``freezing``: under ``torch.no_grad`` / ``torch.inference_mode`` the weights
    become constants of the graph, so BN folding, conv weight packing and conv + activation
    fusion happen at compile time, and the squeeze-excite pooling, gates and products become a
    few generated C++ loops. ``dynamic=False``: each input shape gets a graph of its own, compiled
    on its first call. The module keeps its class, ``state_dict`` and sub-modules; weights changed
    after a shape was compiled are not seen by that graph (compile a new copy).
    What it buys is measured in ``benchmarks/mixconv_speed.py`` (the ``compiled`` variant).
    """
    import torch._inductor.config as inductor_config  # noqa: PLC0415 - only where compiling is asked for

    model.compile(dynamic=False)
    compiled = model._compiled_call_impl

    def call_with_freezing(*args, **kwargs):
        # Dynamo reads the flag while it traces (the first call of a shape) to keep the weights as
        # graph attributes that Inductor can freeze: torch.compile(options=...) is applied too late
        with inductor_config.patch(freezing=True):
            return compiled(*args, **kwargs)

    model._compiled_call_impl = call_with_freezing
    return model


def fuse_operators(model: nn.Module, example_input: torch.Tensor | list[torch.Tensor] | None = None) -> nn.Module:
    """Replace MixConv / XSepConv / evenly split grouped convs by plain convs, in place (eval-mode maths).

    Those whose convs compute their weights (:func:`_computed_weights`) are kept, with ``impl="reference"``;
    those with forward hooks (:func:`_hooked`) are kept as they are, and so are those whose weights the
    forward reads outside their calls (:func:`read_elsewhere`, on ``example_input`` where given).
    """
    fusable = (GroupedConv2d, MixConv2d, XSepConv2d)
    elsewhere = set() if example_input is None else read_elsewhere(model, example_input,
                                                                     lambda m: isinstance(m, fusable))
    for name, module in list(model.named_modules()):
        if not _standard_forward(module) or id(module) in elsewhere:
            continue  # a subclass with a forward of its own computes something else: kept as it is
        if isinstance(module, (GroupedConv2d, MixConv2d, XSepConv2d)) and _computed_weights(module):
            module.impl = "reference"  # kept, calling each conv, which computes its weight as it runs
        elif _hooked(module):
            continue  # its hooks would be dropped or see other tensors: kept as it is
        elif isinstance(module, MixConv2d) and getattr(module, "fusable", True):
            _replace(model, name, mixconv_as_conv(module))
        elif isinstance(module, XSepConv2d):
            _replace(model, name, xsepconv_as_sequential(module))
        elif isinstance(module, GroupedConv2d) and module.single_conv:
            _replace(model, name, grouped_as_conv(module))
        elif isinstance(module, (GroupedConv2d, MixConv2d)):
            module.impl = "reference"  # split / concat; its BN is folded into the per-group convs
    return model


def mixconv_as_conv(mixconv: MixConv2d) -> nn.Conv2d:
    """One depthwise conv with the MixConv's fused ``(C, 1, K, K)`` weight and its convs' biases, if any
    (TF SAME padding kept)."""
    c, k, s = mixconv.channels, mixconv.max_kernel, mixconv.stride
    bias = mixconv.fused_bias()  # a BN folded into the MixConv gave its convs biases
    if mixconv.padding == "tf" and s > 1:  # for stride 1 and odd K, TF SAME is symmetric
        conv = Conv2dSame(c, c, k, s, groups=c, bias=bias is not None)
    else:
        conv = nn.Conv2d(c, c, k, s, padding=(k - 1) // 2, groups=c, bias=bias is not None)
    with torch.no_grad():
        conv.weight.copy_(mixconv.fused_weight())
        if bias is not None:
            conv.bias.copy_(bias)
    return conv.to(mixconv[0].weight)


def xsepconv_as_sequential(xsep: XSepConv2d) -> nn.Sequential:
    """``XSepConv2d`` as a ``Sequential``: its 2x2 conv as a pad-1 3x3 depthwise conv (any padding direction)."""
    c = xsep.channels
    conv_2x2 = nn.Conv2d(c, c, 3, 1, padding=1, groups=c, bias=xsep.conv_2x2.bias is not None)
    with torch.no_grad():
        conv_2x2.weight.copy_(xsep.embedded_2x2_weight())
        if conv_2x2.bias is not None:
            conv_2x2.bias.copy_(xsep.conv_2x2.bias)
    return nn.Sequential(conv_2x2.to(xsep.conv_2x2.weight), xsep.bn1, xsep.act1, xsep.conv_1xk, xsep.bn2, xsep.act2,
                         xsep.conv_kx1, xsep.bn3)


def grouped_as_conv(grouped: GroupedConv2d) -> nn.Conv2d:
    """An evenly split ``GroupedConv2d`` (same kernel per group) as one ``nn.Conv2d``.

    ``groups=g`` in general; a 1x1 conv with fewer than ``DENSE_MAX_GROUP_CHANNELS`` input channels
    per group becomes a dense conv with a block-diagonal weight instead (zeros off the diagonal
    blocks): oneDNN's grouped kernel wastes most of a SIMD register on so few channels, and the
    dense conv, though it multiplies by zeros, is faster (MixNet-S's 16 -> 96 expansion at 112x112,
    2 threads: 79 ms grouped, 57 ms dense; from 36 channels per group on, grouped is faster).
    """
    if not grouped.single_conv:
        raise ValueError("grouped_as_conv needs an even split and one kernel size "
                         f"(got in_splits={grouped.in_splits}, out_splits={grouped.out_splits}, "
                         f"kernel_sizes={grouped.kernel_sizes})")
    first, k, g = grouped[0], grouped.kernel_sizes[0], len(grouped)
    dense = k == 1 and grouped.in_splits[0] < DENSE_MAX_GROUP_CHANNELS
    bias = grouped.fused_bias()  # zeros for a group without one
    conv = nn.Conv2d(grouped.in_channels, grouped.out_channels, k, grouped.stride, padding=(k - 1) // 2,
                     groups=1 if dense else g, bias=bias is not None)
    with torch.no_grad():
        if dense:
            conv.weight.zero_()
            for i, c in enumerate(grouped):
                ci, co = grouped.in_splits[0], grouped.out_splits[0]
                conv.weight[i * co:(i + 1) * co, i * ci:(i + 1) * ci] = c.weight
        else:
            conv.weight.copy_(torch.cat([c.weight for c in grouped], 0))
        if bias is not None:
            conv.bias.copy_(bias)
    return conv.to(first.weight)


@torch.no_grad()
def fold_batchnorms(model: nn.Module, example_input: torch.Tensor | list[torch.Tensor]) -> list[tuple[str, str]]:
    """Fold every eval-mode BN that receives a conv's output into that conv, in place.

    The pairs come from a forward pass on ``example_input``: a BN is folded when its input is
    the very tensor a ``nn.Conv2d`` (or a split / concat ``GroupedConv2d`` / ``MixConv2d``)
    returned and nothing else reads that tensor (:func:`trace_conv_bn_pairs`). Folded BNs become
    ``nn.Identity``, which passes that tensor on, so a BN right after a folded BN (XSepConv's
    last BN followed by the block's BN) is folded by the next pass. BNs without running
    statistics (they normalise with batch statistics even in eval mode) are left alone, and so is
    a conv or BN with forward hooks. With a list of batches, a pair must qualify in the pass on each.

    Returns:
        The ``(conv_name, bn_name)`` pairs that were folded.
    """
    folded: list[tuple[str, str]] = []
    elsewhere = read_elsewhere(model, example_input, lambda m: isinstance(m, (*_CONVS, *_BATCHNORMS)))
    while pairs := trace_conv_bn_pairs(model, example_input, elsewhere=elsewhere):
        for conv_name, bn_name in pairs:
            _fold(model.get_submodule(conv_name), model.get_submodule(bn_name))
            _replace(model, bn_name, nn.Identity())
        folded += pairs
    return folded


@torch.no_grad()
def trace_conv_bn_pairs(model: nn.Module, example_input: torch.Tensor | list[torch.Tensor], *,
                        elsewhere: set[int] | None = None) -> list[tuple[str, str]]:
    """``(conv_name, bn_name)`` for every foldable BN whose input is a conv's output, read by nothing else.

    A conv whose weight is computed (:func:`_computed_weights`: weight or spectral norm) keeps its BN,
    and so do convs and BNs with forward hooks (:func:`_hooked`) and those whose parameters or statistics
    the forward reads outside them (:func:`read_elsewhere`; ``elsewhere``: their ids, if already known).
    """
    if elsewhere is None:
        elsewhere = read_elsewhere(model, example_input, lambda m: isinstance(m, (*_CONVS, *_BATCHNORMS)))

    def is_conv(m: nn.Module) -> bool:
        return (isinstance(m, _CONVS) and _standard_forward(m) and not _computed_weights(m) and not _hooked(m)
                and id(m) not in elsewhere)

    def is_bn(m: nn.Module) -> bool:
        return (isinstance(m, _BATCHNORMS) and _standard_forward(m) and _foldable(m) and not _hooked(m)
                and id(m) not in elsewhere)

    return trace_pairs(model, example_input, is_conv, is_bn)


@torch.no_grad()
def read_elsewhere(model: nn.Module, example_input: torch.Tensor | list[torch.Tensor],
                   is_candidate: Callable[[nn.Module], bool]) -> set[int]:
    """``id`` of every candidate module whose parameters or buffers an op reads outside its own calls.

    A forward that uses a conv's weight again (``F.conv_transpose2d(y, self.conv.weight)``, a tied
    decoder) or a BN's statistics in a function of its own would read the folded weight, or find the BN
    gone: such modules are not folded or replaced. A read inside a call of another module that holds
    the same parameter (two convs sharing one weight) is that module's own. With a list of batches,
    those found in the pass on any of them.
    """
    batches = [example_input] if isinstance(example_input, torch.Tensor) else example_input
    owners: dict[int, list[nn.Module]] = {}  # storage -> candidates (and their ancestors among them) holding it
    for m in model.modules():
        if is_candidate(m):
            for t in {id(t): t for t in (*m.parameters(), *m.buffers()) if t.numel()}.values():
                owners.setdefault(_storage_of(t), []).append(m)
    if not owners:
        return set()
    active: dict[int, int] = {}
    found: set[int] = set()
    reads = _ForeignReads(owners, active, found)

    def enter(module, args):
        active[id(module)] = active.get(id(module), 0) + 1

    def leave(module, args, output):
        active[id(module)] -= 1

    for x in batches:
        handles = []
        for m in {id(m): m for ms in owners.values() for m in ms}.values():
            handles += [m.register_forward_pre_hook(enter, prepend=True),
                        m.register_forward_hook(leave, always_call=True)]
        _run_watched(model, x.clone(), handles, reads)
    return found


class _ForeignReads(TorchDispatchMode):
    """Adds to ``found`` the owners of every watched tensor an op reads while none of them is running."""

    def __init__(self, owners: dict[int, list[nn.Module]], active: dict[int, int], found: set[int]) -> None:
        super().__init__()
        self.owners, self.active, self.found = owners, active, found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves((args, kwargs)):
            if isinstance(leaf, torch.Tensor):
                holders = self.owners.get(_storage_of(leaf))
                if holders and not any(self.active.get(id(m)) for m in holders):
                    self.found.update(id(m) for m in holders)
        return out

    def count_outputs(self, outputs) -> None:  # (_run_watched's interface) a returned weight is read elsewhere too
        for leaf in tree_leaves(outputs):
            if isinstance(leaf, torch.Tensor):
                self.found.update(id(m) for m in self.owners.get(_storage_of(leaf), []))


def _standard_forward(module: nn.Module) -> bool:
    """Whether a conv, BN, MixConv, XSepConv or grouped conv runs its library class's own forward.

    A subclass that overrides it computes something the rewrites do not model (weight
    standardisation in a conv, an activation inside a BN such as timm's ``BatchNormAct2d``, a
    ``OneDNNConv2d`` with its post-op): it is neither folded into nor replaced. Other modules: ``True``.
    """
    cls = type(module)
    if isinstance(module, nn.Conv2d):
        return cls.forward in (nn.Conv2d.forward, Conv2dSame.forward) and cls._conv_forward is nn.Conv2d._conv_forward
    if isinstance(module, _BATCHNORMS):
        return cls.forward in (nn.BatchNorm2d.forward, nn.SyncBatchNorm.forward)
    for base in (GroupedConv2d, MixConv2d, XSepConv2d):
        if isinstance(module, base):
            return cls.forward is base.forward and all(
                _standard_forward(m) for m in module.children() if isinstance(m, nn.Conv2d))
    return True


def _computed_weights(module: nn.Module) -> bool:
    """Whether a conv in ``module`` computes its weight or bias from other tensors as it runs.

    ``torch.nn.utils.parametrize`` (``parametrizations.weight_norm`` / ``spectral_norm``) makes
    ``weight`` a property; the hook-based ``torch.nn.utils.spectral_norm`` / ``weight_norm`` set it
    as a plain tensor attribute before each call. Either way it is not a parameter to fold into.
    """
    for m in module.modules():
        if parametrize.is_parametrized(m):
            return True
        if isinstance(m, nn.Conv2d):
            for name in ("weight", "bias"):
                value = getattr(m, name)
                if value is not None and m._parameters.get(name) is not value:
                    return True
    return False


@torch.no_grad()
def trace_pairs(model: nn.Module, example_input: torch.Tensor | list[torch.Tensor],
                is_producer: Callable[[nn.Module], bool], is_consumer: Callable[[nn.Module], bool], *,
                in_place_consumer: bool = False) -> list[tuple[str, str]]:
    """``(producer_name, consumer_name)`` where the consumer module is the only reader of the producer's output.

    Forward hooks record the tensor each producer returns and the tensor each consumer receives;
    a dispatch mode counts the ATen ops that read each producer output. A pair qualifies when the
    consumer receives the producer's output and is its only reader (an in-place op in between, a
    skip connection from the raw output or a second consumer all read it too). Modules called
    more than once in the pass (shared weights) are never paired.

    With ``in_place_consumer=True`` a consumer that returns the very tensor it received (an
    in-place activation) also qualifies when it is the *first* reader: the ops after it read
    what it wrote, which a producer fused with it returns as well.

    With a list of batches, the pairs found in the pass on each one.
    """
    if not isinstance(example_input, torch.Tensor):
        found = [trace_pairs(model, x, is_producer, is_consumer, in_place_consumer=in_place_consumer)
                 for x in example_input]
        return [pair for pair in found[0] if all(pair in f for f in found[1:])]
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # id(output) -> (producer name, output kept alive)
    pairs: dict[str, str] = {}  # consumer name -> producer name
    first_reader: set[str] = set()  # consumers that read the producer output before any other op did
    in_place: set[str] = set()  # consumers that returned their input
    calls: dict[str, int] = {}  # a module called twice (shared weights) cannot be rewritten for one call
    readers = _ReaderCount(produced)
    clock = [0]  # events so far: hooked modules' calls (see _watch_hooked) and consumer calls
    consumed_at: dict[str, int] = {}
    witnessed: list[tuple[torch.Tensor, int]] = []
    handles = _watch_hooked(model, witnessed, clock)

    def record_producer(name):
        def hook(module, args, output):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor):
                produced[id(output)] = (name, output)
                readers.counts[id(output)] = 0
        return hook

    def record_consumer(name):
        def hook(module, args):
            calls[name] = calls.get(name, 0) + 1
            clock[0] += 1
            consumed_at[name] = clock[0]
            hit = produced.get(id(args[0])) if args else None
            if hit is not None and hit[1] is args[0]:
                pairs[name] = hit[0]
                if readers.counts.get(id(args[0])) == 0:
                    first_reader.add(name)
        return hook

    def record_in_place(name):
        def hook(module, args, output):
            if args and output is args[0]:
                in_place.add(name)
        return hook

    for name, module in model.named_modules():
        if is_producer(module):
            handles.append(module.register_forward_hook(record_producer(name)))
        elif is_consumer(module):
            handles.append(module.register_forward_pre_hook(record_consumer(name)))
            handles.append(module.register_forward_hook(record_in_place(name)))
    _run_watched(model, example_input.clone(), handles, readers)
    output_of = {name: key for key, (name, _) in produced.items()}
    producers = list(pairs.values())

    def only_reader(prod: str, cons: str) -> bool:
        if readers.counts.get(output_of[prod]) == 1:
            return True
        return in_place_consumer and cons in first_reader and cons in in_place

    def unseen_by_hooks(prod: str, cons: str) -> bool:
        # A hooked module that received or returned the producer's output (a forward hook on a wrapper of the
        # conv, a pre-hook on a wrapper of the BN) may keep it: once fused, that tensor would hold the consumer's
        # result. After an in-place consumer has run, it holds that result in the eval-mode model too.
        storage = _storage_of(produced[output_of[prod]][1])
        after = consumed_at[cons] if cons in in_place else float("inf")
        return not any(when < after and _storage_of(t) == storage for t, when in witnessed)

    return [(prod, cons) for cons, prod in pairs.items()
            if producers.count(prod) == 1 and calls[prod] == 1 and calls[cons] == 1 and only_reader(prod, cons)
            and unseen_by_hooks(prod, cons)]


@torch.no_grad()
def fuse_conv_activations(model: nn.Module, example_input: torch.Tensor | list[torch.Tensor]) -> list[tuple[str, str]]:
    """Make every plain ``nn.Conv2d`` a :class:`~mobileconv.deploy.onednn.OneDNNConv2d`, in place.

    A conv whose output goes straight to a ReLU / ReLU6 / swish / hard-swish / (hard-)sigmoid
    module, read by nothing before it (:func:`trace_pairs`, in-place activations included),
    takes that activation as its oneDNN post-op and the activation becomes ``nn.Identity``.
    Run it after :func:`fold_batchnorms` (a BN between them is an ``nn.Identity`` by then).
    Convs and activations with forward hooks are left alone. With a list of batches, a pair must
    qualify in the pass on each.

    Returns:
        The ``(conv_name, activation_name)`` pairs fused.
    """
    def is_conv(m: nn.Module) -> bool:
        return (type(m) is nn.Conv2d and not isinstance(m.padding, str) and m.padding_mode == "zeros"
                and not _computed_weights(m) and not _hooked(m))

    first = example_input if isinstance(example_input, torch.Tensor) else example_input[0]
    called = _called_modules(model, first, is_conv)  # an InplaceSqueezeExcite's convs are not
    pairs = trace_pairs(model, example_input, is_conv,
                        lambda m: fusable_activation(m) and type(m) is not nn.Identity and not _hooked(m),
                        in_place_consumer=True)
    for conv_name, act_name in pairs:
        act = model.get_submodule(act_name)
        _replace(model, conv_name, OneDNNConv2d.from_conv(model.get_submodule(conv_name), act))
        _replace(model, act_name, nn.Identity())
    for name in called.difference(conv for conv, _ in pairs):
        _replace(model, name, OneDNNConv2d.from_conv(model.get_submodule(name)))
    return pairs


class _FusedAddInvertedResidual(InvertedResidual):
    """Inference form of :class:`InvertedResidual`: the projection conv adds the skip connection."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.se(self.act2(self.bn2(self.conv_dw(self.act1(self.bn1(self.conv_pw(x)))))))
        if self.training:  # drop-path may be active
            return x + self.drop_path(self.bn3(self.conv_pwl(y)))
        return self.conv_pwl(y, residual=x)


class _FusedAddDepthwiseSeparableBlock(DepthwiseSeparableBlock):
    """Inference form of :class:`DepthwiseSeparableBlock`: the pointwise conv adds the skip connection."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.se(self.act1(self.bn1(self.conv_dw(x))))
        if self.training:  # drop-path may be active
            return x + self.drop_path(self.act2(self.bn2(self.conv_pw(y))))
        return self.conv_pw(y, residual=x)


def fuse_residual_adds(model: nn.Module) -> list[str]:
    """Let the last conv of each residual block add the skip connection (one oneDNN call), in place.

    For an :class:`InvertedResidual` / :class:`DepthwiseSeparableBlock` with a skip connection whose
    last conv is a :class:`~mobileconv.deploy.onednn.OneDNNConv2d` without activation, followed
    only by ``nn.Identity`` (a folded BN) and an eval-mode drop-path: ``shortcut + conv(y)`` is the
    conv's ``residual`` post-op. Run it after :func:`fuse_conv_activations`. Returns the block names.
    """
    names = []
    for name, block in model.named_modules():
        if type(block) is InvertedResidual:
            conv, rest, fused = block.conv_pwl, (block.bn3,), _FusedAddInvertedResidual
        elif type(block) is DepthwiseSeparableBlock:
            conv, rest, fused = block.conv_pw, (block.bn2, block.act2), _FusedAddDepthwiseSeparableBlock
        else:
            continue
        if (block.use_skip and isinstance(conv, OneDNNConv2d) and conv.post_op[0] == "none"
                and all(type(m) is nn.Identity and not _hooked(m) for m in rest)
                and isinstance(block.drop_path, (DropPath, nn.Identity)) and not _hooked(block.drop_path)):
            block.__class__ = fused
            names.append(name)
    return names


def _called_modules(model: nn.Module, example_input: torch.Tensor, predicate: Callable[[nn.Module], bool]) -> set[str]:
    """Names of the modules matching ``predicate`` that a forward pass on ``example_input`` calls."""
    called: set[str] = set()
    handles = [m.register_forward_pre_hook(lambda *_, name=name: called.add(name))
               for name, m in model.named_modules() if predicate(m)]
    _run_watched(model, example_input.clone(), handles)
    return called


class InplaceSqueezeExcite(SqueezeExcite):
    """``SqueezeExcite`` that multiplies its input by the gate in place (inference only).

    The same maths as :class:`~mobileconv.layers.SqueezeExcite` (``x * gate(excite(pool(x)))``),
    without allocating a new activation-sized tensor: on CPU every large allocation comes with
    fresh zeroed pages, which costs about as much as the multiply itself (MixNet-S, batch 32:
    1.15-1.19x for the whole optimised model on 1 thread, 1.05-1.08x on 2; no change at batch 1).
    Only for an input that nothing reads afterwards
    (:func:`scale_in_place` checks that); with autograd recording it computes out of place.

    Its two 1x1 convs act on a 1x1 map, so it runs them as ``F.linear`` on the pooled ``(N, C)``
    vector: a matrix product, where a conv call costs more in setup than in arithmetic
    (MixNet-S, batch 1: 2.5 ms per image in the 15 convs of 1x1 maps, as oneDNN convs).
    """

    @classmethod
    def from_module(cls, se: SqueezeExcite) -> InplaceSqueezeExcite:
        """The same module (same sub-modules and parameters) with the in-place forward."""
        new = copy.copy(se)
        new.__class__ = cls
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_channels(x, self.channels, "SqueezeExcite")  # F.linear's own error names no channels
        s = x.mean((2, 3))
        s = self.act1(F.linear(s, self.conv_reduce.weight.flatten(1), self.conv_reduce.bias))
        s = self.gate(F.linear(s, self.conv_expand.weight.flatten(1), self.conv_expand.bias))[:, :, None, None]
        if torch.is_grad_enabled() and x.requires_grad:
            return x * s
        return x.mul_(s)


@torch.no_grad()
def scale_in_place(model: nn.Module, example_input: torch.Tensor | list[torch.Tensor]) -> list[str]:
    """Turn every ``SqueezeExcite`` whose input is read by nothing after it into an :class:`InplaceSqueezeExcite`.

    Not one with forward hooks. With a list of batches, the input must be free in the pass on each.
    Returns the names of the modules changed.
    """
    batches = [example_input] if isinstance(example_input, torch.Tensor) else example_input
    # in both memory formats: a .contiguous(memory_format=...) in the model copies one and passes the other on
    both_formats = [f for x in batches for f in (x, x.contiguous(memory_format=torch.channels_last))]
    names = trace_overwritable_inputs(model, both_formats,
                                      lambda m: type(m) is SqueezeExcite and not _hooked(m) and _linear_se(m))
    for name in names:
        _replace(model, name, InplaceSqueezeExcite.from_module(model.get_submodule(name)))
    return names


def _linear_se(se: SqueezeExcite) -> bool:
    """Whether the SE's 1x1 convs compute what :class:`InplaceSqueezeExcite`'s ``F.linear`` calls do.

    Not for a conv a user put in its place with a forward of its own (weight standardisation, QAT),
    groups, a stride or a padding (which would make a larger map of the pooled 1x1 one).
    """
    return all(isinstance(c, nn.Conv2d) and _standard_forward(c) and c.kernel_size == (1, 1) and c.groups == 1
               and c.stride == (1, 1) and c.padding in ((0, 0), "valid", "same")
               for c in (se.conv_reduce, se.conv_expand))


@torch.no_grad()
def trace_overwritable_inputs(model: nn.Module, example_input: torch.Tensor | list[torch.Tensor],
                              is_candidate: Callable[[nn.Module], bool]) -> list[str]:
    """Names of the candidate modules whose input tensor no ATen op reads once they have returned.

    Such a module may overwrite its input. The input must also be a tensor made inside the model
    (not the caller's ``example_input``, a parameter, buffer or tensor attribute of the model, or a view of
    one) and not a view of another tensor; a read of
    any view of it counts, and so does the model returning it; the module must be called once per
    forward pass. With a list of batches, the names found in the pass on each one (in module order).
    """
    if not isinstance(example_input, torch.Tensor):
        found = [trace_overwritable_inputs(model, x, is_candidate) for x in example_input]
        return [name for name in found[0] if all(name in f for f in found[1:])]
    example_input = example_input.clone()  # the model may write to its input (see _run_watched)
    # the input and the tensors the model holds (parameters, buffers, tensor attributes) outlive the pass: the next
    # call reads them again
    held = {_storage_of(t) for m in model.modules()
            for t in (*m.parameters(recurse=False), *m.buffers(recurse=False), *vars(m).values())
            if isinstance(t, torch.Tensor)} | {_storage_of(example_input)}
    watched: dict[int, tuple[str, torch.Tensor]] = {}
    readers = _ReaderCount(watched)
    inputs: dict[str, torch.Tensor | None] = {}
    calls: dict[str, int] = {}
    witnessed: list[tuple[torch.Tensor, int]] = []
    handles = _watch_hooked(model, witnessed, [0])

    def before(name):
        def hook(module, args):
            calls[name] = calls.get(name, 0) + 1
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            mine = x is not None and x._base is None and _storage_of(x) not in held
            inputs[name] = x if mine else None
        return hook

    def after(name):
        def hook(module, args, output):
            x = inputs.get(name)
            if x is not None and output is not x:  # count the reads of the input from now on
                watched[id(x)] = (name, x)
                readers.counts[id(x)] = 0
        return hook

    for name, module in model.named_modules():
        if is_candidate(module):
            handles.append(module.register_forward_pre_hook(before(name)))
            handles.append(module.register_forward_hook(after(name)))
    _run_watched(model, example_input, handles, readers)
    seen = {_storage_of(t) for t, _ in witnessed}  # a hooked module may keep what it received or returned
    return [name for name, x in inputs.items()
            if x is not None and calls[name] == 1 and readers.counts.get(id(x)) == 0 and _storage_of(x) not in seen]


def _watch_hooked(model: nn.Module, witnessed: list[tuple[torch.Tensor, int]], clock: list[int]) -> list:
    """Hooks (their handles) that record every tensor a module with forward (pre-)hooks of its own receives or returns.

    Such a hook may keep a tensor (``features[name] = output``) without any op reading it, so
    :class:`_ReaderCount` does not see it: a rewrite that writes into that tensor, or makes the conv
    before it return what another module computes, would change what the hook keeps. Each tensor goes
    into ``witnessed`` with the value of ``clock[0]``, advanced by one per record, and kept alive (its
    memory is not reused for a later tensor in the pass). Ours run before the user's hooks: they see
    the arguments before a pre-hook replaces them and the output before a hook replaces it.
    """
    def record(tensors):
        clock[0] += 1
        witnessed.extend((t, clock[0]) for t in tree_leaves(tensors) if isinstance(t, torch.Tensor))

    handles = []
    for m in model.modules():
        if m._forward_hooks or m._forward_pre_hooks:
            handles.append(m.register_forward_pre_hook(lambda _, args, kwargs: record((args, kwargs)),
                                                       prepend=True, with_kwargs=True))
            handles.append(m.register_forward_hook(lambda _, args, kwargs, out: record(out),
                                                   prepend=True, with_kwargs=True))
    return handles


def _run_watched(model: nn.Module, example_input: torch.Tensor, handles: list,
                 readers: _ReaderCount | None = None) -> None:
    """One eval-mode forward pass with the hooks in ``handles`` (under ``readers`` if given); then
    remove the hooks and restore the model's training flag, whatever happens.

    Callers pass a copy of their example batch: a model may write to its input (``x -= mean``), and
    every pass must see the same values (and the caller's tensor stay as it is).
    """
    was_training = model.training
    try:
        with readers if readers is not None else contextlib.nullcontext():
            outputs = model.eval()(example_input)
        if readers is not None:
            readers.count_outputs(outputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


class _ReaderCount(TorchDispatchMode):
    """Counts, per watched tensor, the ATen ops that read it or a view of it (the same storage).

    :meth:`count_outputs` counts the model's outputs as readers too: a tensor that leaves the
    model is read by the caller.
    """

    def __init__(self, produced: dict[int, tuple[str, torch.Tensor]]) -> None:
        super().__init__()
        self.produced = produced
        self.counts: dict[int, int] = {}
        self._storages: dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._count(tree_leaves((args, kwargs)))
        return out

    def count_outputs(self, outputs) -> None:
        self._count(tree_leaves(outputs))

    def _count(self, leaves) -> None:
        storages = {_storage_of(leaf) for leaf in leaves if isinstance(leaf, torch.Tensor)}
        for key in self.counts:
            if key not in self._storages:  # a watched tensor is kept alive: its storage stays its own
                self._storages[key] = _storage_of(self.produced[key][1])
            if self._storages[key] in storages:
                self.counts[key] += 1


def _storage_of(t: torch.Tensor) -> int:
    """An id of the memory ``t`` lives in, shared by all its views."""
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # no storage (a tensor subclass, sparse...): itself
        return id(t)


def _hooked(module: nn.Module) -> bool:
    """Whether ``module`` or a sub-module has forward (pre-)hooks: a rewrite would drop them or change what they see."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def _foldable(bn: nn.Module) -> bool:
    return bn.running_mean is not None and bn.running_var is not None


def _fold(conv: nn.Module, bn: nn.Module) -> None:
    """``W' = W * s``, ``b' = (b - mu) * s + beta`` with ``s = gamma / sqrt(var + eps)``.

    Computed in float32 (float64 for float64 models) and rounded to the weight's dtype once: in
    bfloat16 / float16 each step rounding on its own moves the folded weights by several units in
    the last place, which a deep model accumulates (about twice the error of the unfolded model).
    """
    acc = torch.promote_types(bn.running_var.dtype, torch.float32)
    scale = torch.rsqrt(bn.running_var.to(acc) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(acc)
    shift = -bn.running_mean.to(acc) * scale
    if bn.bias is not None:
        shift = shift + bn.bias.to(acc)
    pieces = list(conv) if isinstance(conv, (GroupedConv2d, MixConv2d)) else [conv]
    start = 0
    for piece in pieces:
        n = piece.out_channels
        s, b = scale[start:start + n], shift[start:start + n]
        w = piece.weight
        wide = torch.promote_types(w.dtype, s.dtype)
        s, b = s.to(wide), b.to(wide)
        bias = piece.bias.to(wide) if piece.bias is not None else torch.zeros_like(s)
        piece.weight = nn.Parameter((w.to(wide) * s.reshape(-1, *[1] * (w.dim() - 1))).to(w.dtype), w.requires_grad)
        piece.bias = nn.Parameter((bias * s + b).to(w.dtype), w.requires_grad)
        start += n


def _copy(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, also with hook-based ``spectral_norm`` / ``weight_norm`` convs.

    Their ``weight`` is a tensor attribute computed from the parameters, which ``deepcopy``
    refuses when it is part of an autograd graph; the hook computes it again before every call,
    so the copy gets a detached one.
    """
    memo: dict[int, object] = {}
    for m in model.modules():
        for value in vars(m).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _example_input(model: nn.Module, example_input: torch.Tensor | None) -> torch.Tensor:
    if example_input is not None:
        if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4:
            raise ValueError("example_input must be a 4-d tensor (N, C, H, W), got "
                             f"{getattr(example_input, 'shape', type(example_input).__name__)}")
        if example_input.shape[0] == 0:  # every traced tensor would be empty: nothing could be told apart
            raise ValueError(f"example_input must hold at least one image, got shape {tuple(example_input.shape)}")
        return example_input
    ref = next(model.parameters(), None)
    in_chans = getattr(model, "in_chans", 3)
    kwargs = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    return torch.zeros(2, in_chans, DEFAULT_TRACE_SIZE, DEFAULT_TRACE_SIZE, **kwargs).normal_(
        generator=torch.Generator(kwargs.get("device", "cpu")).manual_seed(0))


@torch.no_grad()
def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x.clone())  # a copy: the model may write to its input (see _run_watched)


def _half(t: object) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.element_size() < 4


def _float32_reference(model: nn.Module, x: torch.Tensor, expected):
    """The eval model's output computed in float32, where it has half-precision outputs (else ``None``).

    A deep half-precision model differs from its own float32 maths by far more than a few units in
    the last place (bfloat16, registered models with random weights: 7-39% of the output scale),
    and so does any other correct rounding of the same maths, such as folded weights: the
    tolerance for such outputs is measured against this reference (:func:`_verify`).
    """
    if not any(_half(t) for t in tree_leaves(expected)):
        return None
    return _forward(_copy(model).float(), x.float() if x.is_floating_point() else x)


def _verify(expected, got, reference=None) -> None:
    """Compare outputs: tensors within the tolerance, everything else (``None``, numbers, strings) equal.

    Tensors may sit in tuples, lists and dicts (``features_only`` models, detection-style heads).
    Infinities and NaNs must be where the eval model has them. The tolerance is
    :data:`VERIFY_RTOL` of the output scale, or a few units in the last place of a half-precision
    dtype, whose rounding alone moves a folded conv's output by more than that. With a float32
    ``reference`` (the eval model's output in float32, :func:`_float32_reference`), a half-precision
    output may also differ from the eval model's by up to 4 times the eval model's own error against it.
    """
    if isinstance(expected, (list, tuple)) and isinstance(got, (list, tuple)) and len(expected) == len(got):
        references = reference if isinstance(reference, (list, tuple)) and len(reference) == len(expected) else None
        for i, (e, g) in enumerate(zip(expected, got)):
            _verify(e, g, None if references is None else references[i])
        return
    if isinstance(expected, dict) and isinstance(got, dict) and expected.keys() == got.keys():
        for key in expected:
            _verify(expected[key], got[key], reference.get(key) if isinstance(reference, dict) else None)
        return
    if not isinstance(expected, torch.Tensor):
        if type(got) is not type(expected) or got != expected:
            raise RuntimeError("optimize_for_inference changed the output's structure or a non-tensor value; "
                               "please report this model")
        return
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape or got.dtype != expected.dtype:
        raise RuntimeError("optimize_for_inference changed the output's shape or type; please report this model")
    if not expected.is_floating_point():
        if not torch.equal(got, expected):
            raise RuntimeError("optimize_for_inference changed an integer output; please report this model")
        return
    same = (got == expected) | (got.isnan() & expected.isnan())  # infinities and NaNs where they were
    finite = expected.isfinite()
    if not bool((same | finite).all()):
        raise RuntimeError("optimize_for_inference changed where the output is infinite or NaN; "
                           "please report this model")
    tol = max(VERIFY_RTOL, 4 * torch.finfo(expected.dtype).eps)
    scale = expected[finite].abs().max().double().clamp_min(1e-12) if bool(finite.any()) else None
    if _half(expected) and isinstance(reference, torch.Tensor) and reference.shape == expected.shape:
        own = (expected.double() - reference.double())[finite & reference.isfinite()]  # the eval model's rounding
        if own.numel():
            tol = max(tol, 4 * own.abs().max().item() / scale.item())
    expected, got = expected[finite & ~same].double(), got[finite & ~same].double()
    if not expected.numel():
        return
    err = (got - expected).abs().max()
    if not torch.isfinite(err) or err > tol * scale:
        raise RuntimeError(f"optimize_for_inference changed the output: max abs diff {err.item():.3g} "
                           f"> {tol:.3g} x output scale {scale.item():.3g}; please report this model")


def chunk_plan(peak_ratios: list[float], budget: int, x: torch.Tensor) -> tuple[int, int]:
    """``(number of leading steps to run in chunks, images per chunk)`` for a batch ``x``.

    ``peak_ratios[i]``: the largest activation step ``i`` makes per image, over the size of one
    image of ``x``. The leading steps up to the last one whose largest activation per image is
    above :data:`MICRO_BATCH_MIN_PEAK` run on chunks of the most images that keep every one of
    their activations within ``budget`` bytes; ``(0, len(x))`` when no step qualifies or one
    chunk would hold the whole batch.
    """
    n = x.shape[0]
    per_image = (x[0].numel() if n else 0) * x.element_size()
    peaks = [r * per_image for r in peak_ratios]
    # (no ``max(..., default=...)``: torch.compile traces this plan)
    prefix = max([0] + [i + 1 for i, p in enumerate(peaks) if p > MICRO_BATCH_MIN_PEAK])
    chunk = max(1, int(budget // max([1.0] + peaks[:prefix])))
    return (prefix, chunk) if chunk < n else (0, n)


def _whole_batch_only(x: torch.Tensor) -> bool:
    """Autograd recording, tracing and ``torch.export`` see the plain whole-batch forward (``torch.compile`` traces
    the chunks; ``torch.export`` would record the chunk sizes as a guard on a dynamic batch)."""
    return (torch.is_grad_enabled() and x.requires_grad) or torch.jit.is_tracing() or torch.compiler.is_exporting()


class _ChunkPlan:
    """The plan :class:`MicroBatchedStages` and :class:`MicroBatchedMobileNet` share.

    ``peak_ratios`` (per step) and ``budget`` are set by :func:`micro_batch_stages`.
    """

    def plan(self, x: torch.Tensor) -> tuple[int, int]:
        """``(number of leading steps to chunk, images per chunk)`` for input ``x``."""
        return chunk_plan(self.peak_ratios, self.budget, x)

    def _chunking(self, x: torch.Tensor) -> tuple[int, int]:
        """:meth:`plan`, or no chunks where the whole batch must run at once (not for TorchScript)."""
        return (0, x.shape[0]) if _whole_batch_only(x) else self.plan(x)


class MicroBatchedStages(_ChunkPlan, nn.Sequential):
    """``model.blocks`` (an ``nn.Sequential`` of stages) running its first stages on chunks of the batch.

    Inference only, for stages without batch-coupled ops (eval-mode or folded BN): the output is
    the same as running the whole batch at once. A MobileNet's first stages make activations
    several times larger than their input (MixNet-S: 96 channels at 112x112, 4.8 MB per image);
    for a batch of 32 each is 150 MB, written to memory and read back by the next conv, and on
    CPU every such allocation also comes with fresh zeroed pages. Run on chunks of a few images,
    they stay in the last-level cache and on the allocator's heap.

    ``peak_ratios[i]`` is stage ``i``'s largest activation over the input of ``blocks``, per image
    (measured by :func:`micro_batch_stages`); :func:`chunk_plan` turns them into the stages to
    chunk and the chunk size. The chunks are concatenated once and the later stages, whose small
    maps run best on the whole batch, follow. Batches no larger than one chunk, autograd,
    tracing and scripting run whole (``torch.compile`` traces the chunks). In a :class:`MicroBatchedMobileNet` the
    model runs the chunks, with its stem in front of them.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            prefix, chunk = self._chunking(x)
            if prefix:
                return _run_in_chunks(list(self), x, prefix, chunk)
        for stage in self:
            x = stage(x)
        return x


def _run_in_chunks(steps: list[Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor, prefix: int,
                   chunk: int) -> torch.Tensor:
    """``steps[:prefix]`` on each chunk of ``chunk`` images, one concatenation, then the other steps."""
    parts = []
    for part in x.split(chunk):
        for step in steps[:prefix]:
            part = step(part)
        parts.append(part)
    x = torch.cat(parts)
    for step in steps[prefix:]:
        x = step(x)
    return x


class MicroBatchedMobileNet(_ChunkPlan, MobileNet):
    """A :class:`~mobileconv.models.MobileNet` whose stem runs in the chunks of its first stages.

    The same rule as :class:`MicroBatchedStages`, over the steps ``stem, stage 0, stage 1, ...``
    and the input image: ``peak_ratios[0]`` is the stem's output over the image, per image, and
    the stem is step 0 of :meth:`plan`. The batch-wide stem output (MobileNetV3-Small at
    224x224: 0.8 MB per image, as large as any stage's activations) and the conversion of the
    NCHW input to channels_last then happen per chunk as well. ``model.blocks`` stays an
    ``nn.Sequential`` with the same stages and names.
    """

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            prefix, chunk = self._chunking(x)
            if prefix:
                x = _run_in_chunks([self.forward_stem, *self.blocks], x, prefix, chunk)
                return self.act2(self.bn2(self.conv_head(x))) if self.head_kind == "conv_bn" else x
        x = self.blocks(self.forward_stem(x))
        if self.head_kind == "conv_bn":
            x = self.act2(self.bn2(self.conv_head(x)))
        return x


@torch.no_grad()
def images_independent(model: nn.Module, example_input: torch.Tensor) -> bool:
    """Whether each image's output is what the model returns for that image alone (within :data:`VERIFY_RTOL`).

    Two images of ``example_input`` (its first, and its first mirrored when it has one) run as a
    batch and one by one. ``False`` also when an output has no batch dimension to compare.
    """
    x = example_input[:2] if len(example_input) > 1 else torch.cat([example_input, example_input.flip(-1)])
    together = tree_leaves(model(x.clone()))  # copies: the model may write to its input
    alone = [tree_leaves(model(x[i:i + 1].clone())) for i in range(2)]
    for i, outputs in enumerate(alone):
        if len(outputs) != len(together):
            return False
        for whole, single in zip(together, outputs):
            if not isinstance(whole, torch.Tensor) or whole.dim() == 0 or whole.shape[0] != 2:
                return False
            if whole[i:i + 1].shape != single.shape or not whole.is_floating_point():
                return False
            scale = whole.abs().max().clamp_min(1e-12)
            if not bool(((whole[i:i + 1] - single).abs().max() <= VERIFY_RTOL * scale).item()):
                return False
    return True


@torch.no_grad()
def micro_batch_stages(model: nn.Module, example_input: torch.Tensor, budget: int | None = None) -> bool:
    """Let ``model`` run the first stages of ``model.blocks`` on chunks of large batches, in place; whether it did.

    A :class:`~mobileconv.models.MobileNet` (every registered classifier) becomes a
    :class:`MicroBatchedMobileNet`, whose stem joins the chunks; in any other model
    ``model.blocks``, an ``nn.Sequential`` of stages, becomes a :class:`MicroBatchedStages` (so
    also in a MobileNet whose ``blocks`` has forward hooks of its own, which run where it is called).
    The per-step peak ratios come from one forward pass on ``example_input``. Left alone if a
    BatchNorm in the chunked part normalises with batch statistics, or a stage returns anything
    but a batch tensor (a tuple for the next stage: the chunks could not be concatenated). ``budget``: bytes per chunk
    for the largest activation, default :data:`MICRO_BATCH_BYTES` (16 MiB: half this machine's
    32 MiB L3 and below glibc's largest mmap threshold, 32 MiB; 12-24 MiB measured the same
    within noise).
    """
    blocks = getattr(model, "blocks", None)
    if type(blocks) is not nn.Sequential or not len(blocks):
        return False
    # a MobileNet runs its stem and stages in chunks without calling `blocks`: hooks on it would not run, so then
    # `blocks` alone is chunked (inside its call)
    with_stem = type(model) is MobileNet and not (blocks._forward_hooks or blocks._forward_pre_hooks)
    steps = [nn.ModuleList([model.conv_stem, model.bn1, model.act1])] if with_stem else []
    steps += list(blocks)
    if any(isinstance(m, _BATCHNORMS) and (m.training or not _foldable(m)) for s in steps for m in s.modules()):
        return False
    if not images_independent(model, example_input):
        return False  # something mixes the images of a batch (batch statistics in a functional or 1-d BN...)
    peaks = [0] * len(steps)
    inputs: list[object] = []  # the input of the first step
    outputs: list[object] = []  # what each stage returns: the chunks' last ones are concatenated
    first = model if with_stem else blocks
    handles = [first.register_forward_pre_hook(lambda module, args: inputs.append(args[0] if args else None))]
    handles += [stage.register_forward_hook(lambda module, args, output: outputs.append(output)) for stage in blocks]
    for i, step in enumerate(steps):
        def on_output(module, args, output, i=i):
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                peaks[i] = max(peaks[i], output[0].numel())
        handles += [m.register_forward_hook(on_output) for m in step.modules()]
    _run_watched(model, example_input.clone(), handles)
    if len(inputs) != 1 or not isinstance(inputs[0], torch.Tensor) or not inputs[0].dim() or not all(peaks):
        return False  # not called once on a batch, or a step made no activations
    if not all(isinstance(y, torch.Tensor) and y.dim() and len(y) == len(inputs[0]) for y in outputs):
        return False  # a stage passes on something else than a batch (a tuple...): chunks of it cannot be joined
    owner = model if with_stem else blocks
    owner.__class__ = MicroBatchedMobileNet if with_stem else MicroBatchedStages
    owner.peak_ratios = [p / inputs[0][0].numel() for p in peaks]
    owner.budget = MICRO_BATCH_BYTES if budget is None else budget
    return True
