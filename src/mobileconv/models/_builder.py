"""Architecture specs (immutable dataclasses) and the one builder that decodes them.

A family file writes its network as a table of :class:`BlockSpec` rows grouped in stages,
wraps it in an :class:`ArchSpec` (stem, head, SE rule, width multiplier...) and hands it to
:class:`MobileNet`. Nothing here mutates a spec: variants (width, TF padding, 32x32 "cifar"
form, XSepConv) are new specs made with :func:`dataclasses.replace`.

Width scaling happens in exactly one place, :func:`round_channels`
(``make_divisible(c * width_mult, 8)``, MobileNetV2 Sec. 6.1 / timm), applied to the stem and to
every block's output width. Expanded widths follow timm: ``make_divisible(in * exp_ratio, 8)``
with ``in`` the (scaled) block input width.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from ..layers import SqueezeExcite, create_act, create_conv2d, make_divisible, xsep_padding_schedule
from ..layers.helpers import as_int, check_kernel_sizes, check_positive, check_stride
from ._blocks import ConvBnActBlock, DepthwiseSeparableBlock, InvertedResidual

BLOCK_KINDS = ("ds", "ir", "cn")
HEAD_KINDS = ("conv_bn", "pool_conv", "pool")
SE_REDUCE_FROM = ("in", "mid")


def _check_ratio(value: float, name: str, *, zero_ok: bool) -> None:
    """``value`` must be a finite number, ``> 0`` (or ``>= 0`` with ``zero_ok``): no silent 8-channel layers."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value >= 0 if zero_ok else value > 0))
    if not ok:
        raise ValueError(f"{name} must be a finite number {'>= 0' if zero_ok else '> 0'}, got {value!r}")


@dataclass(frozen=True)
class BlockSpec:
    """One row of an architecture table (timm block-string fields, spelled out).

    Attributes:
        kind: ``"ds"`` depthwise-separable, ``"ir"`` inverted residual, ``"cn"`` conv-BN-act.
        out_channels: output width at ``width_mult=1``.
        kernel_size: depthwise kernel, or a tuple of kernels for a MixConv (``k3.5.7``).
        stride: stride of the first repeat (the others use 1).
        exp_ratio: expansion ``mid / in`` of an inverted residual.
        se_ratio: squeeze-excite ratio (0 = no SE); what it multiplies is the family's :class:`SESpec`.
        act: activation name (``"relu"``, ``"relu6"``, ``"hswish"``, ``"swish"``).
        exp_groups / pwl_groups: groups of MixNet's grouped expand / project 1x1 convs (``a`` / ``p``).
        repeats: how many times the row repeats.
        pw_act: activation after the pointwise conv of a ``ds`` block (MobileNetV1).
        use_skip: allow the identity skip (taken only when stride 1 and widths match).
    """

    kind: str
    out_channels: int
    kernel_size: int | tuple[int, ...] = 3
    stride: int = 1
    exp_ratio: float = 1.0
    se_ratio: float = 0.0
    act: str = "relu"
    exp_groups: int = 1
    pwl_groups: int = 1
    repeats: int = 1
    pw_act: bool = False
    use_skip: bool = True

    def __post_init__(self) -> None:
        if self.kind not in BLOCK_KINDS:
            raise ValueError(f"BlockSpec.kind must be one of {BLOCK_KINDS}, got {self.kind!r}")
        if isinstance(self.kernel_size, list):
            object.__setattr__(self, "kernel_size", tuple(self.kernel_size))
        # make_divisible would turn a zero or negative width into 8 channels without a word
        check_positive(self.out_channels, "BlockSpec.out_channels")
        check_kernel_sizes(self.kernel_size, "BlockSpec.kernel_size")
        check_stride(self.stride, "BlockSpec.stride")
        _check_ratio(self.exp_ratio, "BlockSpec.exp_ratio", zero_ok=False)
        _check_ratio(self.se_ratio, "BlockSpec.se_ratio (0 = no SE)", zero_ok=True)
        for name in ("exp_groups", "pwl_groups", "repeats"):
            check_positive(getattr(self, name), f"BlockSpec.{name}")


@dataclass(frozen=True)
class SESpec:
    """How a family sizes and builds its squeeze-excite.

    Attributes:
        reduce_from: ``"in"`` -- ``max(1, int(block_in * se_ratio))`` (MixNet, official TF code);
            ``"mid"`` -- ``make_divisible(mid * se_ratio, 8)`` (MobileNetV3, Sec. 5.3).
        act: activation inside the SE; ``None`` uses the block's (MixNet: swish).
        gate: ``"sigmoid"`` (MixNet) or ``"hard_sigmoid"`` (MobileNetV3).
    """

    reduce_from: str = "in"
    act: str | None = None
    gate: str = "sigmoid"

    def __post_init__(self) -> None:
        if self.reduce_from not in SE_REDUCE_FROM:  # anything else used to mean "in" silently
            raise ValueError(f"SESpec.reduce_from must be one of {SE_REDUCE_FROM}, got {self.reduce_from!r}")

    def channels(self, in_channels: int, mid_channels: int, se_ratio: float) -> int:
        if not se_ratio:
            return 0
        if self.reduce_from == "mid":
            return make_divisible(mid_channels * se_ratio, 8)
        return max(1, int(in_channels * se_ratio))

    def layer(self, channels: int, reduced_channels: int, block_act: str) -> nn.Module:
        return SqueezeExcite(channels, reduced_channels, act_layer=self.act or block_act, gate_layer=self.gate)


@dataclass(frozen=True)
class HeadSpec:
    """The classifier head.

    Attributes:
        kind: ``"conv_bn"`` -- 1x1 conv -> BN -> act -> pool -> dropout -> linear (MobileNetV2,
            MixNet); ``"pool_conv"`` -- pool -> 1x1 conv (bias, no BN) -> act -> dropout -> linear
            (MobileNetV3's efficient last stage, Fig. 5); ``"pool"`` -- pool -> dropout -> linear
            (MobileNetV1).
        channels: width of the head conv (``num_features``); unused for ``"pool"``.
        act: head activation.
        scale_with_width: ``max(channels, round_channels(channels, width))`` (MobileNetV2, Sec. 6.1).
    """

    kind: str
    channels: int = 0
    act: str = "relu"
    scale_with_width: bool = False

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"HeadSpec.kind must be one of {HEAD_KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class ArchSpec:
    """A whole network as data: stem, stages of :class:`BlockSpec` rows, head and conventions.

    Attributes:
        stages: one tuple of rows per stage (``blocks.<stage>`` in the built model).
        stem_channels / stem_act / stem_stride: the 3x3 stem conv.
        head: the :class:`HeadSpec`.
        se: the family's :class:`SESpec`.
        width_mult: channel multiplier (``alpha`` in MobileNetV1, Sec. 3.3).
        fix_stem: keep the stem width when scaling.
        fix_stem_below: also keep it when ``width_mult < fix_stem_below`` (timm's MobileNetV3:
            ``fix_stem=channel_multiplier < 0.75``, so a 0.5x model keeps its 16-channel stem).
        drop_rate: dropout before the classifier.
        bn_eps: BatchNorm epsilon (1e-5 PyTorch, 1e-3 for TF-ported weights).
        padding: ``""`` symmetric, ``"tf"`` TensorFlow SAME.
        xsep_min_kernel: stride-1 depthwise convs with ``K >= xsep_min_kernel`` become XSepConv2d.
        min_input_size: smallest accepted input side.
    """

    stages: tuple[tuple[BlockSpec, ...], ...]
    stem_channels: int
    head: HeadSpec
    stem_act: str = "relu"
    stem_stride: int = 2
    se: SESpec = field(default_factory=SESpec)
    width_mult: float = 1.0
    fix_stem: bool = False
    fix_stem_below: float = 0.0
    drop_rate: float = 0.2
    bn_eps: float = 1e-5
    padding: str = ""
    xsep_min_kernel: int | None = None
    min_input_size: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(tuple(stage) for stage in self.stages))
        if not self.stages or not all(self.stages):
            raise ValueError(f"ArchSpec.stages must be a non-empty list of non-empty stages, got {self.stages!r}")
        check_positive(self.stem_channels, "ArchSpec.stem_channels")
        _check_ratio(self.width_mult, "ArchSpec.width_mult", zero_ok=False)
        _check_ratio(self.fix_stem_below, "ArchSpec.fix_stem_below", zero_ok=True)

    @property
    def stem_width(self) -> int:
        """Stem output width: ``round_channels(stem_channels, width_mult)`` unless the stem is fixed."""
        if self.fix_stem or self.width_mult < self.fix_stem_below:
            return self.stem_channels
        return round_channels(self.stem_channels, self.width_mult)


def round_channels(channels: int, width_mult: float) -> int:
    """The single width-scaling rule: ``make_divisible(channels * width_mult, 8)``."""
    return make_divisible(channels * width_mult, 8)


def tf_form(arch: ArchSpec) -> ArchSpec:
    """TensorFlow-ported form: TF "SAME" padding and BN eps 1e-3 (timm's ``tf_`` models)."""
    return dataclasses.replace(arch, padding="tf", bn_eps=1e-3)


def cifar_form(arch: ArchSpec, min_input_size: int = 8) -> ArchSpec:
    """32x32 form (XSepConv paper, Sec. 4.1): the stem and the first stride-2 block use stride 1.

    Total stride drops from 32 to 8, so a 32x32 input ends at 4x4.
    """
    stages, done = [], False
    for stage in arch.stages:
        rows = []
        for row in stage:
            if not done and row.stride == 2:
                row, done = dataclasses.replace(row, stride=1), True
            rows.append(row)
        stages.append(tuple(rows))
    return dataclasses.replace(arch, stages=tuple(stages), stem_stride=1, min_input_size=min_input_size)


def xsep_form(arch: ArchSpec, min_kernel: int = 5) -> ArchSpec:
    """XSepConv form (XSepConv paper, Sec. 4): stride-1 depthwise convs with ``K >= min_kernel`` become XSepConv."""
    return dataclasses.replace(arch, xsep_min_kernel=min_kernel)


@dataclass(frozen=True)
class _Block:
    """A table row expanded to one concrete block (widths resolved, repeats unrolled)."""

    stage: int
    spec: BlockSpec
    in_channels: int
    out_channels: int
    stride: int
    xsep: bool


def _expand(arch: ArchSpec, stem_channels: int) -> list[_Block]:
    blocks, in_ch = [], stem_channels
    for s, stage in enumerate(arch.stages):
        for row in stage:
            out_ch = round_channels(row.out_channels, arch.width_mult)
            for r in range(row.repeats):
                stride = row.stride if r == 0 else 1
                xsep = (arch.xsep_min_kernel is not None and row.kind != "cn" and isinstance(row.kernel_size, int)
                        and row.kernel_size >= arch.xsep_min_kernel and stride == 1)
                blocks.append(_Block(s, row, in_ch, out_ch, stride, xsep))
                in_ch = out_ch
    return blocks


def _make_block(arch: ArchSpec, b: _Block, norm_layer, xsep_padding: str | None, drop_path_rate: float) -> nn.Module:
    row = b.spec
    common = dict(act_layer=row.act, norm_layer=norm_layer, padding=arch.padding)
    if row.kind == "cn":
        return ConvBnActBlock(b.in_channels, b.out_channels, row.kernel_size, b.stride, **common)
    if row.kind == "ds":
        return DepthwiseSeparableBlock(
            b.in_channels, b.out_channels, row.kernel_size, b.stride, pw_act=row.pw_act, use_skip=row.use_skip,
            se_channels=arch.se.channels(b.in_channels, b.in_channels, row.se_ratio), se_layer=arch.se.layer,
            xsep_padding=xsep_padding, drop_path_rate=drop_path_rate, **common)
    mid = make_divisible(b.in_channels * row.exp_ratio, 8)
    return InvertedResidual(
        b.in_channels, mid, b.out_channels, row.kernel_size, b.stride, use_skip=row.use_skip,
        se_channels=arch.se.channels(b.in_channels, mid, row.se_ratio), se_layer=arch.se.layer,
        exp_kernels=(1,) * row.exp_groups, pwl_kernels=(1,) * row.pwl_groups, xsep_padding=xsep_padding,
        drop_path_rate=drop_path_rate, **common)


def build_stages(arch: ArchSpec, stem_channels: int, stem_stride: int, norm_layer,
                 drop_path_rate: float = 0.0) -> tuple[list[nn.Sequential], list[dict]]:
    """Decode ``arch.stages`` into ``nn.Sequential`` stages plus per-stage ``feature_info``.

    XSepConv layers get their 2x2 padding directions from :func:`xsep_padding_schedule` over all
    of the network's XSep layers in order (XSepConv paper, Sec. 3.2). Drop-path rates grow
    linearly with depth (EfficientNet's schedule).
    """
    blocks = _expand(arch, stem_channels)
    schedule = iter(xsep_padding_schedule(sum(b.xsep for b in blocks)))
    stages: list[list[nn.Module]] = [[] for _ in arch.stages]
    for i, b in enumerate(blocks):
        dpr = drop_path_rate * i / len(blocks)
        stages[b.stage].append(_make_block(arch, b, norm_layer, next(schedule) if b.xsep else None, dpr))
    info, reduction = [], stem_stride
    for s, stage in enumerate(stages):
        stage_blocks = [b for b in blocks if b.stage == s]
        for b in stage_blocks:
            reduction *= b.stride
        channels = stage_blocks[-1].out_channels  # also as timm's key, num_chs (timm.models.FeatureInfo reads it)
        info.append(dict(stage=s, module=f"blocks.{s}", channels=channels, num_chs=channels, reduction=reduction))
    return [nn.Sequential(*stage) for stage in stages], info


def check_image_input(x: torch.Tensor, in_chans: int, min_size: int, name: str) -> None:
    """Raise a ValueError naming the expected shape unless ``x`` is ``(N, in_chans, H, W)``, ``H, W >= min_size``."""
    if x.dim() != 4 or x.shape[1] != in_chans or x.shape[-2] < min_size or x.shape[-1] < min_size:
        shape = ", ".join([str(s) for s in x.shape])
        raise ValueError(f"{name} expects input of shape (N, {in_chans}, H, W) with H, W >= {min_size}, "
                         f"got ({shape})")


class MobileNet(nn.Module):
    """One network class for every family in the zoo: stem -> stages of blocks -> head.

    The model contract: ``forward(x) = forward_head(forward_features(x))``;
    ``forward_features`` returns the last feature map (for a ``"conv_bn"`` head, after the head
    conv/BN/act, as timm does); ``forward_head(x, pre_logits=True)`` returns the
    ``(N, num_features)`` vector fed to the classifier; ``reset_classifier(num_classes)``;
    adaptive pooling, so any input side ``>= min_input_size`` works.

    Args:
        arch: the :class:`ArchSpec` to build.
        num_classes: classifier outputs; 0 leaves the classifier an identity.
        in_chans: input channels of the stem.
        drop_rate: dropout before the classifier (default ``arch.drop_rate``).
        drop_path_rate: stochastic depth on residual branches (0 by default).
        name: registry name, used in error messages.
    """

    __jit_unused_properties__ = ["default_cfg"]  # a dict of mixed values: not scripted

    def __init__(self, arch: ArchSpec, num_classes: int = 1000, in_chans: int = 3, *, drop_rate: float | None = None,
                 drop_path_rate: float = 0.0, name: str = "model") -> None:
        super().__init__()
        if as_int(in_chans) is None or as_int(in_chans) < 1:
            raise ValueError(f"in_chans must be a positive integer, got {in_chans!r}")
        in_chans = as_int(in_chans)
        self.arch, self.name, self.in_chans = arch, name, in_chans
        self.head_kind = arch.head.kind
        self.min_input_size = arch.min_input_size
        if drop_rate is not None and (isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float))):
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}")  # float("a") named no argument
        self.drop_rate = arch.drop_rate if drop_rate is None else float(drop_rate)
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
        if isinstance(drop_path_rate, bool) or not isinstance(drop_path_rate, (int, float)) \
                or not 0.0 <= drop_path_rate < 1.0:  # checked here: each block gets a scaled rate
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
        norm_layer = partial(nn.BatchNorm2d, eps=arch.bn_eps)
        stem = arch.stem_width
        self.conv_stem = create_conv2d(in_chans, stem, 3, arch.stem_stride, padding=arch.padding)
        self.bn1 = norm_layer(stem)
        self.act1 = create_act(arch.stem_act, inplace=True)
        stages, self.feature_info = build_stages(arch, stem, arch.stem_stride, norm_layer, drop_path_rate)
        self.blocks = nn.Sequential(*stages)
        self._build_head(arch.head, self.feature_info[-1]["channels"], norm_layer)
        self.reset_classifier(num_classes)
        self.grad_checkpointing = False
        init_weights(self)

    def _build_head(self, head: HeadSpec, in_channels: int, norm_layer) -> None:
        width = head.channels
        if head.scale_with_width:
            width = max(width, round_channels(width, self.arch.width_mult))
        # Unused head layers are identities, so that every head has the same (scriptable) attributes.
        self.conv_head, self.bn2, self.act2 = nn.Identity(), nn.Identity(), nn.Identity()
        if head.kind == "conv_bn":
            self.conv_head = create_conv2d(in_channels, width, 1, padding=self.arch.padding)
            self.bn2 = norm_layer(width)
            self.act2 = create_act(head.act, inplace=True)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        if head.kind == "pool_conv":
            self.conv_head = nn.Conv2d(in_channels, width, 1, bias=True)
            self.act2 = create_act(head.act, inplace=True)
        self.flatten = nn.Flatten(1)
        self.num_features = width if head.kind != "pool" else in_channels

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier by a fresh ``Linear(num_features, num_classes)`` (identity for 0).

        ``global_pool`` is timm's argument; average pooling, ``"avg"``, is the only one these models have.
        """
        if as_int(num_classes) is None or as_int(num_classes) < 0:
            raise ValueError(f"num_classes must be a non-negative integer (0 = no classifier), got {num_classes!r}")
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool must be 'avg' (average pooling, the only one these models have), "
                             f"got {global_pool!r}")
        num_classes = as_int(num_classes)
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        if num_classes:
            nn.init.normal_(self.classifier.weight, 0, 0.01)
            nn.init.zeros_(self.classifier.bias)

    def get_classifier(self) -> nn.Module:
        """The classifier: ``Linear(num_features, num_classes)``, or an identity with no classes (timm's method)."""
        return self.classifier

    @property
    def default_cfg(self) -> dict:
        """timm's older name of ``pretrained_cfg`` (the same dict)."""
        return self.pretrained_cfg

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, self.in_chans, self.min_input_size, self.name)
        return self.act1(self.bn1(self.conv_stem(x)))

    @torch.jit.unused
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Training: keep only each block's input for the backward pass and compute the rest again there (timm's
        method; :func:`checkpoint_blocks`): less memory for a second forward pass of the blocks."""
        self.grad_checkpointing = bool(enable)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        if not torch.jit.is_scripting() and self.grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint_blocks(self.blocks, x)
        else:
            x = self.blocks(x)
        if self.head_kind == "conv_bn":
            x = self.act2(self.bn2(self.conv_head(x)))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.head_kind == "pool_conv":
            x = self.act2(self.conv_head(x))
        x = self.flatten(x)
        if pre_logits:
            return x
        x = nn.functional.dropout(x, self.drop_rate, self.training)
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_blocks(stages: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``stages(x)`` with each block under ``torch.utils.checkpoint`` (non-reentrant): the backward pass runs a
    block's forward again from its saved input, with the same random numbers (drop path). The batch norms'
    running statistics are restored after that second pass, so that they take one update per step, not two
    (under ``torch.compile``, which takes no ``context_fn``, the backward graph recomputes values only: the
    statistics are updated once in the forward graph)."""
    compiling = torch.compiler.is_compiling()
    for stage in stages:
        for block in stage:
            contexts = {} if compiling else {"context_fn": partial(_checkpoint_contexts, block)}
            x = checkpoint(block, x, use_reentrant=False, **contexts)
    return x


def _checkpoint_contexts(module: nn.Module) -> tuple:
    """``checkpoint``'s contexts for the first forward pass (none) and for the recomputation."""
    return contextlib.nullcontext(), _running_stats_kept(module)


@contextlib.contextmanager
def _running_stats_kept(module: nn.Module):
    stats = [buffer for norm in module.modules() if isinstance(norm, _BatchNorm)
             for buffer in (norm.running_mean, norm.running_var, norm.num_batches_tracked) if buffer is not None]
    saved = [buffer.clone() for buffer in stats]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(stats, saved):
                buffer.copy_(value)


class FeatureListNet(nn.Module):
    """Backbone form (``create_model(..., features_only=True)``): returns the four deepest feature levels.

    For the ImageNet forms these are the stride-4/8/16/32 maps (for the 32x32 forms, stride 1/2/4/8),
    each taken at the end of the last stage with that stride (timm's ``"bottleneck"`` location).
    Shares the stem and blocks (and their names) with the classifier it was made from.

    Attributes:
        feature_info: per level ``dict(stage, module, channels, num_chs, reduction)`` (``num_chs``, timm's
            name for ``channels``, so that code written for timm's ``feature_info`` reads it).
    """

    __jit_unused_properties__ = ["channels", "reductions"]

    def __init__(self, model: MobileNet, num_levels: int = 4) -> None:
        super().__init__()
        last_stage_of: dict[int, dict] = {}
        for info in model.feature_info:
            last_stage_of[info["reduction"]] = info
        self.feature_info = [last_stage_of[r] for r in sorted(last_stage_of)][-num_levels:]
        self.conv_stem, self.bn1, self.act1 = model.conv_stem, model.bn1, model.act1
        depth = self.feature_info[-1]["stage"] + 1
        self.blocks = nn.Sequential(*list(model.blocks)[:depth])
        self._out_stages = [info["stage"] for info in self.feature_info]
        self.name, self.in_chans, self.min_input_size = model.name, model.in_chans, model.min_input_size
        self.pretrained_cfg = dict(getattr(model, "pretrained_cfg", {}))
        self.pretrained_cfg.pop("classifier", None)  # no head here (timm's pretrained_cfg_for_features does the same)

    @property
    def channels(self) -> list[int]:
        return [info["channels"] for info in self.feature_info]

    @property
    def reductions(self) -> list[int]:
        return [info["reduction"] for info in self.feature_info]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_image_input(x, self.in_chans, self.min_input_size, self.name)
        x = self.act1(self.bn1(self.conv_stem(x)))
        features = []
        for s, stage in enumerate(self.blocks):
            x = stage(x)
            if s in self._out_stages:
                features.append(x)
        return features


def init_weights(model: nn.Module) -> None:
    """He init (fan-out) for convs, BN to identity, as torchvision initialises MobileNetV2 / V3.

    The classifier gets torchvision's ``normal(0, 0.01)`` in :meth:`MobileNet.reset_classifier`.
    MobileNetV3's head here is timm's 1x1 ``conv_head`` (torchvision: a ``Linear``, ``normal(0, 0.01)``),
    so it gets the conv rule, ``std = sqrt(2 / out_channels)``, which is also what timm gives it.
    PyTorch's fan-out of a depthwise ``(C, 1, k, k)`` weight is ``C * k^2``; timm's EfficientNet-family
    init (``_init_weight_goog``) divides it by the groups (``k^2``), so timm's depthwise kernels start
    ``sqrt(C)`` times larger. A BN follows every such conv here, so the forward pass does not depend on it.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)



IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# TF-Slim's Inception preprocessing, to [-1, 1]: MobileNetV1's own and timm's mobilenetv1_*.ra4 weights
INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def model_cfg(input_size: int = 224, *, top1: float | None = None, macs: float | None = None,
              params: float | None = None, source: str = "", dataset: str = "imagenet",
              mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD, num_classes: int = 1000) -> dict:
    """A ``pretrained_cfg`` dict: default resolution, preprocessing, classes and the paper's published figures.

    ``num_classes`` is the default of :func:`build_model` (timm's ``pretrained_cfg`` key):
    1000 for ImageNet, 10 for the CIFAR-10 forms. ``first_conv`` / ``classifier`` name the module that
    takes the image and the classifier head, as timm's keys do (timm's ``adapt_input_conv`` and head
    resets read them). ``crop_pct`` / ``interpolation`` are how a test image is resized before its centre
    crop, as timm's keys say it (``mobileconv eval`` / ``predict`` use them for a checkpoint without
    metadata): for the ImageNet forms timm's values for these families' weights, 0.875 (256 px resized,
    224 cropped) and bicubic; the CIFAR-10 forms take their 32x32 images whole (1.0, bilinear).

    ``paper_top1`` is top-1 accuracy (%) on ``paper_dataset``, ``paper_macs`` multiply-adds,
    ``paper_params`` parameters, all as the cited paper table reports them (``None`` where it does not).
    """
    imagenet = dataset == "imagenet"
    return dict(input_size=(3, input_size, input_size), mean=mean, std=std, num_classes=num_classes,
                crop_pct=0.875 if imagenet else 1.0, interpolation="bicubic" if imagenet else "bilinear",
                first_conv="conv_stem", classifier="classifier", paper_top1=top1, paper_macs=macs,
                paper_params=params, paper_dataset=dataset, paper=source)


def build_model(name: str, arch: ArchSpec, cfg: dict, *, num_classes: int | None = None, in_chans: int = 3,
                width_mult: float | None = None, drop_rate: float | None = None, drop_path_rate: float = 0.0,
                **unknown) -> MobileNet:
    """Build ``arch`` as a :class:`MobileNet` and attach its ``pretrained_cfg``.

    ``num_classes`` defaults to ``cfg["num_classes"]`` (1000, or 10 for the CIFAR-10 forms).
    ``width_mult`` overrides the table's multiplier (the paper figures in ``pretrained_cfg`` are then
    dropped, since they no longer describe the model). Unknown options raise a ValueError.
    """
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {sorted(unknown)}; accepted options are num_classes, in_chans, "
                         f"pretrained, features_only, width_mult, drop_rate, drop_path_rate")
    cfg = dict(cfg)
    if width_mult is not None and (isinstance(width_mult, bool) or not isinstance(width_mult, (int, float))
                                   or not 0 < width_mult < math.inf):
        raise ValueError(f"width_mult must be a positive finite number, got {width_mult!r}")
    if width_mult is not None and width_mult != arch.width_mult:
        arch = dataclasses.replace(arch, width_mult=float(width_mult))
        cfg.update(paper_top1=None, paper_macs=None, paper_params=None)
    num_classes = cfg.get("num_classes", 1000) if num_classes is None else num_classes
    model = MobileNet(arch, num_classes, in_chans, drop_rate=drop_rate, drop_path_rate=drop_path_rate, name=name)
    cfg["input_size"] = (in_chans, *cfg["input_size"][1:])
    cfg["min_input_size"] = arch.min_input_size
    model.pretrained_cfg = cfg
    return model
