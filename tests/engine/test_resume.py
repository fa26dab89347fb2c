"""Resuming: a run SIGKILLed after an epoch and resumed ends bitwise identical to an uninterrupted run;
options given on resume replace the saved settings; a run with no epochs left is refused."""
import json
import math
import signal

import pytest
import torch
import yaml

from mobileconv.cli import main
from mobileconv.engine import trainer
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


def test_resume_trains_on_with_the_new_settings(tmp_path, monkeypatch):
    """--lr, --min-lr, --weight-decay, --momentum and --ema-decay given on resume replace the saved ones;
    the saved state (momentum buffers, schedule position, EMA update count) carries on."""
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--ema", "--out", str(out)]) == 0
    saved = load_state(out / "state.pt")
    runs = []
    monkeypatch.setattr(trainer, "train_epochs", lambda run: runs.append(run) or {})
    new = ["--lr", "0.01", "--min-lr", "0.005", "--weight-decay", "0.001", "--momentum", "0.8", "--ema-decay", "0.9"]
    assert main(["train", "--resume", str(out), "--epochs", "3", *new, "--quiet"]) == 0
    run = runs[0]

    steps_done, total, warmup = 4, 12, 4  # 64 samples / batch 16 per epoch; one warm-up epoch
    progress = (steps_done - warmup) / (total - warmup)
    expected_lr = 0.005 + (0.01 - 0.005) * 0.5 * (1 + math.cos(math.pi * progress))
    assert run.scheduler.last_epoch == steps_done and run.scheduler.base_lrs == [0.01, 0.01]
    for group in run.optimizer.param_groups:
        assert group["lr"] == pytest.approx(expected_lr) and group["initial_lr"] == 0.01
        assert group["momentum"] == 0.8
        assert group["weight_decay"] in (0.0, 0.001)  # norm layers and biases never decay
    assert {g["weight_decay"] for g in run.optimizer.param_groups} == {0.0, 0.001}
    buffers = [s["momentum_buffer"] for s in run.optimizer.state_dict()["state"].values()]
    saved_buffers = [s["momentum_buffer"] for s in saved["optimizer"]["state"].values()]
    assert len(buffers) == len(saved_buffers) and all(torch.equal(a, b) for a, b in zip(buffers, saved_buffers))
    assert run.ema.decay == 0.9 and run.ema.updates == saved["ema"]["updates"] == steps_done
    assert yaml.safe_load((out / "config.yaml").read_text())["lr"] == 0.1  # rewritten at the first save only

    monkeypatch.undo()  # now train the two remaining epochs: the schedule ends at the new --min-lr
    assert main(["train", "--resume", str(out), "--epochs", "3", *new, "--quiet"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["lr"] == 0.01
    rows = [line.split(",") for line in (out / "metrics.csv").read_text().splitlines()]
    lr = rows[0].index("lr")
    assert [r[0] for r in rows[1:]] == ["1", "2", "3"] and float(rows[3][lr]) == pytest.approx(0.005)


def test_resume_with_no_epochs_left_is_refused_up_front(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--epochs", "1", "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"--resume {out}: the run has already trained 1 epoch(s); pass --epochs above 1 to train on" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # config.yaml still says the old --lr


@pytest.mark.parametrize("text, expected", [
    ("epochs: [\n", "config.yaml: not valid YAML"),
    ("epochs: many\n", "config.yaml: option 'epochs' expects an integer, got 'many'"),
    ("- 1\n", "config.yaml: expected a mapping of option names to values, got list"),
])
def test_corrupt_saved_config_is_named_as_the_runs(tmp_path, capsys, text, expected):
    (tmp_path / "config.yaml").write_text(text)
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--config" not in err
    assert f"--resume {tmp_path}: {tmp_path / expected}" in err
