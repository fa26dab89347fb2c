"""torchvision MobileNetV2 / V3 checkpoints of every published shape load and compute torchvision's output.

Oracle: tests/deploy/_torchvision_oracle.py, a plain-functional transcription of torchvision's
models (validated first against torchvision's own reference logits), evaluated in float64 on
random weights and BN statistics under torchvision's key names.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mobileconv.deploy.weights import load_state_dict
from mobileconv.models import create_model

from ._torchvision_oracle import V3_LARGE, V3_SMALL, forward, make_state_dict, mobilenet_v2

CASES = {  # torchvision model -> (oracle arch, mobileconv name)
    "mobilenet_v3_large": (V3_LARGE, "mobilenetv3_large_100"),
    "mobilenet_v3_small": (V3_SMALL, "mobilenetv3_small_100"),
    "mobilenet_v2": (mobilenet_v2(1.0), "mobilenetv2_100"),
}


def float64(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.double() if v.is_floating_point() else v for k, v in state.items()}


def test_oracle_reproduces_torchvision_reference(reference_dir):
    """The oracle's key layout and forward are torchvision's (checked on torchvision's own file)."""
    stem = "torchvision_mobilenet_v3_small"
    state = float64(load_file(str(reference_dir / f"{stem}.safetensors")))
    expected = make_state_dict(V3_SMALL)
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in expected.items()}
    io = load_file(str(reference_dir / f"{stem}.io.safetensors"))
    with torch.no_grad():
        logits = forward(V3_SMALL, state, io["x"][:1].double())
    assert (logits.float() - io["logits"][:1]).abs().max().item() < 1e-4


@pytest.mark.parametrize("tv_name", sorted(CASES))
def test_torchvision_checkpoint_matches_torchvision_forward(tv_name):
    arch, name = CASES[tv_name]
    state = make_state_dict(arch, num_classes=10, seed=1)
    model = create_model(name, num_classes=10)
    assert load_state_dict(model, state) == "torchvision"
    eps = {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert eps == {arch.bn_eps}  # 1e-3 for V3, 1e-5 for V2, as torchvision trains them
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        logits = model.double().eval()(x)
        expected = forward(arch, float64(state), x)
    scale = expected.abs().max().item()
    assert (logits - expected).abs().max().item() <= 1e-9 * max(1.0, scale)


def test_torchvision_checkpoint_of_other_family_is_refused():
    model = create_model("mobilenetv2_100")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as info:
        load_state_dict(model, make_state_dict(V3_LARGE), name="v3_large.pth")
    msg = str(info.value)
    assert msg.startswith("v3_large.pth (torchvision MobileNetV2/V3 layout) does not fit the model")
    assert "missing keys" in msg and "unexpected keys" in msg and "shape mismatch" in msg
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-5}
