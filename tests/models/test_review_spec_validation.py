"""Architecture specs refuse values that used to build a different network without a word.

``make_divisible`` turns any width below 4 into 8 channels, so a zero / negative expansion or
width gave 8-channel layers, a negative SE ratio a 1-channel SE, and an unknown
``SESpec.reduce_from`` meant ``"in"``; an empty stage or ``repeats=0`` crashed with an IndexError.
"""
import dataclasses

import pytest

import mobileconv
from mobileconv.models import ArchSpec, BlockSpec, HeadSpec, MobileNet, SESpec

ROW = dict(kind="ir", out_channels=24, kernel_size=3, stride=1, exp_ratio=6.0)


@pytest.mark.parametrize("field, value", [
    ("out_channels", 0), ("out_channels", -8), ("out_channels", 24.0),
    ("exp_ratio", 0), ("exp_ratio", -6), ("exp_ratio", float("nan")), ("exp_ratio", float("inf")),
    ("se_ratio", -0.25), ("se_ratio", float("nan")),
    ("repeats", 0), ("exp_groups", 0), ("pwl_groups", -1),
    ("stride", 3), ("kernel_size", 4), ("kernel_size", ()),
])
def test_block_spec_refuses_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"BlockSpec.{field}"):
        BlockSpec(**{**ROW, field: value})


def test_se_spec_refuses_an_unknown_reduction_base():
    with pytest.raises(ValueError, match="reduce_from must be one of"):
        SESpec(reduce_from="exp")  # timm calls the expanded width "exp"; it used to mean "in" here


@pytest.mark.parametrize("change, match", [
    (dict(stages=()), "ArchSpec.stages"),
    (dict(stages=((BlockSpec("ds", 16),), ())), "ArchSpec.stages"),
    (dict(stem_channels=0), "ArchSpec.stem_channels"),
    (dict(width_mult=0.0), "ArchSpec.width_mult"),
    (dict(width_mult=-1.0), "ArchSpec.width_mult"),
])
def test_arch_spec_refuses_bad_values(change, match):
    arch = ArchSpec(((BlockSpec("ds", 16),), (BlockSpec(**ROW),)), 16, HeadSpec("conv_bn", 64))
    assert MobileNet(arch, num_classes=10).num_features == 64  # the valid spec builds
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(arch, **change)


def test_registered_tables_still_build():
    # every registered family goes through the checks
    assert mobileconv.create_model("mixnet_s", num_classes=10).num_classes == 10
    assert mobileconv.create_model("mobilenetv3_small_075", num_classes=10).num_classes == 10
