"""Optimizer construction and the warm-up + cosine schedule against closed forms."""
import math

import pytest
import torch
from torch import nn

from mobileconv.cli import main
from mobileconv.engine.optim import create_optimizer, param_groups_weight_decay

from .helpers import TINY, failed_train, scheduled_lrs


def small_model():
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 4))


def test_no_weight_decay_on_norm_layers_and_biases():
    model = small_model()
    decay, no_decay = param_groups_weight_decay(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == ["0.weight", "4.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == ["1.bias", "1.weight", "4.bias"]
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)


def test_rmsprop_uses_the_paper_settings():
    opt = create_optimizer(small_model(), "rmsprop", lr=0.01, weight_decay=1e-5)
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.RMSprop)
    assert (group["alpha"], group["momentum"]) == (0.9, 0.9) and group["eps"] == pytest.approx(math.sqrt(1e-3))


def test_sgd_is_nesterov_and_adamw_decoupled():
    sgd = create_optimizer(small_model(), "sgd", lr=0.1, weight_decay=1e-4)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["nesterov"]
    assert isinstance(create_optimizer(small_model(), "adamw", lr=1e-3, weight_decay=0.05), torch.optim.AdamW)
    with pytest.raises(ValueError, match="--opt must be one of sgd, momentum, rmsprop, rmsproptf, adamw, adam, nadam, "
                                         "radam, nadamw, lamb, lion, lars, larc, nlars, nlarc, got .adabelief."):
        create_optimizer(small_model(), "adabelief", lr=0.1, weight_decay=0)


def test_adam_steps_as_written_out_with_its_weight_decay_in_the_gradient():
    # Kingma & Ba 2015, Algorithm 1, with timm's / torch's coupled L2 decay: g = grad + wd * p on decayed weights only
    model = small_model()
    opt = create_optimizer(model, "adam", lr=0.01, weight_decay=0.1)
    params = dict(model.named_parameters())
    w, b = params["0.weight"].detach().clone(), params["1.weight"].detach().clone()
    m_w, v_w, m_b, v_b = (torch.zeros_like(t) for t in (w, w, b, b))
    for t in (1, 2):
        grads = {name: torch.randn_like(p) for name, p in params.items()}
        for name, p in params.items():
            p.grad = grads[name].clone()
        opt.step()
        for value, grad, m, v, decay in ((w, grads["0.weight"] + 0.1 * w, m_w, v_w, True),
                                         (b, grads["1.weight"], m_b, v_b, False)):
            m.mul_(0.9).add_(0.1 * grad)
            v.mul_(0.999).add_(0.001 * grad * grad)
            m_hat, v_hat = m / (1 - 0.9 ** t), v / (1 - 0.999 ** t)
            value -= 0.01 * m_hat / (v_hat.sqrt() + 1e-8)
        torch.testing.assert_close(params["0.weight"].detach(), w)
        torch.testing.assert_close(params["1.weight"].detach(), b)


@pytest.mark.parametrize("name, kind", [("nadam", torch.optim.NAdam), ("radam", torch.optim.RAdam)])
def test_nadam_and_radam_are_torchs_with_coupled_decay_on_weights_only(name, kind):
    opt = create_optimizer(small_model(), name, lr=0.002, weight_decay=1e-5)
    assert type(opt) is kind and opt.defaults["eps"] == 1e-8 and not opt.defaults["decoupled_weight_decay"]
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-5, 0.0]
    with pytest.raises(ValueError, match=f"--momentum 0.9 is not used by --opt {name}"):
        create_optimizer(small_model(), name, lr=0.002, weight_decay=0, momentum=0.9)


def test_decay_skips_bn_in_an_actual_step():
    model = small_model()
    opt = create_optimizer(model, "sgd", lr=0.5, weight_decay=0.1, momentum=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = dict(model.named_parameters())
    torch.testing.assert_close(after["0.weight"], before["0.weight"] * (1 - 0.5 * 0.1))
    torch.testing.assert_close(after["1.weight"], before["1.weight"])


def test_warmup_cosine_schedule_matches_the_formula():
    lr, min_lr, epochs, steps, warmup_epochs = 0.2, 0.002, 4, 5, 1
    seen, after = scheduled_lrs(epochs, steps, warmup_epochs, lr, min_lr)
    warm, total = warmup_epochs * steps, epochs * steps
    for t, value in enumerate(seen):
        if t < warm:
            expected = lr * (0.01 + 0.99 * t / warm)
        else:
            expected = min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * (t - warm) / (total - warm)))
        assert value == pytest.approx(expected), t
    assert seen[warm] == pytest.approx(lr) and after == pytest.approx(min_lr)


@pytest.mark.parametrize("opt, cls", [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam),
                                      ("nadam", torch.optim.NAdam), ("radam", torch.optim.RAdam)])
def test_opt_betas_reach_the_adam_family_and_other_optimizers_refuse_them(opt, cls):
    optimizer = create_optimizer(small_model(), opt, lr=1e-3, weight_decay=0.0, betas=(0.8, 0.95))
    assert isinstance(optimizer, cls) and all(g["betas"] == (0.8, 0.95) for g in optimizer.param_groups)
    assert create_optimizer(small_model(), opt, lr=1e-3, weight_decay=0.0).param_groups[0]["betas"] == (0.9, 0.999)
    with pytest.raises(ValueError, match=r"--opt-betas must be two numbers in \[0, 1\)"):
        create_optimizer(small_model(), opt, lr=1e-3, weight_decay=0.0, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="--opt-betas .* is not used by --opt sgd"):
        create_optimizer(small_model(), "sgd", lr=1e-3, weight_decay=0.0, betas=(0.8, 0.95))


def test_opt_betas_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--opt", "adam", "--opt-betas", "0.8", "0.95",
                 "--out", str(out)]) == 0
    assert "opt_betas:\n- 0.8\n- 0.95" in (out / "config.yaml").read_text()
    err = failed_train([*TINY, "--opt-betas", "0.8", "0.95", "--out", str(tmp_path / "bad")], capsys)
    assert "--opt-betas 0.8 0.95 (set on the command line) is not used by --opt sgd" in err
