"""Resuming against an uninterrupted run: the learning rate of every step against the warm-up + cosine formula
written out here, and weights, EMA and optimizer state bitwise equal, also after a checkpoint write that failed
half-way (a full disk) and left the previous state.pt as it was.

No --deterministic: at 16 px training runs on one thread, where the CPU kernels are deterministic anyway.
"""
import errno
import math
import os

import pytest
import torch

from mobileconv.cli import main
from mobileconv.engine import checkpoint as ckpt
from mobileconv.engine import loop, trainer
from mobileconv.engine.checkpoint import load_state, load_weights

from .helpers import MODEL

LR, MIN_LR, EPOCHS, STEPS, WARMUP_STEPS = 0.05, 0.001, 3, 3, 4  # 48 samples / batch 16; warm-up 4/3 epochs
ARGS = ["train", "--model", MODEL, "--data", "synthetic", "--img-size", "16", "--max-train-samples", "48",
        "--max-val-samples", "20", "--batch-size", "16", "--epochs", str(EPOCHS), "--seed", "11", "--lr", str(LR),
        "--min-lr", str(MIN_LR), "--warmup-epochs", str(4 / 3), "--ema", "--ema-decay", "0.9", "--mixup", "0.2",
        "--drop-path", "0.1", "--quiet"]


def expected_lr(t: int) -> float:
    """README: linear warm-up from lr/100 per step, then cosine decay to --min-lr at the last step."""
    if t < WARMUP_STEPS:
        return LR * (0.01 + 0.99 * t / WARMUP_STEPS)
    total = EPOCHS * STEPS
    return MIN_LR + (LR - MIN_LR) * 0.5 * (1 + math.cos(math.pi * (t - WARMUP_STEPS) / (total - WARMUP_STEPS)))


def record_lrs(monkeypatch) -> list:
    """The learning rate of every optimizer step, as the step sees it."""
    lrs, step = [], loop.backward_and_step

    def spy(loss, model, optimizer, *args):
        lrs.append(optimizer.param_groups[0]["lr"])
        step(loss, model, optimizer, *args)

    monkeypatch.setattr(loop, "backward_and_step", spy)
    return lrs


class Stop(Exception):
    pass


def stop(run):
    raise Stop  # as a kill right after the checkpoint would


def after_save(monkeypatch, epoch: int, action) -> None:
    """Call ``action(run)`` once the checkpoint of ``epoch`` is written."""
    save = trainer.save_epoch

    def save_then_act(run, done, is_best):
        save(run, done, is_best)
        if done == epoch:
            action(run)

    monkeypatch.setattr(trainer, "save_epoch", save_then_act)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run and the learning rate of each of its steps."""
    out = tmp_path_factory.mktemp("reference") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        lrs = record_lrs(monkeypatch)
        assert main([*ARGS, "--out", str(out)]) == 0
    return out, lrs


def assert_same_run(a, b):
    for name in (ckpt.LAST_FILE, ckpt.BEST_FILE):
        x, _ = load_weights(a / name)
        y, _ = load_weights(b / name)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name
    sa, sb = load_state(a / ckpt.STATE_FILE), load_state(b / ckpt.STATE_FILE)
    assert sa["epoch"] == sb["epoch"] == EPOCHS
    assert sa["ema"]["updates"] == sb["ema"]["updates"] == EPOCHS * STEPS
    for x, y in ((sa["model"], sb["model"]), (sa["ema"]["module"], sb["ema"]["module"])):  # raw and EMA weights
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    buffers_a = [s["momentum_buffer"] for s in sa["optimizer"]["state"].values()]
    buffers_b = [s["momentum_buffer"] for s in sb["optimizer"]["state"].values()]
    assert len(buffers_a) == len(buffers_b) and all(torch.equal(x, y) for x, y in zip(buffers_a, buffers_b))
    timing = ("img/s", "seconds")
    assert ([{k: v for k, v in row.items() if k not in timing} for row in sa["history"]]
            == [{k: v for k, v in row.items() if k not in timing} for row in sb["history"]])


def test_reference_schedule_is_the_documented_one(reference):
    _, lrs = reference
    assert lrs == pytest.approx([expected_lr(t) for t in range(EPOCHS * STEPS)], rel=1e-12)


def test_stopped_and_resumed_run_matches_the_uninterrupted_one(reference, tmp_path, monkeypatch):
    ref, ref_lrs = reference
    out = tmp_path / "run"
    lrs = record_lrs(monkeypatch)
    after_save(monkeypatch, 1, stop)
    with pytest.raises(Stop):
        main([*ARGS, "--out", str(out)])
    assert load_state(out / ckpt.STATE_FILE)["epoch"] == 1 and len(lrs) == STEPS
    assert main(["train", "--resume", str(out), "--quiet"]) == 0  # (epoch 1 is not saved again: no Stop)
    assert lrs == ref_lrs  # the warm-up crosses the interruption and goes on where it stopped
    assert_same_run(ref, out)



class HalfWrite:
    """A file whose write stores half of the bytes, then finds the disk full."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        self.f.write(data[:len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_failed_state_write_keeps_the_previous_state_and_resumes(reference, tmp_path, monkeypatch, capsys):
    ref, _ = reference
    out = tmp_path / "run"
    state = out / ckpt.STATE_FILE

    def fill_disk(run):  # the next state.pt write fails half-way
        def fake_open(path, mode="r", *args, **kwargs):
            f = open(path, mode, *args, **kwargs)
            return HalfWrite(f) if f"{ckpt.STATE_FILE}.tmp" in str(path) else f

        monkeypatch.setattr(ckpt, "open", fake_open, raising=False)

    after_save(monkeypatch, 1, fill_disk)
    capsys.readouterr()
    assert main([*ARGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"mobileconv train: error: {os.strerror(errno.ENOSPC)}: {state}\n"
    assert load_state(state)["epoch"] == 1  # the previous checkpoint, whole
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left

    monkeypatch.undo()
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert_same_run(ref, out)
