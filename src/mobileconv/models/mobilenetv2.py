"""MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", arXiv 1801.04381).

| name | params | MACs (224) | paper: top-1 / MACs / params (Table 4, Fig. 5) |
| --- | --- | --- | --- |
| mobilenetv2_100 | 3,504,872 | 300.8M | 72.0% / 300M / 3.4M |
| mobilenetv2_140 | 6,108,776 | 582.2M | 74.7% / 585M / 6.9M |

Width multiplier 1.4 scales the stem and every block (rounded to 8) and the head to
``max(1280, make_divisible(1280 * 1.4))`` = 1792 (paper Sec. 6.1).
"""
from __future__ import annotations

import dataclasses

from ._builder import ArchSpec, BlockSpec, HeadSpec, build_model, model_cfg
from ._registry import register_model

# MobileNetV2, paper Table 2 (stem: 3x3 conv, 32, stride 2; head: 1x1 conv to 1280).
# Columns: t expansion, c out width, n repeats, s stride. t = 1 is a depthwise-separable block.
TABLE = (
    # stage 0, 112x112 in
    (1, 16, 1, 1),
    # stage 1, 112x112 in
    (6, 24, 2, 2),
    # stage 2, 56x56 in
    (6, 32, 3, 2),
    # stage 3, 28x28 in
    (6, 64, 4, 2),
    # stage 4, 14x14 in
    (6, 96, 3, 1),
    # stage 5, 14x14 in
    (6, 160, 3, 2),
    # stage 6, 7x7 in
    (6, 320, 1, 1),
)


def decode_table(table) -> tuple[tuple[BlockSpec, ...], ...]:
    """One stage per ``(t, c, n, s)`` row; all activations ReLU6, projections linear."""
    return tuple((BlockSpec("ds" if t == 1 else "ir", c, 3, s, exp_ratio=t, act="relu6", repeats=n),)
                 for t, c, n, s in table)


ARCH = ArchSpec(decode_table(TABLE), 32, HeadSpec("conv_bn", 1280, "relu6", scale_with_width=True),
                stem_act="relu6", drop_rate=0.2)
PAPER = "MobileNetV2, Table 4 / Fig. 5"


@register_model
def mobilenetv2_100(**kwargs):
    """MobileNetV2 1.0 (paper Table 2): 72.0% top-1, 300M MACs, 3.4M params (Table 4)."""
    cfg = model_cfg(224, top1=72.0, macs=300e6, params=3.4e6, source=PAPER)
    return build_model("mobilenetv2_100", ARCH, cfg, **kwargs)


@register_model
def mobilenetv2_140(**kwargs):
    """MobileNetV2 1.4 (head 1792): 74.7% top-1, 585M MACs, 6.9M params (Table 4)."""
    cfg = model_cfg(224, top1=74.7, macs=585e6, params=6.9e6, source=PAPER)
    return build_model("mobilenetv2_140", dataclasses.replace(ARCH, width_mult=1.4), cfg, **kwargs)
