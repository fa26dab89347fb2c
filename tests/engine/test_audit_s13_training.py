"""Audit of the training path: options an optimizer would ignore, divergence at the end of an epoch, and a resumed
run with data-loading workers.

Expected values come from torch.optim itself, from an uninterrupted run compared bit for bit, or from the
definition of a finite tensor; never from the code under test.
"""
import json
import math
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn

from mobileconv.cli import build_parser, main
from mobileconv.cli.train import train_config_from_args
from mobileconv.engine import trainer
from mobileconv.engine.checkpoint import load_state, load_weights
from mobileconv.engine.config import TrainConfig
from mobileconv.engine.optim import create_optimizer

from .helpers import MODEL, failed_train

# one step per epoch: 16 training images, batch 16
QUICK = ["--model", MODEL, "--data", "synthetic", "--img-size", "16", "--max-train-samples", "16",
         "--max-val-samples", "8", "--batch-size", "16", "--quiet"]


def parsed(argv):
    return train_config_from_args(build_parser().parse_args(["train", *argv]))


# ---- --momentum / --opt-eps for an optimizer without them ---------------------------------------------------


@pytest.mark.parametrize("opt, option, value, takes", [
    ("sgd", "--opt-eps", "1e-08", "--momentum"),
    ("adamw", "--momentum", "0.9", "--opt-eps and --opt-betas"),  # the old default, given explicitly, is refused too
    ("adamw", "--momentum", "0.0", "--opt-eps and --opt-betas"),
])
def test_an_option_the_optimizer_lacks_is_refused_on_the_command_line(opt, option, value, takes, tmp_path, capsys):
    out = tmp_path / "run"
    err = failed_train([*QUICK, "--opt", opt, option, value, "--out", str(out)], capsys)
    assert (f"{option} {float(value)!r} (set on the command line) is not used by --opt {opt}, which takes {takes} "
            f"but not {option}") in err
    assert not out.exists()


def test_an_option_the_optimizer_lacks_is_refused_from_a_config_file(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("opt: sgd\nmomentum: 0.5\nopt-eps: 0.001\n")
    # the file's epsilon is for rmsprop; with sgd from the file it would be ignored
    err = failed_train([*QUICK, "--config", str(config), "--out", str(tmp_path / "run")], capsys)
    assert f"--opt-eps 0.001 (set in --config {config}) is not used by --opt sgd" in err
    # the command line picks an optimizer that uses both: accepted, with the file's values
    assert (parsed(["--config", str(config), "--opt", "rmsprop"]).momentum,
            parsed(["--config", str(config), "--opt", "rmsprop"]).opt_eps) == (0.5, 0.001)
    err = failed_train([*QUICK, "--config", str(config), "--opt", "adamw", "--out", str(tmp_path / "r2")], capsys)
    assert f"--momentum 0.5 (set in --config {config}) is not used by --opt adamw" in err


def test_defaults_are_per_optimizer_and_match_torch():
    assert (parsed(["--opt", "adamw"]).momentum, parsed(["--opt", "sgd"]).opt_eps) == (None, None)
    info = SimpleNamespace(name="synthetic", hflip=0.0, color_jitter=0.0, scale=(0.5, 1.0))
    adamw = trainer.resolve_config(TrainConfig(opt="adamw"), info, 16)
    sgd = trainer.resolve_config(TrainConfig(opt="sgd"), info, 16)
    assert (adamw.momentum, adamw.opt_eps, sgd.momentum, sgd.opt_eps) == (None, 1e-8, 0.9, None)
    adamw.validate(), sgd.validate()  # the recorded config.yaml is valid again as --config
    # the optimizers built from the defaults are torch's with those settings
    model = nn.Linear(3, 2)
    group = create_optimizer(model, "sgd", lr=0.1, weight_decay=0.0).param_groups[0]
    reference = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True).param_groups[0]
    assert (group["momentum"], group["nesterov"]) == (reference["momentum"], reference["nesterov"])
    assert create_optimizer(model, "adamw", lr=0.1, weight_decay=0.0).param_groups[0]["eps"] == 1e-8


def test_library_refuses_what_the_optimizer_lacks():
    with pytest.raises(ValueError, match=r"^--momentum 0.9 is not used by --opt adamw"):
        create_optimizer(nn.Linear(3, 2), "adamw", lr=0.1, weight_decay=0.0, momentum=0.9)
    with pytest.raises(ValueError, match=r"^--opt-eps 1e-08 is not used by --opt sgd"):
        create_optimizer(nn.Linear(3, 2), "sgd", lr=0.1, weight_decay=0.0, eps=1e-8)
    with pytest.raises(ValueError, match=r"^--momentum 0.5 is not used by --opt adamw, which takes --opt-eps"):
        TrainConfig(opt="adamw", momentum=0.5).validate()


def test_resuming_a_run_that_recorded_an_unused_option_is_not_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    # config.yaml as runs recorded it before: the resolved momentum 0.9 for adamw, which it never used
    recorded = {**TrainConfig(opt="adamw", lr=0.002, weight_decay=0.05, opt_eps=1e-8).to_dict(), "momentum": 0.9,
                "out": str(run)}
    (run / "config.yaml").write_text(yaml.safe_dump(recorded))
    config = parsed(["--resume", str(run)])
    assert (config.opt, config.momentum, config.opt_eps) == ("adamw", None, 1e-8)
    err = failed_train(["--resume", str(run), "--momentum", "0.8"], capsys)  # a new value is the user's
    assert "--momentum 0.8 (set on the command line) is not used by --opt adamw" in err


# ---- weights that diverge at an epoch's last step -----------------------------------------------------------


def test_weights_diverged_by_the_last_step_are_not_saved_as_a_finished_run(tmp_path, capsys):
    # lr 1e30: the first (and only) step's loss is finite, the weights it leaves overflow the test logits
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", *QUICK, "--epochs", "1", "--lr", "1e30", "--warmup-epochs", "0", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "the test loss is nan after epoch 1; training stopped, no checkpoint was written" in err
    assert not (out / "summary.json").exists() and not (out / "last.safetensors").exists()


def test_nan_gradient_at_an_epochs_last_step_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    build = trainer.build_model

    def nan_gradient_at_step_2(*args, **kwargs):
        model = build(*args, **kwargs)
        steps = {"n": 0}

        def hook(module, inputs, output):  # a finite loss whose gradient is NaN (as sqrt'(0) gives)
            steps["n"] += module.training
            if module.training and steps["n"] == 2:
                output.register_hook(lambda grad: grad * math.nan)
            return output

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(trainer, "build_model", nan_gradient_at_step_2)
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", *QUICK, "--epochs", "2", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "the weights are not finite" in err and "after epoch 2" in err
    assert f"{out}/last.safetensors (epoch 1)" in err
    tensors, meta = load_weights(out / "last.safetensors")
    assert meta["epoch"] == 1 and load_state(out / "state.pt")["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    assert not (out / "summary.json").exists()


# ---- resume with data-loading workers, into another folder ---------------------------------------------------


class Stop(Exception):
    pass


def test_resumed_run_with_workers_is_bitwise_the_uninterrupted_one_and_keeps_its_best(tmp_path, monkeypatch):
    args = ["train", *QUICK, "--epochs", "2", "--workers", "1", "--deterministic", "--seed", "5"]
    full, cut, forked = tmp_path / "full", tmp_path / "cut", tmp_path / "forked"
    assert main([*args, "--out", str(full)]) == 0
    save = trainer.save_epoch

    def save_then_stop(run, epoch, is_best):
        save(run, epoch, is_best)
        if epoch == 1:
            raise Stop  # as a kill right after the first checkpoint would

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "save_epoch", save_then_stop)
        with pytest.raises(Stop):
            main([*args, "--out", str(cut)])
    # resumed into another folder; epoch 2 only ties epoch 1's test top-1, so epoch 1 stays the best
    best_top1, evaluate = load_state(cut / "state.pt")["best_top1"], trainer.evaluate
    monkeypatch.setattr(trainer, "evaluate", lambda *a, **k: {**evaluate(*a, **k), "top1": best_top1})
    assert main(["train", "--resume", str(cut), "--out", str(forked), "--quiet"]) == 0
    a, _ = load_weights(full / "last.safetensors")
    b, _ = load_weights(forked / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (forked / "best.safetensors").read_bytes() == (cut / "best.safetensors").read_bytes()
    assert json.loads((forked / "summary.json").read_text())["best_epoch"] == 1
