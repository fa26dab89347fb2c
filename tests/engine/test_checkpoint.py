"""Atomic checkpoint writes: an interrupted write leaves the previous file loadable; state loads weights-only."""
import os
import random

import numpy as np
import pytest
import torch

from mobileconv.engine import checkpoint as ckpt


def test_interrupted_weights_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    old = {"w": torch.arange(6.0).view(2, 3)}
    ckpt.save_weights(path, old, {"epoch": 1})

    def crash(fd):
        raise OSError("simulated crash while writing")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="simulated crash"):
        ckpt.save_weights(path, {"w": torch.zeros(2, 3)}, {"epoch": 2})
    monkeypatch.undo()
    tensors, meta = ckpt.load_weights(path)
    assert torch.equal(tensors["w"], old["w"]) and meta["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors"]  # no temp file left behind


def test_half_written_state_keeps_previous_state(tmp_path):
    path = tmp_path / "state.pt"
    ckpt.save_state(path, {"epoch": 3, "t": torch.ones(4)})

    def half_then_die(f):
        f.write(b"PK\x03\x04 partial zip")
        raise KeyboardInterrupt  # a kill between the two halves

    with pytest.raises(KeyboardInterrupt):
        ckpt.atomic_write(path, half_then_die)
    state = ckpt.load_state(path)
    assert state["epoch"] == 3 and torch.equal(state["t"], torch.ones(4))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_state_loads_weights_only_and_refuses_pickled_objects(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"evil": np.float64}, path)  # a class reference: not plain data
    with pytest.raises(ValueError, match="--resume: cannot load"):
        ckpt.load_state(path)
    with pytest.raises(ValueError, match="not found"):
        ckpt.load_state(tmp_path / "missing.pt")


def test_unreadable_state_error_leaves_out_the_advice_to_load_unsafely(tmp_path):
    path = tmp_path / "state.pt"
    path.write_bytes(bytes(range(224, 256)) * 100)  # torch.load's error advises weights_only=False for these
    with pytest.raises(ValueError) as error:
        ckpt.load_state(path)
    message = str(error.value)
    assert message.startswith(f"--resume: cannot load {path} (truncated, corrupt, or not a state.pt")
    assert "\n" not in message and "weights_only" not in message and "arbitrary code" not in message


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    ckpt.save_state(tmp_path / "s.pt", {"rng": ckpt.get_rng_states()})
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.set_rng_states(ckpt.load_state(tmp_path / "s.pt")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_corrupt_weights_file_is_a_value_error(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="not a safetensors file"):
        ckpt.load_weights(tmp_path / "bad.safetensors")


def test_training_checkpoints_record_the_bn_eps_that_loading_restores(tmp_path):
    """last.safetensors carries bn_eps like `convert`'s files: a model whose BNs were changed gets it back."""
    from torch import nn

    import mobileconv
    from mobileconv.cli import main
    from mobileconv.deploy.weights import load_pretrained

    from .helpers import MODEL, TINY

    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    _, meta = ckpt.load_weights(out / "last.safetensors")
    trained = mobileconv.create_model(MODEL, num_classes=10)
    eps = {m.eps for m in trained.modules() if isinstance(m, nn.BatchNorm2d)}
    assert len(eps) == 1 and meta["bn_eps"] == eps.pop()
    model = mobileconv.create_model(MODEL, num_classes=10)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 0.25
    load_pretrained(model, out / "last.safetensors")
    assert {m.eps for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {meta["bn_eps"]}
