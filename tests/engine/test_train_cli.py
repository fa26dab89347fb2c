"""``mobileconv train / eval / predict`` end to end on a tiny configuration, and their errors."""
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import mobileconv
from mobileconv.cli import main
from mobileconv.cli.train import TRAIN_GROUPS
from mobileconv.engine import trainer
from mobileconv.engine.checkpoint import load_state, load_weights
from mobileconv.engine.metrics import read_metrics_csv

from .helpers import MODEL, TINY


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    assert main(["train", *TINY, "--epochs", "2", "--ema", "--out", str(out)]) == 0
    return out


def test_run_folder_contents(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"config.yaml", "metrics.csv", "curves.png", "last.safetensors", "best.safetensors", "state.pt",
            "summary.json"} <= names
    rows = read_metrics_csv(tiny_run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert list(rows[0]) == ["epoch", "loss", "top1", "top5", "lr", "img/s", "seconds", "test_loss"]
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["model"] == MODEL and summary["dataset"] == "synthetic" and summary["num_classes"] == 10
    assert summary["top1"] == rows[-1]["top1"] and summary["epochs"] == 2 and summary["train_seconds"] > 0
    assert len(summary["classes"]) == 10
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert config["img_size"] == 16 and config["lr"] == 0.1 and config["hflip"] == 0.5  # resolved defaults
    assert (tiny_run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    state = load_state(tiny_run / "state.pt")  # weights_only=True
    assert state["epoch"] == 2 and state["ema"] is not None


def test_weights_are_a_plain_state_dict_loadable_by_create_model(tiny_run):
    tensors, meta = load_weights(tiny_run / "last.safetensors")
    model = mobileconv.create_model(MODEL, num_classes=10, pretrained=str(tiny_run / "last.safetensors"))
    assert set(tensors) == set(model.state_dict())
    ema = load_state(tiny_run / "state.pt")["ema"]["module"]  # --ema: the saved weights are the EMA's
    assert all(torch.equal(tensors[k], ema[k]) for k in tensors)
    assert meta["model"] == MODEL and meta["img_size"] == 16 and meta["ema"] is True


def test_eval_reproduces_the_training_accuracy(tiny_run, capsys):
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tiny_run / "last.safetensors"), "--format", "json",
                 "--max-val-samples", "32", "--plot", str(tiny_run / "cm.png")]) == 0
    result = json.loads(capsys.readouterr().out)
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert result["top1"] == pytest.approx(summary["top1"]) and result["top5"] == pytest.approx(summary["top5"])
    assert result["count"] == 32 and len(result["per_class"]) == 10
    assert sum(map(sum, result["confusion"])) == 32
    assert (tiny_run / "cm.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["eval", "--model", MODEL, "--checkpoint", str(tiny_run / "best.safetensors"), "--data",
                 "synthetic", "--max-val-samples", "32"]) == 0
    assert "top-1" in capsys.readouterr().out


def test_predict_matches_the_model_on_the_same_pixels(tiny_run, tmp_path, capsys):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "x.png"), "--model", MODEL, "--checkpoint",
                 str(tiny_run / "last.safetensors"), "--format", "json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    model = mobileconv.create_model(MODEL, num_classes=10, pretrained=str(tiny_run / "last.safetensors")).eval()
    x = torch.from_numpy(pixels).permute(2, 0, 1).float().unsqueeze(0) / 255
    with torch.no_grad():
        probs = model((x - 0.5) / 0.5).softmax(1)[0]  # synthetic data: mean = std = 0.5
    expected = probs.topk(5)
    assert [t["index"] for t in top] == expected.indices.tolist()
    assert [t["class"] for t in top] == [f"class_{i}" for i in expected.indices.tolist()]
    np.testing.assert_allclose([t["prob"] for t in top], expected.values.numpy(), rtol=1e-5)


def test_config_file_is_read_and_the_command_line_wins(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 1\nbatch-size: 32\nlr: 0.05\nopt: adamw\n")
    out = tmp_path / "run"
    assert main(["train", *TINY, "--config", str(config), "--lr", "0.01", "--out", str(out)]) == 0
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert (resolved["epochs"], resolved["batch_size"], resolved["opt"], resolved["lr"]) == (1, 16, "adamw", 0.01)
    assert resolved["weight_decay"] == 0.05  # adamw's default


def _write_tree(root, train_classes, val_classes):
    for split, classes in (("train", train_classes), ("val", val_classes)):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(root / split / name / "a.png")


@pytest.mark.parametrize("case, message", [
    ("missing_data", "--data '{tmp}/nope': no such file or folder"),
    ("empty_data", "holds neither train/ and val/ folders nor CIFAR files"),
    ("class_mismatch", "train/ and val/ classes differ"),
    ("out_unwritable", "--out {tmp}/file/run: cannot write there"),
    ("out_is_file", "--out {tmp}/file exists and is not a folder"),
    ("bad_value", "--lr must be a finite number > 0, got -1.0"),
    ("unknown_model", "--model 'resnet50' is not a known model"),
    ("misspelt_model", "--model 'mixnet_sx' is not a known model (did you mean mixnet_s"),
    ("bad_config_key", "unknown option 'learning_rate'"),
    ("bad_config_value", "option 'epochs' expects an integer, got 'many'"),
    ("bad_config_inf", "option 'epochs' expects an integer, got inf"),
    ("bad_config_choice", "option 'opt': 'adabelief' is not one of sgd, momentum, rmsprop, rmsproptf, adamw"),
    ("previous_run", "already holds a run"),
])
def test_bad_input_is_one_clear_line_before_training(tmp_path, capsys, monkeypatch, case, message):
    (tmp_path / "file").write_text("x")
    args = ["train", *TINY, "--epochs", "1", "--out", str(tmp_path / "out")]
    if case == "missing_data":
        args += ["--data", str(tmp_path / "nope")]
    elif case == "empty_data":
        (tmp_path / "empty").mkdir()
        args += ["--data", str(tmp_path / "empty")]
    elif case == "class_mismatch":
        _write_tree(tmp_path / "tree", ["a", "b"], ["a", "c"])
        args += ["--data", str(tmp_path / "tree")]
    elif case == "out_unwritable":
        args += ["--out", str(tmp_path / "file" / "run")]
    elif case == "out_is_file":
        args += ["--out", str(tmp_path / "file")]
    elif case == "bad_value":
        args += ["--lr", "-1"]
    elif case == "unknown_model":
        args += ["--model", "resnet50"]
    elif case == "misspelt_model":
        args += ["--model", "mixnet_sx"]
    elif case.startswith("bad_config"):
        text = {"bad_config_key": "learning_rate: 0.1", "bad_config_value": "epochs: many",
                "bad_config_choice": "opt: adabelief", "bad_config_inf": "epochs: .inf"}
        (tmp_path / "c.yaml").write_text(text[case] + "\n")
        args += ["--config", str(tmp_path / "c.yaml")]
    elif case == "previous_run":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "state.pt").write_bytes(b"")
    monkeypatch.setattr(trainer, "train_epochs", lambda run: pytest.fail("training started"))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mobileconv train: error: ")
    assert message.format(tmp=tmp_path) in err


def test_unknown_option_value_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--opt", "adabelief"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument --opt: invalid choice: 'adabelief'" in err


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    build = trainer.build_model

    def poisoned(*args, **kwargs):
        model = build(*args, **kwargs)
        calls = {"n": 0}

        def hook(module, inputs, output):  # NaN logits from the 6th training step on (epoch 2 of 4 steps)
            calls["n"] += module.training
            return output * float("nan") if calls["n"] > 5 else output

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(trainer, "build_model", poisoned)
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", *TINY, "--epochs", "3", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "loss is nan at epoch 2, step 2" in err and f"{out}/last.safetensors (epoch 1)" in err
    tensors, meta = load_weights(out / "last.safetensors")
    state = load_state(out / "state.pt")
    assert meta["epoch"] == 1 and state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    assert all(torch.equal(tensors[k], state["model"][k]) for k in tensors)
    assert not (out / "summary.json").exists()


@pytest.mark.parametrize("workers", ["0", "1"])
def test_undecodable_image_is_reported_by_path(tmp_path, capsys, workers):
    _write_tree(tmp_path / "tree", ["a", "b"], ["a", "b"])
    bad = tmp_path / "tree" / "val" / "b" / "broken.png"
    bad.write_bytes(b"not an image")
    capsys.readouterr()
    assert main(["train", *TINY, "--data", str(tmp_path / "tree"), "--batch-size", "2", "--epochs", "1",
                 "--workers", workers, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: cannot decode image {bad}: " in err


def test_help_shows_the_options_under_their_headings(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    headings = [line[:-1] for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headings == ["options", *TRAIN_GROUPS.values()]
    sections = dict(zip(headings, text.split("\n\n")[-len(headings):]))
    assert "--bce-loss" in sections["loss, mixup and cutmix"] and "--lr-base " in sections["learning-rate schedule"]
    assert "--resume DIR" in sections["checkpoints and the run"]
