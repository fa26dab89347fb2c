"""EMA of weights against the recurrence written out by hand."""
import torch
from torch import nn

from mobileconv.engine import ModelEma


def test_ema_follows_the_warmed_up_recurrence_and_copies_buffers():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEma(model, decay=0.9)
    w0 = model[0].weight.detach().clone()
    expected = w0.clone()
    for step in range(3):
        with torch.no_grad():
            model[0].weight.add_(1.0)
            model[1].running_mean.add_(0.5)
        t = step + 1  # TF's num_updates = global_step, counted before the EMA is applied
        d = min(0.9, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * model[0].weight.detach()
        ema.update(model)
    torch.testing.assert_close(ema.module[0].weight, expected)
    torch.testing.assert_close(ema.module[1].running_mean, model[1].running_mean)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_state_round_trip():
    model = nn.Linear(3, 2)
    ema = ModelEma(model, decay=0.99)
    ema.update(model)
    other = ModelEma(nn.Linear(3, 2), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1
    assert other.decay == 0.5  # a setting, not state: a resumed run may change --ema-decay
    torch.testing.assert_close(other.module.weight, ema.module.weight)
