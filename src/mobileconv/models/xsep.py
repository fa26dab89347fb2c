"""XSepConv MobileNetV3-Small (Chen et al., "XSepConv: Extremely Separated Convolution", arXiv 2002.12046).

| name | params (1000 / 10 classes) | MACs | notes |
| --- | --- | --- | --- |
| xsep_mobilenetv3_small_100 | see ``mobileconv inspect`` | 224x224 | ImageNet form (not in the paper) |
| xsep_mobilenetv3_small_100_cifar | | 32x32 | the paper's CIFAR / SVHN network (Sec. 4.1) |

MobileNetV3-Small with every stride-1 depthwise conv of kernel ``K >= 5`` replaced by an
XSepConv (2x2 dw -> BN -> act -> 1xK dw -> BN -> act -> Kx1 dw -> BN; Fig. 2); stride-2 layers
keep the plain depthwise conv (the paper finds the down-sampling form pays off only for
``K >= 7``). The 2x2 convs' padding directions follow ``xsep_padding_schedule(n)`` over the
network's ``n = 6`` XSep layers in order (improved symmetric padding, Sec. 3.2). Each XSepConv
uses its block's activation; its last BN is the block's own ``bn2`` (the XSepConv2d has
``last_norm=False``: two BNs in a row would leave the first without gradient), so module names
stay those of MobileNetV3 (``blocks.<s>.<i>.conv_dw`` is the XSepConv2d).
"""
from __future__ import annotations

from . import mobilenetv3
from ._builder import CIFAR10_MEAN, CIFAR10_STD, build_model, cifar_form, model_cfg, xsep_form
from ._registry import register_model

XSEP_MIN_KERNEL = 5
ARCH = xsep_form(mobilenetv3.SMALL_ARCH, XSEP_MIN_KERNEL)


@register_model
def xsep_mobilenetv3_small_100(**kwargs):
    """MobileNetV3-Small 1.0 with XSepConv for its six stride-1 5x5 depthwise convs (ImageNet form)."""
    cfg = model_cfg(224, source="XSepConv, Sec. 4 (architecture only; no ImageNet results)")
    return build_model("xsep_mobilenetv3_small_100", ARCH, cfg, **kwargs)


@register_model
def xsep_mobilenetv3_small_100_cifar(**kwargs):
    """The XSepConv paper's CIFAR network: XSep-MobileNetV3-Small, stem and first block at stride 1 (Sec. 4.1)."""
    cfg = model_cfg(32, source="XSepConv, Sec. 4.1 (CIFAR-10)", dataset="cifar10", mean=CIFAR10_MEAN,
                    std=CIFAR10_STD, num_classes=10)
    return build_model("xsep_mobilenetv3_small_100_cifar", cifar_form(ARCH), cfg, **kwargs)
