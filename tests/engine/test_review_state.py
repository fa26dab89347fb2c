"""A state.pt whose optimizer buffers do not fit the model is refused before training, changing nothing.

``Optimizer.load_state_dict`` checks only the number of parameters per group: the run used to start,
rewrite config.yaml, and die at its first step with a traceback from inside ``torch.optim``.
"""
import hashlib

import pytest
import torch

from mobileconv.cli import main
from mobileconv.engine import trainer
from mobileconv.engine.checkpoint import STATE_FILE, load_state, save_state

from .helpers import TINY, failed_train


def snapshot(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_optimizer_buffer_of_another_shape_is_one_line_and_changes_nothing(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    state = load_state(out / STATE_FILE)
    first = next(iter(state["optimizer"]["state"].values()))
    shape = tuple(first["momentum_buffer"].shape)
    first["momentum_buffer"] = torch.zeros(3)
    save_state(out / STATE_FILE, state)
    before = snapshot(out)

    monkeypatch.setattr(trainer, "train_epochs", lambda run: pytest.fail("training started"))
    err = failed_train(["--resume", str(out), "--epochs", "2"], capsys)
    assert (f"--resume: {out / STATE_FILE}: its 'optimizer' entry does not fit this run (a momentum_buffer of "
            f"shape (3,) for a parameter of shape {shape})") in err
    assert snapshot(out) == before  # config.yaml still says --epochs 1
