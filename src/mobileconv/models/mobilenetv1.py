"""MobileNetV1 (Howard et al., "MobileNets", arXiv 1704.04861).

| name | params | MACs (224) | paper: top-1 / MACs / params (Table 6) |
| --- | --- | --- | --- |
| mobilenetv1_100 | 4,231,976 | 568.7M | 70.6% / 569M / 4.2M |
| mobilenetv1_075 | 2,585,560 | 325.4M | 68.4% / 325M / 2.6M |
| mobilenetv1_050 | 1,331,592 | 149.5M | 63.7% / 149M / 1.3M |
| mobilenetv1_025 | 470,072 | 41.0M | 50.6% / 41M / 0.5M |

The resolution multiplier rho (Table 7) is just the input size: mobilenetv1_100 at 192 / 160 /
128 costs 418.1M / 290.7M / 186.4M MACs (69.1 / 67.2 / 64.4% in the paper).
Every layer is a depthwise-separable block ``dw 3x3 -> BN -> ReLU6 -> pw 1x1 -> BN -> ReLU6``
without skip (paper Fig. 3, Table 1; the figure draws ReLU, the released TF-Slim model and timm's
``mobilenetv1_100`` use ReLU6); the width multiplier alpha scales every width (Sec. 3.3).
Dropout before the classifier is 0.001, the released model's (TF-Slim ``dropout_keep_prob=0.999``,
Keras ``MobileNet(dropout=1e-3)``); the paper uses little regularisation for small models (Sec. 3.2).
"""
from __future__ import annotations

import dataclasses

from ._builder import INCEPTION_MEAN, INCEPTION_STD, ArchSpec, BlockSpec, HeadSpec, build_model, model_cfg
from ._registry import register_model


def _dw(out_channels: int, stride: int = 1, repeats: int = 1) -> BlockSpec:
    return BlockSpec("ds", out_channels, 3, stride, act="relu6", repeats=repeats, pw_act=True, use_skip=False)


# MobileNetV1, paper Table 1 (stem: 3x3 conv, 32, stride 2). Columns: out width, stride, repeats.
MOBILENETV1 = (
    # stage 0, 112x112 in
    (_dw(64),),
    # stage 1, 112x112 in
    (_dw(128, 2), _dw(128)),
    # stage 2, 56x56 in
    (_dw(256, 2), _dw(256)),
    # stage 3, 28x28 in
    (_dw(512, 2), _dw(512, repeats=5)),
    # stage 4, 14x14 in
    (_dw(1024, 2), _dw(1024)),
)

DROP_RATE = 1e-3  # TF-Slim mobilenet_v1(dropout_keep_prob=0.999), Keras MobileNet(dropout=1e-3)
ARCH = ArchSpec(MOBILENETV1, 32, HeadSpec("pool"), stem_act="relu6", drop_rate=DROP_RATE)
PAPER = "MobileNets, Table 6"


def _build(name: str, width: float, top1: float, macs: float, params: float, kwargs: dict):
    # normalised to [-1, 1], as TF-Slim trained MobileNetV1 and timm its mobilenetv1_*.ra4 weights
    cfg = model_cfg(224, top1=top1, macs=macs, params=params, source=PAPER, mean=INCEPTION_MEAN, std=INCEPTION_STD)
    # the width is the architecture's own, so its paper figures stay (a width_mult override drops them)
    return build_model(name, dataclasses.replace(ARCH, width_mult=width), cfg, **kwargs)


@register_model
def mobilenetv1_100(**kwargs):
    """MobileNetV1 1.0-224 (paper Table 6): 70.6% top-1, 569M MACs, 4.2M params."""
    return _build("mobilenetv1_100", 1.0, 70.6, 569e6, 4.2e6, kwargs)


@register_model
def mobilenetv1_075(**kwargs):
    """MobileNetV1 0.75-224 (paper Table 6): 68.4% top-1, 325M MACs, 2.6M params."""
    return _build("mobilenetv1_075", 0.75, 68.4, 325e6, 2.6e6, kwargs)


@register_model
def mobilenetv1_050(**kwargs):
    """MobileNetV1 0.5-224 (paper Table 6): 63.7% top-1, 149M MACs, 1.3M params."""
    return _build("mobilenetv1_050", 0.5, 63.7, 149e6, 1.3e6, kwargs)


@register_model
def mobilenetv1_025(**kwargs):
    """MobileNetV1 0.25-224 (paper Table 6): 50.6% top-1, 41M MACs, 0.5M params."""
    return _build("mobilenetv1_025", 0.25, 50.6, 41e6, 0.5e6, kwargs)
