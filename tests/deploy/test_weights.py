"""Checkpoint files: formats, wrappers, conventions, bad input, atomic writes (mobileconv.deploy.weights).

A tiny module with timm's top-level names stands in for a model here; the real models are
covered in tests/models/test_pretrained.py and tests/deploy/test_torchvision_map.py.
"""
from __future__ import annotations

import os
import pickle
import shlex

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from mobileconv.deploy import weights
from mobileconv.deploy.weights import load_pretrained, read_checkpoint, save_weights


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 4, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.classifier = nn.Linear(4, num_classes)


class NotATensor:  # pickled into a .pth: weights_only loading must refuse it
    pass


def random_state(num_classes: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {k: (torch.rand(v.shape, generator=g) + 0.5 if v.is_floating_point() else v + 3)
             for k, v in TinyNet(num_classes).state_dict().items()}
    return state


def same_state(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    current = model.state_dict()
    return current.keys() == state.keys() and all(torch.equal(current[k], state[k]) for k in state)


def assert_untouched(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    assert same_state(model, before), "a failed load changed the model"


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return TinyNet()


def test_safetensors_float16_is_upcast(model, tmp_path):
    state = random_state()
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    path = tmp_path / "w.safetensors"
    save_file(half, str(path))
    assert load_pretrained(model, path) == "timm"
    assert model.conv_stem.weight.dtype == torch.float32
    assert same_state(model, {k: v.float() if v.is_floating_point() else v for k, v in half.items()})


@pytest.mark.parametrize("wrap", [
    lambda s: s,
    lambda s: {"state_dict": s, "epoch": 3, "arch": "tiny"},
    lambda s: {"model": {f"module.{k}": v for k, v in s.items()}, "args": {"lr": 0.1}},
    lambda s: {"state_dict_ema": s},
], ids=["plain", "state_dict", "model+module.", "state_dict_ema"])
def test_pth_wrappers_are_unwrapped(model, tmp_path, wrap):
    state = random_state()
    path = tmp_path / "w.pth"
    torch.save(wrap(state), path)
    load_pretrained(model, path)
    assert same_state(model, state)


def test_format_detected_from_contents_not_suffix(model, tmp_path):
    state = random_state()
    path = tmp_path / "weights.bin"
    save_file(state, str(path))  # safetensors bytes under a .bin name
    load_pretrained(model, path)
    assert same_state(model, state)


@pytest.mark.parametrize("zipped", [True, False])
def test_a_torch_file_under_a_safetensors_name_loads(model, tmp_path, zipped):
    # torch.load picks its safetensors reader from a ".safetensors" name; read_checkpoint decides from the bytes
    state = random_state()
    path = tmp_path / "weights.safetensors"
    torch.save(state, path, _use_new_zipfile_serialization=zipped)
    load_pretrained(model, path)
    assert same_state(model, state)


def test_num_batches_tracked_may_be_absent(model, tmp_path):
    state = random_state()
    path = tmp_path / "w.safetensors"
    save_file({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, str(path))
    kept = model.bn1.num_batches_tracked.clone()
    load_pretrained(model, path)
    assert torch.equal(model.bn1.num_batches_tracked, kept)
    assert torch.equal(model.bn1.running_var, state["bn1.running_var"])


def test_mobileconv_format_round_trip_keeps_bn_eps(tmp_path):
    src = TinyNet()
    src.load_state_dict(random_state())
    src.bn1.eps = 1e-3
    path = save_weights(src, tmp_path / "w.safetensors")
    dst = TinyNet()
    assert dst.bn1.eps == 1e-5
    assert load_pretrained(dst, path) == "mobileconv"
    assert dst.bn1.eps == 1e-3 and same_state(dst, src.state_dict())
    _, metadata = read_checkpoint(path)
    assert metadata["format"] == "mobileconv" and float(metadata["bn_eps"]) == 1e-3


def test_plain_safetensors_of_state_dict_is_the_format(model, tmp_path):
    """What ``safetensors.torch.save_file(model.state_dict(), path)`` writes loads as is."""
    src = TinyNet()
    src.load_state_dict(random_state(seed=3))
    path = tmp_path / "plain.safetensors"
    save_file(src.state_dict(), str(path))
    load_pretrained(model, path)
    assert same_state(model, src.state_dict())


def test_num_classes_mismatch_is_explained_and_drop_head_keeps_head(model, tmp_path):
    state = random_state(num_classes=1000)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"1000 classes but the model has 5.*num_classes=1000.*--num-classes 1000"):
        load_pretrained(model, path)
    assert_untouched(model, before)
    load_pretrained(model, path, drop_head=True)
    assert torch.equal(model.conv_stem.weight, state["conv_stem.weight"])
    assert torch.equal(model.classifier.weight, before["classifier.weight"])


def test_model_without_classifier_ignores_checkpoint_head(tmp_path):
    model = TinyNet()
    model.classifier = nn.Identity()  # num_classes=0
    state = random_state()
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    load_pretrained(model, path)
    assert torch.equal(model.bn1.running_mean, state["bn1.running_mean"])


def test_wrong_keys_and_shapes_are_listed_and_nothing_changes(model, tmp_path):
    state = random_state()
    state["conv_stem.weight"] = torch.zeros(8, 3, 3, 3)
    state["extra.weight"] = torch.zeros(2)
    del state["bn1.bias"]
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as info:
        load_pretrained(model, path)
    msg = str(info.value)
    assert str(path) in msg
    assert "missing keys (1): bn1.bias" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "conv_stem.weight: checkpoint [8, 3, 3, 3] vs model [4, 3, 3, 3]" in msg
    assert_untouched(model, before)


def test_long_key_lists_are_truncated(model, tmp_path):
    state = random_state()
    state.update({f"junk.{i}": torch.zeros(1) for i in range(40)})
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    with pytest.raises(ValueError, match=r"unexpected keys \(40\):.*\.\.\. and 28 more"):
        load_pretrained(model, path)


def test_missing_file_names_the_path(model, tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors") as info:
        load_pretrained(model, path)
    assert info.value.filename == str(path)


@pytest.mark.parametrize("make", ["truncated_safetensors", "truncated_pth", "text", "empty", "directory"])
def test_bad_files_give_clear_errors(model, tmp_path, make):
    state = random_state()
    if make.startswith("truncated"):
        path = tmp_path / ("w.safetensors" if make == "truncated_safetensors" else "w.pth")
        save_file(state, str(path)) if path.suffix == ".safetensors" else torch.save(state, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
    elif make == "text":
        path = tmp_path / "notes.pth"
        path.write_text("these are not weights\n")
    elif make == "empty":
        path = tmp_path / "empty.safetensors"
        path.write_bytes(b"")
    else:
        path = tmp_path / "a_dir.pth"
        path.mkdir()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as info:
        load_pretrained(model, path)
    msg = str(info.value)
    assert str(path) in msg and "expected a checkpoint" in msg
    assert_untouched(model, before)


def test_pickled_objects_are_refused(model, tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"state_dict": random_state(), "config": NotATensor()}, path)
    with pytest.raises(ValueError, match=r"weights_only=True"):
        load_pretrained(model, path)
    path2 = tmp_path / "legacy.pth"
    with open(path2, "wb") as f:
        pickle.dump({"conv_stem.weight": NotATensor()}, f, protocol=2)
    with pytest.raises(ValueError, match="legacy.pth"):
        load_pretrained(model, path2)


def test_plain_pickle_error_gives_the_reason_quietly(model, tmp_path):
    """torch's own advice to load with weights_only=False is left out, and so is its protocol warning."""
    import warnings

    path = tmp_path / "p4.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv_stem.weight": [1.0]}, f, protocol=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reason = r"p4\.pth could not be read .*: Unsupported operand \d+; expected"
        with pytest.raises(ValueError, match=reason) as info:
            load_pretrained(model, path)
    assert "weights_only` set to `False`" not in str(info.value) and "arbitrary code" not in str(info.value)


class _RunsShell:  # pickles as a call of posix.system: a malicious checkpoint
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_malicious_pickle_is_refused_with_the_reason_and_never_run(model, tmp_path, container):
    """torch 2.13 puts the blocked-module reason on a line of its own, after its weights_only=False advice."""
    marker = tmp_path / "ran"
    payload = {"conv_stem.weight": _RunsShell(f"touch {shlex.quote(str(marker))}")}
    path = tmp_path / "evil.pth"
    if container == "zip":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    assert not marker.exists()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as info:
        load_pretrained(model, path)
    msg = str(info.value)
    assert not marker.exists(), "loading ran the pickle's code"
    assert msg.count("\n") == 0, msg
    assert f"{path} could not be read" in msg and msg.endswith(f"expected {weights.EXPECTED}"), msg
    assert f"GLOBAL {os.system.__module__}.system" in msg.split("tensors): ")[1], msg  # posix.system on Linux
    for advice in ("weights_only=False", "set to `False`", "arbitrary code", "trusted source", "Weights only load"):
        assert advice not in msg, msg
    assert_untouched(model, before)


def test_unknown_global_reason_leaves_out_the_allowlist_advice(model, tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"conv_stem.weight": NotATensor()}, path)
    with pytest.raises(ValueError) as info:
        load_pretrained(model, path)
    reason = str(info.value).split("tensors): ")[1].split("; expected")[0]
    assert reason == f"Unsupported global: GLOBAL {__name__}.NotATensor was not an allowed global by default.", reason


@pytest.mark.parametrize("content, expected", [
    ({"epoch": torch.tensor(1), "lr": 0.1}, "non-tensor entries"),
    ({}, "empty mapping"),
    ([torch.zeros(1)], "holds a list"),
])
def test_not_a_state_dict(model, tmp_path, content, expected):
    path = tmp_path / "w.pth"
    torch.save(content, path)
    with pytest.raises(ValueError, match=expected):
        load_pretrained(model, path)


@pytest.mark.parametrize("value", [True, 3, None])
def test_pretrained_must_be_a_path(model, value):
    with pytest.raises(ValueError, match="path of a checkpoint file"):
        read_checkpoint(value)


def test_save_weights_is_atomic(tmp_path, monkeypatch):
    model = TinyNet()
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"previous contents")

    def failing_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_weights(model, path)
    assert path.read_bytes() == b"previous contents"
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_checkpoint_num_classes():
    assert weights.checkpoint_num_classes(random_state(num_classes=7)) == 7
    tv = {"classifier.0.weight": torch.zeros(16, 8), "classifier.3.weight": torch.zeros(11, 16),
          "classifier.3.bias": torch.zeros(11)}
    assert weights.checkpoint_num_classes(tv) == 11
    assert weights.checkpoint_num_classes({"conv_stem.weight": torch.zeros(1)}) is None


@pytest.mark.parametrize("eps", ["-1", "0", "NaN", "Infinity", "true", '{"bn1": -0.5}'])
def test_bad_bn_eps_metadata_is_refused_and_changes_nothing(model, tmp_path, eps):
    """A negative, zero, NaN or infinite eps would make every BN wrong or fail only at the first forward."""
    path = tmp_path / "w.safetensors"
    save_file(random_state(), str(path), metadata={"format": "mobileconv", "bn_eps": eps})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"w\.safetensors: metadata bn_eps must be a positive finite number"):
        load_pretrained(model, path)
    assert_untouched(model, before)
    assert model.bn1.eps == 1e-5


def test_saved_files_get_the_usual_permissions(tmp_path):
    """Atomic writes go through a private temporary file; the result has the mode open() would give it.

    A new file gets the umask's mode; a replaced file keeps its own, as ``open(path, "w")`` and
    ``mobileconv export`` keep it (a private 0600 checkpoint stayed private only by luck of the umask).
    """
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = save_weights(TinyNet(), tmp_path / "w.safetensors")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.umask(0o077)
        path = save_weights(TinyNet(), tmp_path / "w.safetensors")  # replacing it: its mode stays
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert stat.S_IMODE(save_weights(TinyNet(), tmp_path / "new.safetensors").stat().st_mode) == 0o600
        os.umask(0o022)
        path.chmod(0o600)
        path = save_weights(TinyNet(), path)  # a private file stays private under a permissive umask
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_argparse_options_beside_the_weights_are_allowed_but_nothing_inside_them_runs(model, tmp_path):
    """timm / torchvision training checkpoints hold ``args`` (argparse.Namespace): allowed, its values still checked."""
    import argparse

    state = random_state()
    path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1, model="tiny", sched=None)}, path)
    load_pretrained(model, path)
    assert same_state(model, state)

    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": state, "args": argparse.Namespace(x=_RunsShell(f"touch {shlex.quote(str(marker))}"))},
               evil)
    fresh = TinyNet()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match=f"GLOBAL {os.system.__module__}.system"):
        load_pretrained(fresh, evil)
    assert not marker.exists(), "loading ran the pickle's code"
    assert_untouched(fresh, before)


@pytest.mark.filterwarnings("ignore:`torch.jit.(script|save)` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("program", ["torchscript", "exported_program", "npz"])
def test_saved_programs_are_named_not_reported_as_corrupt(model, tmp_path, program):
    """``mobileconv export`` writes TorchScript .pt and torch.export .pt2 files: not weights, and said so
    (as is a NumPy .npz of the weights, a zip archive too)."""
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    if program == "npz":
        path = tmp_path / "weights.npz"
        np.savez(path, **{k: v.numpy() for k, v in model.state_dict().items()})
        expected = "is a NumPy archive (.npz: numpy.savez; load it with numpy.load), not a state_dict"
    elif program == "torchscript":
        path = tmp_path / "model.pt"
        torch.jit.save(torch.jit.script(module), str(path))
        expected = "is a TorchScript archive (torch.jit.save; load it with torch.jit.load), not a state_dict"
    else:
        path = tmp_path / "model.pt2"
        torch.export.save(torch.export.export(module, (torch.randn(1, 3, 8, 8),)), str(path))
        expected = "is a torch.export program (.pt2; load it with torch.export.load), not a state_dict"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as info:
        load_pretrained(model, path)
    msg = str(info.value)
    assert msg.startswith(f"{path} {expected}") and msg.endswith(f"expected {weights.EXPECTED}"), msg
    assert "corrupt" not in msg and "weights_only" not in msg, msg
    assert_untouched(model, before)
