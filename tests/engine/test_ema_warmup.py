"""--ema-warmup tf|timm|none: the EMA decay of each update, against TF's and timm's formulas written out, and the
average they make of a weight that moves by known steps."""
import pytest
import torch
from torch import nn

from mobileconv.cli import main
from mobileconv.engine.ema import ModelEma

from .helpers import TINY, failed_train

DECAY = 0.99


def expected_decays(warmup, n):
    out = []
    for t in range(1, n + 1):
        if warmup == "tf":  # tf.train.ExponentialMovingAverage(decay, num_updates=t)
            out.append(min(DECAY, (1 + t) / (10 + t)))
        else:  # timm ModelEmaV3.get_decay(step=t): step - 1 <= 0 gives 0, else the warm-up or the constant decay
            s = t - 1
            out.append(0.0 if s <= 0 else min(DECAY, 1 - (1 + s) ** -0.75) if warmup == "timm" else DECAY)
    return out


@pytest.mark.parametrize("warmup", ["tf", "timm", "none"])
def test_each_update_uses_the_formulas_decay(warmup):
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ModelEma(model, DECAY, warmup)
    average, decays = 0.0, expected_decays(warmup, 1000)  # long enough to reach DECAY
    for t, d in enumerate(decays, start=1):
        assert ema.current_decay() == pytest.approx(d)
        with torch.no_grad():
            model.weight.fill_(float(t))  # the weight after step t
        ema.update(model)
        average = d * average + (1 - d) * t
        assert ema.module.weight.item() == pytest.approx(average, rel=1e-5)  # float32 accumulates
    if warmup != "tf":
        assert decays[0] == 0.0  # timm's average starts as the weights after the first step
    assert max(decays) == DECAY


def test_an_unknown_warmup_and_one_without_ema_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="warmup must be one of"):
        ModelEma(nn.Linear(1, 1), DECAY, "linear")
    message = "--ema-warmup timm (set on the command line) is used by --ema only: add --ema"
    assert message in failed_train([*TINY, "--ema-warmup", "timm", "--out", str(tmp_path / "run")], capsys)


def test_a_run_averages_with_timms_warmup(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--ema", "--ema-warmup", "timm", "--out", str(out)]) == 0
    assert "ema_warmup: timm" in (out / "config.yaml").read_text()
