"""Parameter counts and MACs against SPEC.md's reference figures (timm / torchvision counts, flop counter).

MACs = ``FlopCounterMode`` total / 2 at batch 1, with the MixConv / grouped-conv layers in their
``"reference"`` form (one conv per group): the ``"fast"`` form runs every MixConv group with the
largest kernel zero-padded, which computes the same output with more multiply-adds.
"""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import mobileconv
from mobileconv.layers import set_layer_impl

# SPEC.md, "Models (ImageNet form, 224x224, 1000 classes)": params (reference impl.), MACs (flop counter).
SPEC = {
    "mobilenetv1_100": (4_231_976, 568.7e6),
    "mobilenetv2_100": (3_504_872, 300.8e6),
    "mobilenetv3_large_100": (5_483_032, 216.6e6),
    "mobilenetv3_large_075": (3_993_528, 154.6e6),
    "mobilenetv3_small_100": (2_542_856, 56.5e6),
    "mobilenetv3_small_075": (2_041_872, 43.4e6),
    "mixnet_s": (4_134_606, 239.2e6),
    "mixnet_m": (5_014_382, 339.2e6),
    "mixnet_l": (7_329_252, 555.3e6),
}
# SPEC.md: mobilenetv1_100 at 192 / 160 / 128 (resolution multiplier).
SPEC_V1_RESOLUTION = {192: 418.1e6, 160: 290.7e6, 128: 186.4e6}
# SPEC.md: width 0.75 / 0.5 / 0.25 "about 2.6M / 1.3M / 0.5M" params; paper MACs 325M / 149M / 41M.
SPEC_V1_WIDTH = {"mobilenetv1_075": (2.6e6, 325e6), "mobilenetv1_050": (1.3e6, 149e6),
                 "mobilenetv1_025": (0.5e6, 41e6)}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def macs(model, size, in_chans=3):
    set_layer_impl(model.eval(), "reference")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, in_chans, size, size))
    return counter.get_total_flops() / 2


@pytest.mark.parametrize("name", sorted(SPEC))
def test_params_and_macs_match_spec(name):
    params, spec_macs = SPEC[name]
    model = mobileconv.create_model(name)
    assert n_params(model) == params
    assert macs(model, 224) == pytest.approx(spec_macs, rel=0.005)


@pytest.mark.parametrize("name", ["tf_mixnet_s", "tf_mixnet_m", "tf_mixnet_l"])
def test_tf_variants_have_the_same_parameters(name):
    assert n_params(mobileconv.create_model(name)) == SPEC[name[3:]][0]


def test_mobilenetv1_resolution_multiplier():
    model = mobileconv.create_model("mobilenetv1_100")
    for size, spec_macs in SPEC_V1_RESOLUTION.items():
        assert macs(model, size) == pytest.approx(spec_macs, rel=0.005), size


@pytest.mark.parametrize("name", sorted(SPEC_V1_WIDTH))
def test_mobilenetv1_width_multiplier_matches_paper(name):
    params, paper_macs = SPEC_V1_WIDTH[name]
    model = mobileconv.create_model(name)
    assert n_params(model) == pytest.approx(params, abs=0.05e6)  # the paper rounds to 0.1M
    assert macs(model, 224) == pytest.approx(paper_macs, rel=0.01)  # paper rounds to 1M


def test_mobilenetv3_small_cifar_matches_xsepconv_baseline():
    # XSepConv paper / authors' repository: MobileNetV3-Small at 32x32, 10 classes: 17.51M MACs, 1.52M params.
    model = mobileconv.create_model("mobilenetv3_small_100_cifar")  # 10 classes by default
    assert n_params(model) == pytest.approx(1.52e6, abs=0.01e6)
    assert macs(model, 32) == pytest.approx(17.51e6, rel=0.005)


@pytest.mark.parametrize("name", mobileconv.list_models("*_cifar"))
def test_cifar_forms_default_to_ten_classes_and_imagenet_forms_to_1000(name):
    model = mobileconv.create_model(name)
    assert model.num_classes == model.pretrained_cfg["num_classes"] == 10
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert mobileconv.create_model(name, num_classes=100).num_classes == 100
    assert mobileconv.create_model(name.removesuffix("_cifar")).num_classes == 1000


def test_counts_follow_in_chans_and_num_classes():
    base = mobileconv.create_model("mobilenetv3_small_100")
    model = mobileconv.create_model("mobilenetv3_small_100", in_chans=1, num_classes=10)
    stem_k = 3 * 3 * 16  # 3x3 stem conv to 16 channels, per input channel
    head = 1024 + 1  # classifier row: weights + bias
    assert n_params(base) - n_params(model) == 2 * stem_k + 990 * head
