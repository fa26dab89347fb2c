"""A training start that fails leaves the run folder as it was: every check runs before anything is written.

Each case compares the SHA-256 of every file in the folder before and after the failed command.
"""
import hashlib
import shutil

import pytest
import torch
import yaml

from mobileconv.cli import main
from mobileconv.engine import TrainConfig, trainer
from mobileconv.engine.checkpoint import STATE_FILE, load_state, save_state
from mobileconv.engine.loop import StepSettings

from .helpers import MODEL, TINY, failed_train


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A one-epoch run with EMA (every state.pt entry filled in) to copy and damage."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", *TINY, "--epochs", "1", "--ema", "--out", str(out)]) == 0
    return out


@pytest.fixture
def no_training(monkeypatch):
    monkeypatch.setattr(trainer, "train_epochs", lambda run: pytest.fail("training started"))


def snapshot(folder):
    """Every path under ``folder`` with the SHA-256 of its bytes (None for folders)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


BAD_STARTS = [
    (["--max-train-samples", "32", "--batch-size", "64"], "--batch-size 64 is larger than the 32 training samples"),
    (["--img-size", "4"], f"--img-size 4 is too small for {MODEL}: it needs at least 8 pixels (its minimum input"),
    (["--seed", str(10 ** 20)], f"--seed must be in [0, 2**64), the range torch.manual_seed accepts, got {10 ** 20}"),
    (["--clip-grad", "0"], "--clip-grad must be a finite number > 0 (leave it out for no clipping), got 0.0"),
    (["--data", "no/such/folder"], "--data 'no/such/folder': no such file or folder"),
]


@pytest.mark.parametrize("bad, message", BAD_STARTS)
def test_failed_overwrite_keeps_the_previous_run(finished_run, tmp_path, capsys, no_training, bad, message):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = snapshot(out)
    assert message in failed_train([*TINY, "--epochs", "1", "--out", str(out), "--overwrite", *bad], capsys)
    assert snapshot(out) == before


@pytest.mark.parametrize("bad, message", BAD_STARTS)
def test_failed_start_creates_no_run_folder(tmp_path, capsys, no_training, bad, message):
    out = tmp_path / "new" / "run"
    assert message in failed_train([*TINY, "--epochs", "1", "--out", str(out), *bad], capsys)
    assert not (tmp_path / "new").exists()


def test_overwrite_replaces_the_previous_run_at_the_first_checkpoint(finished_run, tmp_path, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = snapshot(out)
    monkeypatch.setattr(trainer, "train_epochs", lambda run: {})  # setup only
    assert main(["train", *TINY, "--epochs", "1", "--seed", "3", "--out", str(out), "--overwrite"]) == 0
    assert snapshot(out) == before  # no checkpoint yet: the previous run is whole
    monkeypatch.undo()
    assert main(["train", *TINY, "--epochs", "1", "--seed", "3", "--out", str(out), "--overwrite"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 3
    assert load_state(out / STATE_FILE)["config"]["seed"] == 3


def test_failed_resume_keeps_its_config(finished_run, tmp_path, capsys, no_training):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = snapshot(out)
    err = failed_train(["--resume", str(out), "--epochs", "2", "--img-size", "4"], capsys)
    assert "--img-size 4 is too small" in err
    assert snapshot(out) == before  # config.yaml still says 16 px: the next resume works


def test_resume_with_another_optimizer_is_refused_up_front(finished_run, tmp_path, capsys, no_training):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = snapshot(out)
    err = failed_train(["--resume", str(out), "--epochs", "2", "--opt", "adamw"], capsys)
    assert f"--resume {out}: the run used --opt sgd, not adamw" in err
    assert snapshot(out) == before


def _rename_model_keys(state):
    state["model"] = {"x." + k: v for k, v in state["model"].items()}


def _reshape_classifier(state):
    state["model"]["classifier.weight"] = torch.zeros(3, 3)


def _shrink_ema(state):
    del state["ema"]["module"]["conv_stem.weight"]


def _drop_lr_lambdas(state):
    del state["scheduler"]["lr_lambdas"]


def _drop_optimizer_groups(state):
    state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"][:1]


DAMAGED_STATES = [
    (_rename_model_keys, "its model weights do not fit mobilenetv3_small_100_cifar: tensors 244 missing "
                         "(conv_stem.weight, bn1.weight, bn1.bias, ...); 244 unexpected (x.conv_stem.weight,"),
    (_reshape_classifier, "its model weights do not fit mobilenetv3_small_100_cifar: tensors 1 of another shape "
                          "(classifier.weight)"),
    (lambda state: state.pop("optimizer"), "is not a state.pt of mobileconv train (missing optimizer)"),
    (lambda state: state.update(history="1, 2"), "is not a state.pt of mobileconv train (history is a str)"),
    (lambda state: state["config"].pop("data"), "is not a state.pt of mobileconv train (missing config.data)"),
    (_shrink_ema, "its 'ema' entry does not fit this run (the EMA weights do not fit mobilenetv3_small_100_cifar: "
                  "tensors 1 missing (conv_stem.weight))"),
    (_drop_lr_lambdas, "its 'scheduler' entry does not fit this run (KeyError: 'lr_lambdas')"),
    (_drop_optimizer_groups, "its 'optimizer' entry does not fit this run (loaded state dict has a different number "
                             "of parameter groups)"),
]


@pytest.mark.parametrize("damage, message", DAMAGED_STATES)
def test_damaged_state_is_one_line_and_changes_nothing(finished_run, tmp_path, capsys, no_training, damage, message):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    state = load_state(out / STATE_FILE)
    damage(state)
    save_state(out / STATE_FILE, state)
    before = snapshot(out)
    err = failed_train(["--resume", str(out), "--epochs", "2"], capsys)
    assert f"--resume: {out / STATE_FILE}" in err and message in err
    assert snapshot(out) == before


@pytest.mark.parametrize("content", [bytes(range(224, 256)) * 100, "foreign"])  # 224: not a pickle opcode
def test_unreadable_or_foreign_state_is_one_line_and_changes_nothing(finished_run, tmp_path, capsys, no_training,
                                                                     content):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    if content == "foreign":
        torch.save({"a": torch.ones(2)}, out / STATE_FILE)
    else:
        (out / STATE_FILE).write_bytes(content)
    before = snapshot(out)
    err = failed_train(["--resume", str(out), "--epochs", "2"], capsys)
    assert str(out / STATE_FILE) in err
    if content == "foreign":
        assert "is not a state.pt of mobileconv train (missing epoch, num_classes, config, model," in err
    else:
        assert "--resume: cannot load" in err and "weights_only" not in err and "arbitrary code" not in err
    assert snapshot(out) == before


def test_seed_range_is_the_one_torch_accepts():
    biggest = 2 ** 64 - 1
    TrainConfig(seed=biggest).validate()
    trainer.seed_everything(biggest, deterministic=False)  # accepted all the way down
    for seed in (2 ** 64, -1):
        with pytest.raises(ValueError, match=r"--seed must be in \[0, 2\*\*64\)"):
            TrainConfig(seed=seed).validate()


@pytest.mark.parametrize("norm", [0.0, -1.0, float("nan"), float("inf")])
def test_clip_grad_must_be_a_positive_norm(norm):
    with pytest.raises(ValueError, match="--clip-grad must be a finite number > 0"):
        TrainConfig(clip_grad=norm).validate()
    if not norm > 0:  # a norm of 0 would zero every gradient: refused by the step too
        with pytest.raises(ValueError, match="clip_grad must be > 0"):
            StepSettings(clip_grad=norm)
    TrainConfig(clip_grad=0.5).validate()


def test_a_new_run_that_fails_in_its_first_epoch_leaves_an_empty_folder(tmp_path, capsys, monkeypatch):
    """A run that fails before its first checkpoint writes nothing, so the same command can run again."""
    build = trainer.build_model

    def poisoned(*args, **kwargs):  # NaN logits from the first training step
        model = build(*args, **kwargs)
        model.register_forward_hook(lambda module, inputs, output: output * float("nan"))
        return model

    out = tmp_path / "run"
    monkeypatch.setattr(trainer, "build_model", poisoned)
    capsys.readouterr()
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 1
    assert "loss is nan at epoch 1" in capsys.readouterr().err
    assert out.is_dir() and list(out.iterdir()) == []
    monkeypatch.undo()
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0  # not "already holds a run"
    assert yaml.safe_load((out / "config.yaml").read_text())["epochs"] == 1 and (out / STATE_FILE).is_file()


def test_a_runs_config_yaml_reused_as_config_does_not_replace_the_run(finished_run, tmp_path, capsys):
    """config.yaml records every option but --overwrite: as --config it names the same --out and is refused."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert "overwrite" not in config and "lr" in config
    config["out"] = str(out)
    (tmp_path / "again.yaml").write_text(yaml.safe_dump(config))
    before = snapshot(out)
    err = failed_train(["--config", str(tmp_path / "again.yaml")], capsys)
    assert f"--out {out} already holds a run" in err
    assert snapshot(out) == before
