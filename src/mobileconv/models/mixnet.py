"""MixNet-S / -M / -L (Tan & Le, "MixConv: Mixed Depthwise Convolutional Kernels", arXiv 1907.09595).

| name | params | MACs (224) | paper: top-1 / MACs / params (Table 2) |
| --- | --- | --- | --- |
| mixnet_s | 4,134,606 | 239.2M | 75.8% / 256M / 4.1M |
| mixnet_m | 5,014,382 | 339.2M | 77.0% / 360M / 5.0M |
| mixnet_l | 7,329,252 | 555.3M | 78.9% / 565M / 7.3M |

``tf_mixnet_*`` are the same networks with TensorFlow "SAME" padding and BN eps 1e-3, the form
that checkpoints ported from the official TF release need. ``mixnet_s_cifar`` runs the stem and
the first stride-2 block at stride 1 for 32x32 inputs.

The tables are the official TF block strings (``mixnet_builder.py``), grouped into stages as
timm groups them, so module names (``blocks.<stage>.<i>``) match timm's ``mixnet_*``.
"""
from __future__ import annotations

import dataclasses

from ._builder import (CIFAR10_MEAN, CIFAR10_STD, ArchSpec, BlockSpec, HeadSpec, SESpec, build_model, cifar_form,
                       model_cfg, tf_form)
from ._registry import register_model

# Block strings: r repeats, k depthwise kernels (several = MixConv), a / p groups of the expand /
# project 1x1 convs ("1.1" = 2 groups), s stride, e expansion, i / o widths, se ratio of the block
# input width, sw swish (else ReLU).
MIXNET_S = (
    # stage 0, 112x112 in
    ("r1_k3_a1_p1_s11_e1_i16_o16",),
    # stage 1, 112x112 in
    ("r1_k3_a1.1_p1.1_s22_e6_i16_o24", "r1_k3_a1.1_p1.1_s11_e3_i24_o24"),
    # stage 2, 56x56 in
    ("r1_k3.5.7_a1_p1_s22_e6_i24_o40_se0.5_sw", "r3_k3.5_a1.1_p1.1_s11_e6_i40_o40_se0.5_sw"),
    # stage 3, 28x28 in
    ("r1_k3.5.7_a1_p1.1_s22_e6_i40_o80_se0.25_sw", "r2_k3.5_a1_p1.1_s11_e6_i80_o80_se0.25_sw"),
    # stage 4, 14x14 in
    ("r1_k3.5.7_a1.1_p1.1_s11_e6_i80_o120_se0.5_sw", "r2_k3.5.7.9_a1.1_p1.1_s11_e3_i120_o120_se0.5_sw"),
    # stage 5, 14x14 in
    ("r1_k3.5.7.9.11_a1_p1_s22_e6_i120_o200_se0.5_sw", "r2_k3.5.7.9_a1_p1.1_s11_e6_i200_o200_se0.5_sw"),
)

MIXNET_M = (
    # stage 0, 112x112 in
    ("r1_k3_a1_p1_s11_e1_i24_o24",),
    # stage 1, 112x112 in
    ("r1_k3.5.7_a1.1_p1.1_s22_e6_i24_o32", "r1_k3_a1.1_p1.1_s11_e3_i32_o32"),
    # stage 2, 56x56 in
    ("r1_k3.5.7.9_a1_p1_s22_e6_i32_o40_se0.5_sw", "r3_k3.5_a1.1_p1.1_s11_e6_i40_o40_se0.5_sw"),
    # stage 3, 28x28 in
    ("r1_k3.5.7_a1_p1_s22_e6_i40_o80_se0.25_sw", "r3_k3.5.7.9_a1.1_p1.1_s11_e6_i80_o80_se0.25_sw"),
    # stage 4, 14x14 in
    ("r1_k3_a1_p1_s11_e6_i80_o120_se0.5_sw", "r3_k3.5.7.9_a1.1_p1.1_s11_e3_i120_o120_se0.5_sw"),
    # stage 5, 14x14 in
    ("r1_k3.5.7.9_a1_p1_s22_e6_i120_o200_se0.5_sw", "r3_k3.5.7.9_a1_p1.1_s11_e6_i200_o200_se0.5_sw"),
)

HEAD_CHANNELS = 1536


def _groups(value: str) -> int:
    """``"1"`` -> 1 group, ``"1.1"`` -> 2 groups (the TF strings list one ``1`` per group)."""
    return len(value.split("."))


def decode_block(block: str) -> BlockSpec:
    """Decode one official MixNet block string into a :class:`BlockSpec`.

    ``e1`` blocks (the first block of S / M) are depthwise-separable: dw -> BN -> ReLU -> pw -> BN.
    """
    fields: dict[str, str] = {}
    swish = False
    for part in block.split("_"):
        if part == "sw":
            swish = True
            continue
        key = "se" if part.startswith("se") else part[0]
        fields[key] = part[len(key):]
    kernels = tuple(int(k) for k in fields["k"].split("."))
    exp_ratio = float(fields["e"])
    return BlockSpec(
        kind="ds" if exp_ratio == 1 else "ir", out_channels=int(fields["o"]),
        kernel_size=kernels[0] if len(kernels) == 1 else kernels, stride=int(fields["s"][0]),
        exp_ratio=exp_ratio, se_ratio=float(fields.get("se", 0.0)), act="swish" if swish else "relu",
        exp_groups=_groups(fields["a"]), pwl_groups=_groups(fields["p"]), repeats=int(fields["r"]))


def decode_table(table) -> tuple[tuple[BlockSpec, ...], ...]:
    return tuple(tuple(decode_block(s) for s in stage) for stage in table)


MIXNET_SE = SESpec(reduce_from="in", act=None, gate="sigmoid")
S_ARCH = ArchSpec(decode_table(MIXNET_S), 16, HeadSpec("conv_bn", HEAD_CHANNELS, "relu"), se=MIXNET_SE,
                  drop_rate=0.2)
M_ARCH = ArchSpec(decode_table(MIXNET_M), 24, HeadSpec("conv_bn", HEAD_CHANNELS, "relu"), se=MIXNET_SE,
                  drop_rate=0.25)
# MixNet-L = MixNet-M with every block width and the stem x1.3 (rounded to 8); the head stays 1536.
L_ARCH = dataclasses.replace(M_ARCH, width_mult=1.3)
PAPER = "MixConv, Table 2"


def _cfg(top1: float, macs: float, params: float) -> dict:
    return model_cfg(224, top1=top1, macs=macs, params=params, source=PAPER)


@register_model
def mixnet_s(**kwargs):
    """MixNet-S (MixConv paper, Fig. 8a): 75.8% top-1, 256M MACs, 4.1M params (Table 2)."""
    return build_model("mixnet_s", S_ARCH, _cfg(75.8, 256e6, 4.1e6), **kwargs)


@register_model
def mixnet_m(**kwargs):
    """MixNet-M (MixConv paper, Fig. 8b): 77.0% top-1, 360M MACs, 5.0M params (Table 2)."""
    return build_model("mixnet_m", M_ARCH, _cfg(77.0, 360e6, 5.0e6), **kwargs)


@register_model
def mixnet_l(**kwargs):
    """MixNet-L (MixNet-M x1.3 width, MixConv paper Sec. 5): 78.9% top-1, 565M MACs, 7.3M params (Table 2)."""
    return build_model("mixnet_l", L_ARCH, _cfg(78.9, 565e6, 7.3e6), **kwargs)


@register_model
def tf_mixnet_s(**kwargs):
    """MixNet-S with TF "SAME" padding and BN eps 1e-3 (for weights ported from the official TF release)."""
    return build_model("tf_mixnet_s", tf_form(S_ARCH), _cfg(75.8, 256e6, 4.1e6), **kwargs)


@register_model
def tf_mixnet_m(**kwargs):
    """MixNet-M with TF "SAME" padding and BN eps 1e-3 (for weights ported from the official TF release)."""
    return build_model("tf_mixnet_m", tf_form(M_ARCH), _cfg(77.0, 360e6, 5.0e6), **kwargs)


@register_model
def tf_mixnet_l(**kwargs):
    """MixNet-L with TF "SAME" padding and BN eps 1e-3 (for weights ported from the official TF release)."""
    return build_model("tf_mixnet_l", tf_form(L_ARCH), _cfg(78.9, 565e6, 7.3e6), **kwargs)


@register_model
def mixnet_s_cifar(**kwargs):
    """MixNet-S for 32x32 inputs: the stem and the first stride-2 block use stride 1 (total stride 8)."""
    cfg = model_cfg(32, dataset="cifar10", mean=CIFAR10_MEAN, std=CIFAR10_STD, num_classes=10)
    return build_model("mixnet_s_cifar", cifar_form(S_ARCH), cfg, **kwargs)
