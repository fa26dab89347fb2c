"""--lr-base / --lr-base-size / --lr-base-scale: the learning rate derived from the global batch as timm derives it,
and which of --lr and --lr-base wins when both are set somewhere (the later level; --lr-base at the same one)."""
import pytest
import yaml

from mobileconv.cli import build_parser
from mobileconv.cli.train import train_config_from_args
from mobileconv.engine import trainer
from mobileconv.engine.config import TrainConfig, lr_from_base

from .helpers import TINY, failed_train

INFO = type("Info", (), {"name": "synthetic", "hflip": 0.5, "color_jitter": 0.0, "scale": (0.5, 1.0)})()


def resolved(argv):
    config = train_config_from_args(build_parser().parse_args(["train", *argv]))
    return trainer.resolve_config(config, INFO, 16).validate()


@pytest.mark.parametrize("opt, batch, size, scale, expected", [
    ("sgd", 64, 256, None, 0.1 * 64 / 256),  # timm's linear rule for SGD
    ("rmsproptf", 1024, 256, None, 0.1 * 4),
    ("adamw", 64, 256, None, 0.1 * (64 / 256) ** 0.5),  # and the square root for the Adam family
    ("nadam", 512, 128, None, 0.1 * 2.0),
    ("sgd", 64, 256, "sqrt", 0.1 * 0.5),
    ("adam", 1024, 256, "linear", 0.1 * 4),
    ("lamb", 64, 256, None, 0.1 * 0.5),  # timm: sqrt for names with "ada" or "lamb"
    ("lion", 1024, 256, None, 0.1 * 4),
    ("momentum", 64, 256, None, 0.1 * 64 / 256),
])
def test_the_rate_follows_the_batch_as_timm_scales_it(opt, batch, size, scale, expected):
    config = TrainConfig(opt=opt, batch_size=batch, lr_base=0.1, lr_base_size=size, lr_base_scale=scale)
    assert lr_from_base(config) == pytest.approx(expected)


def test_a_run_records_the_derived_rate_and_its_config_derives_it_again(tmp_path):
    config = resolved(["--lr-base", "0.2", "--batch-size", "64"])
    assert (config.lr, config.lr_base_scale) == (pytest.approx(0.05), "linear")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({**config.to_dict(), "out": str(run)}))
    # its config.yaml as --config, or resumed, with another batch: the rate is derived again, not the recorded one
    assert resolved(["--config", str(run / "config.yaml"), "--batch-size", "128"]).lr == pytest.approx(0.1)
    assert resolved(["--resume", str(run), "--batch-size", "32"]).lr == pytest.approx(0.025)
    # an --lr given later wins, and the recorded --lr-base is dropped
    overridden = resolved(["--resume", str(run), "--lr", "0.3"])
    assert (overridden.lr, overridden.lr_base, overridden.lr_base_scale) == (0.3, None, None)
    assert resolved(["--lr", "0.3"]).lr_base is None and resolved([]).lr == 0.1  # sgd's default, as before


@pytest.mark.parametrize("argv, message", [
    (["--lr", "0.1", "--lr-base", "0.1"], "--lr and --lr-base both set the learning rate: give one"),
    (["--lr-base-size", "512"], "--lr-base-size 512 (set on the command line) is used by --lr-base only"),
    (["--lr-base-scale", "sqrt"], "--lr-base-scale sqrt (set on the command line) is used by --lr-base only"),
    (["--lr-base", "0"], "--lr-base must be a finite number > 0"),
])
def test_bad_values_are_refused(argv, message, tmp_path, capsys):
    assert message in failed_train([*TINY, *argv, "--out", str(tmp_path / "run")], capsys)
