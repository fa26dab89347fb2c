"""The zoo's module names and shapes equal the reference libraries' (timm, torchvision) exactly.

The reference files are state_dicts written by timm 1.0.31 / torchvision 0.28 themselves
(``../shared/fixtures/reference``), so they are an independent oracle for the architecture.
"""
import pytest
import torch
from safetensors.torch import load_file

import mobileconv

TIMM = [("mixnet_s", "timm_mixnet_s"), ("mobilenetv3_large_100", "timm_mobilenetv3_large_100")]


def shapes(state_dict):
    return {k: tuple(v.shape) for k, v in state_dict.items()}


@pytest.mark.parametrize("name, ref", TIMM)
def test_timm_state_dict_keys_and_shapes_identical(name, ref, reference_dir):
    expected = shapes(load_file(reference_dir / f"{ref}.safetensors"))
    assert shapes(mobileconv.create_model(name).state_dict()) == expected


@pytest.mark.parametrize("name, ref", TIMM)
def test_timm_weights_reproduce_timm_logits(name, ref, reference_dir):
    # Loading the timm state_dict by key must reproduce timm's own eval-mode output: proves the
    # activations, SE, skips and head are the same functions, not just the same shapes.
    state = load_file(reference_dir / f"{ref}.safetensors")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    io = load_file(reference_dir / f"{ref}.io.safetensors")
    model = mobileconv.create_model(name).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = model(io["x"])
    # float32 rounding differs with thread count; scale the tolerance to the logits' range
    scale = io["logits"].abs().max().item()
    torch.testing.assert_close(out, io["logits"], atol=2e-5 * scale, rtol=0)


def _torchvision_order(key):
    parts = key.split(".")
    return [parts[0] != "features", *(int(p) if p.isdigit() else p for p in parts[1:-1]), parts[-1] != "weight"]


def test_mobilenetv3_small_parameters_follow_torchvision_order(reference_dir):
    # torchvision registers its parameters in the same order; only the head's 1x1 conv is a Linear there.
    ref = load_file(reference_dir / "torchvision_mobilenet_v3_small.safetensors")
    ref_keys = sorted((k for k in ref if k.endswith((".weight", ".bias"))), key=_torchvision_order)
    expected = [tuple(ref[k].shape) for k in ref_keys]
    model = mobileconv.create_model("mobilenetv3_small_100")
    ours = [tuple(p.shape[:2]) if n == "conv_head.weight" else tuple(p.shape) for n, p in model.named_parameters()]
    assert ours == expected
