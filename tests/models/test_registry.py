"""Registry: names, patterns, duplicate refusal, helpful errors, immutable architecture tables."""
import dataclasses
import re

import pytest
from torch import nn

import mobileconv
from mobileconv.models import _registry, mixnet, mobilenetv3

from ..conftest import REPO

ISSUE_NAMES = {
    "mobilenetv1_100", "mobilenetv1_075", "mobilenetv1_050", "mobilenetv1_025", "mobilenetv2_100", "mobilenetv2_140",
    "mobilenetv3_large_100", "mobilenetv3_large_075", "mobilenetv3_small_100", "mobilenetv3_small_075",
    "mixnet_s", "mixnet_m", "mixnet_l", "tf_mixnet_s", "tf_mixnet_m", "tf_mixnet_l", "xsep_mobilenetv3_small_100",
    "mobilenetv3_small_100_cifar", "xsep_mobilenetv3_small_100_cifar", "mixnet_s_cifar",
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registered_names_are_the_issue_list():
    assert set(mobileconv.list_models()) == ISSUE_NAMES
    assert mobileconv.list_models() == sorted(ISSUE_NAMES)


def test_list_models_pattern():
    assert mobileconv.list_models("mixnet_*") == ["mixnet_l", "mixnet_m", "mixnet_s", "mixnet_s_cifar"]
    assert mobileconv.list_models("*cifar") == sorted(n for n in ISSUE_NAMES if n.endswith("cifar"))
    assert mobileconv.list_models("resnet*") == []


def test_register_refuses_duplicates_and_accepts_new_names():
    def my_net(**kwargs):
        return nn.Conv2d(3, 8, 3)

    with pytest.raises(ValueError, match="'mixnet_s' is already registered"):
        mobileconv.register_model(name="mixnet_s")(my_net)
    mobileconv.register_model(name="_test_tmp_net")(my_net)
    try:
        assert "_test_tmp_net" in mobileconv.list_models()
        with pytest.raises(ValueError, match="already registered"):
            mobileconv.register_model(name="_test_tmp_net")(my_net)
        assert isinstance(mobileconv.create_model("_test_tmp_net"), nn.Conv2d)
    finally:
        _registry._MODELS.pop("_test_tmp_net")


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match=r"unknown model 'mixnet_xs'.*did you mean.*mixnet_s"):
        mobileconv.create_model("mixnet_xs")
    with pytest.raises(ValueError, match=r"unknown model 'mobilenetv3_large'.*mobilenetv3_large_100"):
        mobileconv.create_model("mobilenetv3_large")


def test_unknown_option_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['depth'\].*width_mult"):
        mobileconv.create_model("mobilenetv3_small_100", depth=2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_classes=-1), "num_classes must be a non-negative integer"),
    (dict(in_chans=0), "in_chans must be a positive integer"),
    (dict(width_mult=0), "width_mult must be a positive finite number"),
    (dict(width_mult=float("inf")), "width_mult must be a positive finite number, got inf"),
    (dict(width_mult=float("nan")), "width_mult must be a positive finite number, got nan"),
    (dict(drop_rate=1.5), r"drop_rate must be in \[0, 1\)"),
    (dict(drop_path_rate=1.5), r"drop_path_rate must be in \[0, 1\), got 1.5$"),  # the value given, not a block's
    (dict(drop_path_rate=-0.1), r"drop_path_rate must be in \[0, 1\), got -0.1$"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mobileconv.create_model("mobilenetv1_025", **kwargs)


@pytest.mark.parametrize("width_mult", [True, "1.0"])
def test_width_mult_is_checked_even_when_it_equals_the_tables(width_mult):
    # True == 1.0 == mixnet_s's own multiplier, so a check after the comparison let it through
    with pytest.raises(ValueError, match=f"width_mult must be a positive finite number, got {width_mult!r}"):
        mobileconv.create_model("mixnet_s", width_mult=width_mult)


def test_tables_are_not_mutated_by_building():
    # The seed code rescaled its own class-level table, so a second model came out wrong:
    # build the 1.3x model first, then the 1.0x one from the same table.
    m_before = mixnet.M_ARCH
    large = mobileconv.create_model("mixnet_l")
    medium = mobileconv.create_model("mixnet_m")
    assert n_params(large) == 7_329_252
    assert n_params(medium) == 5_014_382
    assert mixnet.M_ARCH == m_before and mixnet.M_ARCH.width_mult == 1.0
    assert n_params(mobileconv.create_model("mobilenetv3_small_075")) == 2_041_872
    assert n_params(mobileconv.create_model("mobilenetv3_small_100")) == 2_542_856


def test_specs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        mixnet.S_ARCH.width_mult = 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        mobilenetv3.LARGE_ARCH.stages[0][0].out_channels = 8
    assert isinstance(mobilenetv3.LARGE_ARCH.stages, tuple)
    assert all(isinstance(stage, tuple) for stage in mobilenetv3.LARGE_ARCH.stages)


def test_width_mult_override():
    model = mobileconv.create_model("mobilenetv1_100", width_mult=0.75)
    assert n_params(model) == n_params(mobileconv.create_model("mobilenetv1_075"))
    assert model.pretrained_cfg["paper_top1"] is None  # the paper figure no longer describes it
    assert mobileconv.create_model("mobilenetv1_075", width_mult=0.5).pretrained_cfg["paper_top1"] is None
    # the model's own width is no override
    assert mobileconv.create_model("mobilenetv1_075", width_mult=0.75).pretrained_cfg["paper_top1"] == 68.4


def _spec_paper_figures() -> dict[str, tuple[float, float, float]]:
    """``name -> (top-1 %, MACs, params)`` from the models table of ``../shared/SPEC.md`` (the oracle)."""
    spec = REPO.parent / "shared" / "SPEC.md"
    if not spec.is_file():
        pytest.fail(f"{spec} not found (../shared must sit beside the clone)")
    figures = {}
    row = re.compile(r"^\| (\w+) \|.*\| ([\d.]+)% / ([\d.]+)M / ([\d.]+)M \|$")
    for line in spec.read_text().splitlines():
        if m := row.match(line.strip()):
            figures[m[1]] = (float(m[2]), float(m[3]) * 1e6, float(m[4]) * 1e6)
    return figures


def test_paper_figures_match_spec():
    """Every model with published figures carries them, width multiplier variants included."""
    figures = _spec_paper_figures()
    assert {"mobilenetv1_025", "mobilenetv3_large_075", "mobilenetv3_small_075", "mixnet_l"} <= set(figures)
    figures["mobilenetv2_140"] = (74.7, 585e6, 6.9e6)  # not in SPEC.md: MobileNetV2 paper, Table 4
    for name, (top1, macs, params) in figures.items():
        cfg = mobileconv.create_model(name).pretrained_cfg
        assert (cfg["paper_top1"], cfg["paper_macs"], cfg["paper_params"]) == pytest.approx((top1, macs, params)), name


def test_mixnet_block_strings_chain():
    # In the official strings each row's input width is the previous row's output width.
    for table, stem in ((mixnet.MIXNET_S, 16), (mixnet.MIXNET_M, 24)):
        width = stem
        for stage in table:
            for block in stage:
                fields = dict((p[0], p[1:]) for p in block.split("_") if p[0] in "io")
                assert int(fields["i"]) == width, block
                width = int(fields["o"])
