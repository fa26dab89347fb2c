"""MobileNetV3-Large / -Small (Howard et al., "Searching for MobileNetV3", arXiv 1905.02244).

| name | params | MACs (224) | paper: top-1 / MACs / params (Table 3) |
| --- | --- | --- | --- |
| mobilenetv3_large_100 | 5,483,032 | 216.6M | 75.2% / 219M / 5.4M |
| mobilenetv3_large_075 | 3,993,528 | 154.6M | 73.3% / 155M / 4.0M |
| mobilenetv3_small_100 | 2,542,856 | 56.5M | 67.4% / 56M / 2.5M |
| mobilenetv3_small_075 | 2,041,872 | 43.4M | 65.4% / 44M / 2.4M |
| mobilenetv3_small_100_cifar | 1,528,106 (10 classes) | 17.5M (32x32) | CIFAR-10 92.97% (XSepConv paper) |

Under ``width_mult`` every block width is ``make_divisible(c * m, 8)``, the stem too from
``m = 0.75`` up (below that it stays 16: timm's ``fix_stem=channel_multiplier < 0.75``), and the
head keeps 1280 / 1024 (torchvision would scale both).

Params / MACs are this implementation's (timm-identical) counts: MACs = conv + linear
multiply-adds from ``torch.utils.flop_counter`` / 2. Module names and shapes equal timm's
``mobilenetv3_*`` models, and the parameter order equals torchvision's ``mobilenet_v3_*``.
"""
from __future__ import annotations

import dataclasses

from ._builder import (CIFAR10_MEAN, CIFAR10_STD, ArchSpec, BlockSpec, HeadSpec, SESpec, build_model, cifar_form,
                       model_cfg)
from ._registry import register_model

# MobileNetV3-Large, paper Table 1. One row per layer:
# (kernel, expanded width, out width, SE, activation, stride); expanded width None = plain 1x1 conv.
LARGE = (
    # stage 0, 112x112 in: depthwise-separable (expanded width == input width)
    ((3, 16, 16, False, "relu", 1),),
    # stage 1, 112x112 in
    ((3, 64, 24, False, "relu", 2), (3, 72, 24, False, "relu", 1)),
    # stage 2, 56x56 in
    ((5, 72, 40, True, "relu", 2), (5, 120, 40, True, "relu", 1), (5, 120, 40, True, "relu", 1)),
    # stage 3, 28x28 in
    ((3, 240, 80, False, "hswish", 2), (3, 200, 80, False, "hswish", 1), (3, 184, 80, False, "hswish", 1),
     (3, 184, 80, False, "hswish", 1)),
    # stage 4, 14x14 in
    ((3, 480, 112, True, "hswish", 1), (3, 672, 112, True, "hswish", 1)),
    # stage 5, 14x14 in
    ((5, 672, 160, True, "hswish", 2), (5, 960, 160, True, "hswish", 1), (5, 960, 160, True, "hswish", 1)),
    # stage 6, 7x7 in: 1x1 conv -> BN -> h-swish
    ((1, None, 960, False, "hswish", 1),),
)

# MobileNetV3-Small, paper Table 2; same columns.
SMALL = (
    # stage 0, 112x112 in: depthwise-separable with SE
    ((3, 16, 16, True, "relu", 2),),
    # stage 1, 56x56 in
    ((3, 72, 24, False, "relu", 2), (3, 88, 24, False, "relu", 1)),
    # stage 2, 28x28 in
    ((5, 96, 40, True, "hswish", 2), (5, 240, 40, True, "hswish", 1), (5, 240, 40, True, "hswish", 1)),
    # stage 3, 14x14 in
    ((5, 120, 48, True, "hswish", 1), (5, 144, 48, True, "hswish", 1)),
    # stage 4, 14x14 in
    ((5, 288, 96, True, "hswish", 2), (5, 576, 96, True, "hswish", 1), (5, 576, 96, True, "hswish", 1)),
    # stage 5, 7x7 in: 1x1 conv -> BN -> h-swish
    ((1, None, 576, False, "hswish", 1),),
)

STEM_CHANNELS = 16
SE_RATIO = 0.25  # of the expanded width, rounded to a multiple of 8 (paper Sec. 5.3)


def decode_table(table, stem_channels: int = STEM_CHANNELS) -> tuple[tuple[BlockSpec, ...], ...]:
    """Turn the paper's rows into :class:`BlockSpec` stages.

    The expansion is stored as a ratio ``exp / in`` (of the unscaled widths), so that under a
    width multiplier the expanded width is ``make_divisible(in' * exp / in)`` as in timm.
    """
    stages, in_ch = [], stem_channels
    for stage in table:
        rows = []
        for k, exp, out, se, act, s in stage:
            se_ratio = SE_RATIO if se else 0.0
            if exp is None:
                rows.append(BlockSpec("cn", out, k, s, act=act))
            elif exp == in_ch:
                rows.append(BlockSpec("ds", out, k, s, se_ratio=se_ratio, act=act))
            else:
                rows.append(BlockSpec("ir", out, k, s, exp_ratio=exp / in_ch, se_ratio=se_ratio, act=act))
            in_ch = out
        stages.append(tuple(rows))
    return tuple(stages)


MBV3_SE = SESpec(reduce_from="mid", act="relu", gate="hard_sigmoid")
# timm's MobileNetV3 keeps the 16-channel stem below width 0.75 (``fix_stem=channel_multiplier < 0.75``)
# and the 1280 / 1024 head at every width.
FIX_STEM_BELOW = 0.75
LARGE_ARCH = ArchSpec(decode_table(LARGE), STEM_CHANNELS, HeadSpec("pool_conv", 1280, "hswish"), stem_act="hswish",
                      se=MBV3_SE, fix_stem_below=FIX_STEM_BELOW, drop_rate=0.2)
SMALL_ARCH = ArchSpec(decode_table(SMALL), STEM_CHANNELS, HeadSpec("pool_conv", 1024, "hswish"), stem_act="hswish",
                      se=MBV3_SE, fix_stem_below=FIX_STEM_BELOW, drop_rate=0.2)
PAPER = "MobileNetV3, Table 3"


@register_model
def mobilenetv3_large_100(**kwargs):
    """MobileNetV3-Large 1.0 (paper Table 1): 75.2% top-1, 219M MACs, 5.4M params (Table 3)."""
    cfg = model_cfg(224, top1=75.2, macs=219e6, params=5.4e6, source=PAPER)
    return build_model("mobilenetv3_large_100", LARGE_ARCH, cfg, **kwargs)


@register_model
def mobilenetv3_large_075(**kwargs):
    """MobileNetV3-Large 0.75 (every width, stem included, x0.75 rounded to 8; head 1280 kept): 73.3%, 155M, 4.0M."""
    cfg = model_cfg(224, top1=73.3, macs=155e6, params=4.0e6, source=PAPER)
    return build_model("mobilenetv3_large_075", dataclasses.replace(LARGE_ARCH, width_mult=0.75), cfg, **kwargs)


@register_model
def mobilenetv3_small_100(**kwargs):
    """MobileNetV3-Small 1.0 (paper Table 2): 67.4% top-1, 56M MACs, 2.5M params (Table 3)."""
    cfg = model_cfg(224, top1=67.4, macs=56e6, params=2.5e6, source=PAPER)
    return build_model("mobilenetv3_small_100", SMALL_ARCH, cfg, **kwargs)


@register_model
def mobilenetv3_small_075(**kwargs):
    """MobileNetV3-Small 0.75 (widths x0.75 rounded to 8; head 1024 kept): 65.4% top-1, 44M MACs, 2.4M params."""
    cfg = model_cfg(224, top1=65.4, macs=44e6, params=2.4e6, source=PAPER)
    return build_model("mobilenetv3_small_075", dataclasses.replace(SMALL_ARCH, width_mult=0.75), cfg, **kwargs)


@register_model
def mobilenetv3_small_100_cifar(**kwargs):
    """MobileNetV3-Small for 32x32 inputs (stem and first block at stride 1; XSepConv paper, Sec. 4.1).

    The XSepConv authors' baseline: CIFAR-10 92.97%, 17.51M MACs, 1.52M params (10 classes);
    ``paper_top1`` holds that CIFAR-10 accuracy (``paper_dataset="cifar10"``).
    """
    cfg = model_cfg(32, top1=92.97, macs=17.51e6, params=1.52e6, source="XSepConv, Sec. 4.1 (CIFAR-10)",
                    dataset="cifar10", mean=CIFAR10_MEAN, std=CIFAR10_STD, num_classes=10)
    return build_model("mobilenetv3_small_100_cifar", cifar_form(SMALL_ARCH), cfg, **kwargs)
