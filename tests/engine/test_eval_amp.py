"""eval --amp / --amp-dtype / --channels-last (timm validate.py's): the same scores within the precision of the
dtype, recorded in the result; --amp-dtype without --amp is refused."""
import json

import pytest

from mobileconv.cli import main
from mobileconv.engine.inference import evaluate_checkpoint

from .helpers import MODEL


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_amp") / "run"
    assert main(["train", "--model", MODEL, "--data", "synthetic", "--img-size", "16", "--max-train-samples", "64",
                 "--max-val-samples", "64", "--batch-size", "16", "--epochs", "2", "--quiet", "--out", str(out)]) == 0
    return out / "last.safetensors"


def scored(checkpoint, capsys, *options):
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(checkpoint), "--format", "json", *options]) == 0
    return json.loads(capsys.readouterr().out)


def test_mixed_precision_and_channels_last_score_as_float32(checkpoint, capsys):
    plain = scored(checkpoint, capsys)
    assert (plain["amp"], plain["channels_last"]) == (None, False)
    for options, dtype, tolerance in ((["--amp"], "bfloat16", 1e-2), (["--amp", "--amp-dtype", "float16"], "float16",
                                                                         1e-3), (["--channels-last"], None, 1e-5)):
        result = scored(checkpoint, capsys, *options)
        assert result["amp"] == dtype and result["channels_last"] == (options == ["--channels-last"])
        assert result["loss"] == pytest.approx(plain["loss"], rel=tolerance)
        assert abs(result["top1"] - plain["top1"]) <= 100 / result["count"] + 1e-9  # one image at most


def test_amp_dtype_without_amp_and_an_unknown_dtype_are_refused(checkpoint, capsys):
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(checkpoint), "--amp-dtype", "float16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--amp-dtype float16 is used by --amp only: add --amp" in err
    with pytest.raises(ValueError, match="--amp-dtype must be one of auto, bfloat16, float16, got 'half'"):
        evaluate_checkpoint(None, checkpoint, amp="half")


def test_the_table_names_the_precision_and_memory_format(checkpoint, capsys):
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(checkpoint), "--amp", "--channels-last"]) == 0
    assert "px, bfloat16 autocast, channels_last)" in capsys.readouterr().out.splitlines()[1]
