"""A run SIGKILLed after an epoch and resumed ends bitwise identical to an uninterrupted run."""
import json
import signal

import torch

from mobileconv.engine.checkpoint import load_state, load_weights
from mobileconv.engine.trainer import KILL_AFTER_EPOCH_ENV

from .helpers import TINY, run_cli

ARGS = ["train", *TINY, "--epochs", "3", "--deterministic", "--seed", "7", "--ema", "--mixup", "0.2"]


def test_killed_and_resumed_run_is_bitwise_identical(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    reference = run_cli([*ARGS, "--out", str(full)])
    assert reference.returncode == 0, reference.stderr
    interrupted = run_cli([*ARGS, "--out", str(killed)], env_extra={KILL_AFTER_EPOCH_ENV: "2"})
    assert interrupted.returncode == -signal.SIGKILL, interrupted.stderr
    assert load_state(killed / "state.pt")["epoch"] == 2 and not (killed / "summary.json").exists()

    resumed = run_cli(["train", "--resume", str(killed), "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 2" in resumed.stdout

    for name in ("last.safetensors", "best.safetensors"):
        a, _ = load_weights(full / name)
        b, _ = load_weights(killed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    state_a, state_b = load_state(full / "state.pt"), load_state(killed / "state.pt")
    assert all(torch.equal(state_a["model"][k], state_b["model"][k]) for k in state_a["model"])
    momentum_a = [s["momentum_buffer"] for s in state_a["optimizer"]["state"].values()]
    momentum_b = [s["momentum_buffer"] for s in state_b["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(momentum_a, momentum_b))
    summary_a = json.loads((full / "summary.json").read_text())
    summary_b = json.loads((killed / "summary.json").read_text())
    assert (summary_a["top1"], summary_a["epochs"]) == (summary_b["top1"], summary_b["epochs"])
    assert summary_b["epochs"] == 3
    rows = (killed / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["epoch", "1", "2", "3"]
