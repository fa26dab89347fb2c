"""summarize() on every registered model: params, MACs (FlopCounterMode oracle) and memory."""
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import mobileconv
from mobileconv.layers import MixConv2d, XSepConv2d, set_layer_impl
from mobileconv.profile import summarize

from .oracles import new_output_bytes

SPEC_224 = {  # SPEC.md, "Models": params (reference implementations) and flop-counter MACs at 224
    "mobilenetv1_100": (4_231_976, 568.7e6), "mobilenetv2_100": (3_504_872, 300.8e6),
    "mobilenetv3_large_100": (5_483_032, 216.6e6), "mobilenetv3_small_100": (2_542_856, 56.5e6),
    "mixnet_s": (4_134_606, 239.2e6), "mixnet_m": (5_014_382, 339.2e6), "mixnet_l": (7_329_252, 555.3e6),
}


@pytest.mark.parametrize("name", mobileconv.list_models())
def test_counts_match_the_parameter_count_and_flop_counter(name):
    model = mobileconv.create_model(name)  # one instance for every size
    set_layer_impl(model, "reference")  # the oracle counts the papers' formulation
    default = model.pretrained_cfg["input_size"][-1]
    for size in sorted({224, 160, default}, reverse=True):
        # FlopCounterMode watches the same forward pass that summarize() counts (one pass, two counters)
        with FlopCounterMode(display=False) as counter:
            s = summarize(model, input_size=(3, size, size))
        oracle = counter.get_total_flops() // 2
        report = json.loads(json.dumps(s.to_dict()))  # what `mobileconv summary --format json` prints
        assert report["params"] == sum(p.numel() for p in model.parameters()), size
        assert abs(report["macs"] - oracle) <= 1e-3 * oracle, (size, report["macs"], oracle)
        assert sum(layer["macs"] for layer in report["layers"]) == report["macs"]
        assert sum(layer["params"] for layer in report["layers"]) == report["params"]


@pytest.mark.parametrize("name", sorted(SPEC_224))
def test_spec_figures(name):
    params, macs = SPEC_224[name]
    s = summarize(mobileconv.create_model(name), input_size=(3, 224, 224))
    assert s.params == params
    assert abs(s.macs - macs) <= 0.05e6  # SPEC rounds to 0.1M


@pytest.mark.parametrize("name, layer_types", [
    ("mobilenetv3_large_100", ()),
    ("mixnet_s", ()),  # reference MixConv / grouped conv: the per-group outputs add up to the layer's
    ("xsep_mobilenetv3_small_100", (XSepConv2d,)),
])
def test_activation_memory_matches_measured_layer_outputs(name, layer_types):
    model = mobileconv.create_model(name)
    s = summarize(model, input_size=(3, 96, 96), batch_size=2)
    set_layer_impl(model, "reference")
    measured = new_output_bytes(model, torch.zeros(2, 3, 96, 96), layer_types)
    assert s.activation_bytes == measured
    assert s.activation_bytes == sum(r.activation_bytes for r in s.layers)


def test_mixconv_rows_show_kernels_and_splits():
    model = mobileconv.create_model("mixnet_s")
    rows = {r.name: r for r in summarize(model, input_size=(3, 64, 64)).layers}
    for name, module in model.named_modules():
        if isinstance(module, MixConv2d):
            expected = (f"MixConv2d k={','.join(map(str, module.kernel_sizes))} "
                        f"splits={','.join(str(c.weight.shape[0]) for c in module)}")
            assert rows[name].type.startswith(expected)
            assert rows[name].params == sum(c.weight.numel() for c in module)
