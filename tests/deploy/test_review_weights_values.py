"""Review of checkpoint loading and ``mobileconv convert``: tensor values, key prefixes, destinations.

Oracles: torchvision's own logits for the reference input (``../shared/fixtures/reference``), the
model's parameters, buffers and BatchNorm eps before a failed load, and the bytes / file types
on disk before a failed or refused conversion.
"""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import mobileconv
from mobileconv.cli import main
from mobileconv.deploy import weights
from mobileconv.deploy.weights import load_pretrained

TV_STEM, TV_MODEL = "torchvision_mobilenet_v3_small", "mobilenetv3_small_100"


class TinyNet(nn.Module):  # timm's top-level names: loads as a "timm" checkpoint
    def __init__(self) -> None:
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 4, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.classifier = nn.Linear(4, 5)


def snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[float], list[torch.dtype]]:
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [m.eps for m in model.modules() if isinstance(m, nn.BatchNorm2d)],
            [p.dtype for p in model.parameters()])


def assert_unchanged(model: nn.Module, before) -> None:
    state, eps, dtypes = snapshot(model)
    assert state.keys() == before[0].keys()
    for key in state:  # equal_nan: a NaN the model already held is not a change
        assert state[key].dtype == before[0][key].dtype and torch.equal(state[key].isnan(), before[0][key].isnan()), key
        assert torch.equal(state[key].nan_to_num(), before[0][key].nan_to_num()), f"a failed load changed {key}"
    assert (eps, dtypes) == (before[1], before[2])


def tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(v.shape, generator=g) + 0.5 if v.is_floating_point() else v + 3
            for k, v in TinyNet().state_dict().items()}


def reference(reference_dir):
    io = load_file(str(reference_dir / f"{TV_STEM}.io.safetensors"))
    return load_file(str(reference_dir / f"{TV_STEM}.safetensors")), io["x"], io["logits"]


def logits_error(model: nn.Module, x: torch.Tensor, expected: torch.Tensor) -> float:
    with torch.no_grad():  # conftest: 1 intra-op thread, the order torchvision's reference was computed in
        return (model.eval()(x) - expected).abs().max().item()


# ---- values a model must not take -----------------------------------------------------------------

def _nan(state):
    state["bn1.running_var"][1] = float("nan")


def _inf(state):
    state["conv_stem.weight"][0, 0, 0, 0] = float("-inf")


def _negative_var(state):
    state["bn1.running_var"][1] = -0.5  # eval-mode BN: sqrt(-0.5 + eps) is NaN


def _int_weight(state):
    state["conv_stem.weight"] = (state["conv_stem.weight"] * 100).to(torch.int8)  # quantised-looking weights


def _bool(state):
    state["classifier.bias"] = state["classifier.bias"] > 1


def _complex(state):
    state["classifier.weight"] = torch.complex(state["classifier.weight"], state["classifier.weight"])


def _sparse(state):
    state["classifier.weight"] = state["classifier.weight"].to_sparse()


def _meta(state):
    state["conv_stem.weight"] = torch.empty(state["conv_stem.weight"].shape, device="meta")


@pytest.mark.parametrize("corrupt, expected", [
    (_nan, "non-finite keys (1): bn1.running_var"),
    (_inf, "non-finite keys (1): conv_stem.weight"),
    (_negative_var, "negative running_var keys (1): bn1.running_var"),
    (_int_weight, "dtype mismatch keys (1): conv_stem.weight: checkpoint torch.int8 vs model torch.float32"),
    (_bool, "dtype mismatch keys (1): classifier.bias: checkpoint torch.bool vs model torch.float32"),
    (_complex, "dtype mismatch keys (1): classifier.weight: checkpoint torch.complex64 vs model torch.float32"),
    (_sparse, "unusable keys (1): classifier.weight: a torch.sparse_coo tensor"),
    (_meta, "unusable keys (1): conv_stem.weight: a tensor on the meta device"),
], ids=["nan", "inf", "negative_var", "int8", "bool", "complex", "sparse", "meta"])
def test_tensors_the_model_cannot_take_are_refused_and_change_nothing(tmp_path, corrupt, expected):
    """These used to be cast silently (NaN, int8, bool, complex) or to fail inside ``nn.Module.load_state_dict``
    with a RuntimeError after copying the tensors before them (sparse, meta): a half-loaded model."""
    state = tiny_state()
    corrupt(state)
    path = tmp_path / "w.pth"
    torch.save(state, path)
    torch.manual_seed(1)
    model = TinyNet()
    model.bn1.eps = 1e-3
    before = snapshot(model)
    with pytest.raises(ValueError) as info:
        load_pretrained(model, path)
    assert str(path) in str(info.value) and expected in str(info.value), str(info.value)
    assert "the model was not changed" in str(info.value)
    assert_unchanged(model, before)


def test_upcast_and_float_counters_still_load(tmp_path):
    """float64 / bfloat16 weights take the model's dtype; a ``{k: v.float()}`` counter is accepted."""
    state = tiny_state()
    state["conv_stem.weight"] = state["conv_stem.weight"].double()
    state["classifier.weight"] = state["classifier.weight"].bfloat16()
    state["bn1.num_batches_tracked"] = torch.tensor(7.0)
    path = tmp_path / "w.pth"
    torch.save(state, path)
    model = TinyNet()
    load_pretrained(model, path)
    assert model.conv_stem.weight.dtype == torch.float32
    assert torch.equal(model.conv_stem.weight, state["conv_stem.weight"].float())
    assert torch.equal(model.classifier.weight, state["classifier.weight"].float())
    assert model.bn1.num_batches_tracked.dtype == torch.int64 and model.bn1.num_batches_tracked.item() == 7


def test_value_that_overflows_a_half_model_is_refused(tmp_path):
    state = tiny_state()
    state["classifier.weight"][0, 0] = 1e6  # finite in float32, inf in float16 (max 65504)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    model = TinyNet().half()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"non-finite keys \(1\): classifier.weight: too large for torch.float16"):
        load_pretrained(model, path)
    assert_unchanged(model, before)


def test_reference_checkpoint_with_a_nan_is_refused_by_convert_in_one_line(reference_dir, tmp_path, capsys):
    state, _, _ = reference(reference_dir)
    key = "features.3.block.1.1.running_var"  # a BN of the third block: mapped to blocks.1.0.bn2
    state[key][0] = float("nan")
    src, dst = tmp_path / "diverged.safetensors", tmp_path / "out.safetensors"
    save_file(state, str(src))
    dst.write_bytes(b"the previous conversion")
    capsys.readouterr()
    assert main(["convert", str(src), str(dst), "--model", TV_MODEL]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"mobileconv convert: error: {src}"), err
    assert "NaN or infinite" in err and "non-finite keys (1)" in err, err
    assert dst.read_bytes() == b"the previous conversion"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diverged.safetensors", "out.safetensors"]


# ---- wrappers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module."])
def test_stacked_wrapper_prefixes_are_removed(reference_dir, tmp_path, prefix):
    """``torch.compile(DDP(model))`` saves ``_orig_mod.module.*``; that order used to be left as ``module.*``."""
    state, x, expected = reference(reference_dir)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 3, "state_dict": {prefix + k: v for k, v in state.items()}}, path)
    model = mobileconv.create_model(TV_MODEL, pretrained=path)
    assert logits_error(model, x, expected) < 1e-4


# ---- destinations of convert ----------------------------------------------------------------------

def test_convert_through_a_symlink_replaces_its_target_and_keeps_the_link(reference_dir, tmp_path, capsys):
    _, x, expected = reference(reference_dir)
    target = tmp_path / "v1.safetensors"
    target.write_bytes(b"old weights")
    link = tmp_path / "latest.safetensors"
    link.symlink_to(target.name)
    assert main(["convert", str(reference_dir / f"{TV_STEM}.safetensors"), str(link), "--model", TV_MODEL]) == 0
    assert link.is_symlink() and os.readlink(link) == target.name
    assert logits_error(mobileconv.create_model(TV_MODEL, pretrained=target), x, expected) < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.safetensors", "v1.safetensors"]


def test_convert_to_a_fifo_is_refused_before_reading(reference_dir, tmp_path, capsys, monkeypatch):
    """``os.replace`` used to put the file in the FIFO's place (as root, ``/dev/stdout`` the same way)."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    monkeypatch.setattr(weights, "read_checkpoint", lambda *a, **k: pytest.fail("SRC was read"))
    capsys.readouterr()
    assert main(["convert", str(reference_dir / f"{TV_STEM}.safetensors"), str(fifo), "--model", TV_MODEL]) == 2
    err = capsys.readouterr().err
    assert err == f"mobileconv convert: error: cannot write {fifo}: it exists and is not a regular file " \
                  "(a device, FIFO or socket)\n", err
    assert fifo.is_fifo() and [p.name for p in tmp_path.iterdir()] == ["pipe"]


def test_failed_convert_leaves_an_existing_destination_byte_for_byte(reference_dir, tmp_path, capsys):
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"previous")
    os.chmod(dst, 0o640)
    assert main(["convert", str(reference_dir / f"{TV_STEM}.safetensors"), str(dst), "--model", "mixnet_s"]) == 2
    assert dst.read_bytes() == b"previous" and (dst.stat().st_mode & 0o777) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]
