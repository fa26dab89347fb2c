"""Audit of the zoo against the reference implementations' source text (timm 1.0, TF-Slim / Keras).

The oracles are facts read from those sources, never this package's own tables:

* timm ``mobilenetv3.py``, ``_gen_mobilenet_v3``: ``stem_size=16, fix_stem=channel_multiplier < 0.75``
  and ``num_features`` 1280 / 1024 at every width; ``efficientnet.py``: ``_gen_mobilenet_v2``
  (``fix_stem=fix_stem_head=False``) and ``_gen_mixnet_s`` (no ``fix_stem``) scale their stems.
* TF-Slim ``mobilenet_v1(dropout_keep_prob=0.999)`` and Keras ``MobileNet(dropout=1e-3)``: the
  released MobileNetV1 drops 0.1% before its classifier.
* timm ``EfficientNetBuilder`` with ``feature_location="bottleneck"``: a feature level is the
  output of the last block before the stride grows, named ``blocks.<stage>``.
* TensorFlow "SAME": ``out = ceil(in / s)``, ``pad = max((out - 1) * s + k - in, 0)``, the
  smaller half before; timm's ``tf_`` models: ``bn_eps=1e-3``.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mobileconv
from mobileconv.layers import MixConv2d
from mobileconv.models import mobilenetv3


def first_block(model: nn.Module) -> nn.Module:
    return model.blocks[0][0]


# --- MobileNetV3 stem under a width multiplier (timm: fix_stem=channel_multiplier < 0.75) ------

@pytest.mark.parametrize("name", ["mobilenetv3_large_100", "mobilenetv3_small_100", "xsep_mobilenetv3_small_100"])
@pytest.mark.parametrize("width", [0.5, 0.35])
def test_mobilenetv3_keeps_its_16_channel_stem_below_width_075(name, width):
    # timm's mobilenetv3_small_050 / _large_050 have a 16-channel stem; this used to give 8.
    model = mobileconv.create_model(name, width_mult=width)
    assert model.conv_stem.out_channels == 16 and model.bn1.num_features == 16
    assert first_block(model).in_channels == 16
    assert model.num_features == (1024 if "small" in name else 1280)  # the head stays as well


@pytest.mark.parametrize("name", ["mobilenetv3_large_100", "mobilenetv3_small_100"])
def test_mobilenetv3_stem_still_scales_from_width_075(name):
    # channel_multiplier >= 0.75: round_channels(16 * m) -- 16 at 0.75 (12 rounds up), 24 at 1.25 / 1.5
    for width, stem in ((0.75, 16), (1.25, 24), (1.5, 24)):
        assert mobileconv.create_model(name, width_mult=width).conv_stem.out_channels == stem, width


def test_fix_stem_below_is_checked():
    with pytest.raises(ValueError, match="ArchSpec.fix_stem_below"):
        dataclasses.replace(mobilenetv3.SMALL_ARCH, fix_stem_below=-0.75)


@pytest.mark.parametrize("name, width, stem", [
    ("mobilenetv2_100", 0.5, 16), ("mobilenetv2_100", 0.35, 16),  # make_divisible(32 * m)
    ("mixnet_s", 0.5, 8), ("mobilenetv1_100", 0.25, 8),  # make_divisible(16 * 0.5), (32 * 0.25)
])
def test_other_families_scale_their_stems_at_every_width(name, width, stem):
    assert mobileconv.create_model(name, width_mult=width).conv_stem.out_channels == stem


# --- MobileNetV1 classifier dropout (TF-Slim / Keras release) --------------------------------

@pytest.mark.parametrize("name", ["mobilenetv1_100", "mobilenetv1_075", "mobilenetv1_050", "mobilenetv1_025"])
def test_mobilenetv1_dropout_is_the_released_models(name):
    assert mobileconv.create_model(name).drop_rate == pytest.approx(1e-3)  # was 0.2 (MobileNetV2's)
    assert mobileconv.create_model(name, drop_rate=0.2).drop_rate == 0.2  # still an option


# --- features_only: timm's "bottleneck" levels ---------------------------------------------------

# Last four levels of timm's features_only model: (module, channels, reduction).
TIMM_FEATURES = {
    "mobilenetv1_100": [("blocks.1", 128, 4), ("blocks.2", 256, 8), ("blocks.3", 512, 16), ("blocks.4", 1024, 32)],
    "mobilenetv2_100": [("blocks.1", 24, 4), ("blocks.2", 32, 8), ("blocks.4", 96, 16), ("blocks.6", 320, 32)],
    "mobilenetv3_large_100": [("blocks.1", 24, 4), ("blocks.2", 40, 8), ("blocks.4", 112, 16),
                              ("blocks.6", 960, 32)],
    "mobilenetv3_small_100": [("blocks.0", 16, 4), ("blocks.1", 24, 8), ("blocks.3", 48, 16), ("blocks.5", 576, 32)],
    "mixnet_s": [("blocks.1", 24, 4), ("blocks.2", 40, 8), ("blocks.4", 120, 16), ("blocks.5", 200, 32)],
    "mixnet_m": [("blocks.1", 32, 4), ("blocks.2", 40, 8), ("blocks.4", 120, 16), ("blocks.5", 200, 32)],
    "mixnet_l": [("blocks.1", 40, 4), ("blocks.2", 56, 8), ("blocks.4", 160, 16), ("blocks.5", 264, 32)],
}


@pytest.mark.parametrize("name", sorted(TIMM_FEATURES))
def test_features_only_levels_are_timms(name):
    backbone = mobileconv.create_model(name, features_only=True)
    got = [(info["module"], info["channels"], info["reduction"]) for info in backbone.feature_info]
    assert got == TIMM_FEATURES[name]


# --- tf_ forms: TensorFlow SAME padding and BN eps 1e-3 ------------------------------------------

def tf_same(x: torch.Tensor, weight: torch.Tensor, stride: int, groups: int) -> torch.Tensor:
    pads = []
    for size, k in ((x.shape[-1], weight.shape[-1]), (x.shape[-2], weight.shape[-2])):
        total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.conv2d(F.pad(x, pads), weight, None, stride, groups=groups)


@pytest.mark.parametrize("name", ["tf_mixnet_s", "tf_mixnet_m", "tf_mixnet_l"])
def test_tf_forms_use_bn_eps_1e3_everywhere(name):
    model = mobileconv.create_model(name)
    assert {m.eps for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-3}


@pytest.mark.parametrize("size", [32, 33])
def test_tf_mixnet_stride2_convs_pad_as_tensorflow_same(size):
    torch.manual_seed(0)
    model = mobileconv.create_model("tf_mixnet_s").eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(model.conv_stem(x), tf_same(x, model.conv_stem.weight, 2, 1))
        conv = model.blocks[5][0].conv_dw  # k3.5.7.9.11, stride 2: the widest MixConv
        assert isinstance(conv, MixConv2d) and list(conv.kernel_sizes) == [3, 5, 7, 9, 11]
        x = torch.randn(1, sum(conv.splits), size, size)
        parts, start = [], 0
        for sub, c in zip(conv, conv.splits):
            parts.append(tf_same(x[:, start:start + c], sub.weight, 2, c))
            start += c
        torch.testing.assert_close(conv(x), torch.cat(parts, 1))
