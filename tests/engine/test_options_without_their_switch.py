"""--ema-decay without --ema, --amp-dtype without --amp and --warmup-lr with --warmup-epochs 0 would be ignored:
they are refused, naming where they were set, before anything is written; a resumed run's recorded value is dropped."""
import pytest
import yaml

from mobileconv.cli import build_parser
from mobileconv.cli.train import train_config_from_args
from mobileconv.engine import trainer
from mobileconv.engine.config import TrainConfig

from .helpers import MODEL, failed_train

QUICK = ["--model", MODEL, "--data", "synthetic", "--img-size", "16", "--max-train-samples", "16",
         "--max-val-samples", "8", "--batch-size", "16", "--quiet"]


def parsed(argv):
    return train_config_from_args(build_parser().parse_args(["train", *argv]))


@pytest.mark.parametrize("argv, message", [
    (["--ema-decay", "0.9999"], "--ema-decay 0.9999 (set on the command line) is used by --ema only: add --ema"),
    (["--amp-dtype", "float16"], "--amp-dtype float16 (set on the command line) is used by --amp only: add --amp"),
    (["--warmup-epochs", "0", "--warmup-lr", "1e-06"],
     "--warmup-lr 1e-06 (set on the command line) is the rate a warm-up starts from, and --warmup-epochs 0 makes "
     "none"),
])
def test_an_option_without_its_switch_is_refused(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert message in failed_train([*QUICK, *argv, "--out", str(out)], capsys)
    assert not out.exists()


def test_with_their_switch_they_apply(tmp_path):
    config = parsed(["--ema", "--ema-decay", "0.99", "--amp", "--amp-dtype", "bfloat16", "--warmup-lr", "0.0"])
    assert (config.ema_decay, config.amp_dtype, config.warmup_lr) == (0.99, "bfloat16", 0.0)
    info = type("Info", (), {"name": "synthetic", "hflip": 0.5, "color_jitter": 0.0, "scale": (0.5, 1.0)})()
    assert trainer.resolve_config(TrainConfig(ema=True), info, 16).ema_decay == 0.999  # the documented default
    assert trainer.resolve_config(TrainConfig(), info, 16).validate().ema_decay is None  # recorded as unused


def test_a_config_file_is_named_and_a_resumed_runs_recorded_value_is_dropped(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("ema-decay: 0.9999\n")
    err = failed_train([*QUICK, "--config", str(config), "--out", str(tmp_path / "run")], capsys)
    assert f"--ema-decay 0.9999 (set in --config {config}) is used by --ema only" in err
    run = tmp_path / "old"
    run.mkdir()
    # as runs recorded it before: the default decay 0.999 written out for a run without EMA
    (run / "config.yaml").write_text(yaml.safe_dump({**TrainConfig().to_dict(), "ema_decay": 0.999, "out": str(run)}))
    assert parsed(["--resume", str(run)]).ema_decay is None
