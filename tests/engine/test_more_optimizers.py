"""--opt momentum, nadamw, lamb, lion and lars / larc / nlars / nlarc (timm's names), each step against its update
written out from the paper."""
import math

import pytest
import torch

from mobileconv.cli import main
from mobileconv.engine.optim import Lamb, Lars, Lion, create_optimizer

from .helpers import ONE_EPOCH, failed_train
from .test_optim import small_model

WD = 0.1


def two_steps(opt: str, lr: float, **options):
    """Two steps of ``opt`` on small_model with random gradients; the weights before, the gradients and the weights
    after each step, of a decayed tensor (the conv weight) and one without decay (the BN scale)."""
    torch.manual_seed(0)
    model = small_model()
    optimizer = create_optimizer(model, opt, lr=lr, weight_decay=WD, **options)
    params = dict(model.named_parameters())
    start = {name: params[name].detach().clone() for name in ("0.weight", "1.weight")}
    grads, after = [], []
    for _ in range(2):
        step = {name: torch.randn_like(p) for name, p in params.items()}
        for name, p in params.items():
            p.grad = step[name].clone()
        optimizer.step()
        grads.append(step)
        after.append({name: params[name].detach().clone() for name in start})
    return optimizer, start, grads, after


def test_momentum_is_sgd_without_nesterov():
    optimizer, start, grads, after = two_steps("momentum", 0.1)
    assert type(optimizer) is torch.optim.SGD and not optimizer.defaults["nesterov"]
    for name, decay in (("0.weight", WD), ("1.weight", 0.0)):
        p, buf = start[name].clone(), torch.zeros_like(start[name])
        for grad, expected in zip(grads, after):  # Polyak's heavy ball: buf = 0.9 buf + g, p -= lr buf
            buf = 0.9 * buf + grad[name] + decay * p
            p = p - 0.1 * buf
            torch.testing.assert_close(expected[name], p)


def test_nadamw_is_torchs_nadam_with_decoupled_decay():
    optimizer, start, grads, after = two_steps("nadamw", 0.002)
    assert type(optimizer) is torch.optim.NAdam and optimizer.defaults["decoupled_weight_decay"]
    reference = torch.nn.Parameter(start["0.weight"].clone())
    plain = torch.optim.NAdam([reference], lr=0.002, weight_decay=0.0)
    for grad, expected in zip(grads, after):  # decoupled: p *= 1 - lr wd first, then NAdam's step on the gradient
        with torch.no_grad():
            reference.mul_(1 - 0.002 * WD)
        reference.grad = grad["0.weight"].clone()
        plain.step()
        torch.testing.assert_close(expected["0.weight"], reference.detach())


def test_lion_steps_as_in_the_paper():
    # Chen et al. 2023, Algorithm 2
    optimizer, start, grads, after = two_steps("lion", 3e-4)
    assert type(optimizer) is Lion and optimizer.defaults["betas"] == (0.9, 0.99)
    for name, decay in (("0.weight", WD), ("1.weight", 0.0)):
        p, m = start[name].clone(), torch.zeros_like(start[name])
        for grad, expected in zip(grads, after):
            g = grad[name]
            p = p - 3e-4 * (torch.sign(0.9 * m + 0.1 * g) + decay * p)
            m = 0.99 * m + 0.01 * g
            torch.testing.assert_close(expected[name], p)


def test_lamb_steps_as_in_the_paper_with_timms_global_clipping():
    # You et al. 2020, Algorithm 2 (phi = identity), after the gradients are divided by max(1, global norm / 1)
    optimizer, start, grads, after = two_steps("lamb", 0.005)
    assert type(optimizer) is Lamb and optimizer.defaults["eps"] == 1e-6
    state = {name: (start[name].clone(), torch.zeros_like(start[name]), torch.zeros_like(start[name]))
             for name in start}
    for t, (grad, expected) in enumerate(zip(grads, after), 1):
        clip = max(1.0, math.sqrt(sum(float(g.square().sum()) for g in grad.values())))
        for name, decay in (("0.weight", WD), ("1.weight", 0.0)):
            p, m, v = state[name]
            g = grad[name] / clip
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            update = (m / (1 - 0.9 ** t)) / ((v / (1 - 0.999 ** t)).sqrt() + 1e-6) + decay * p
            ratio = p.norm() / update.norm() if decay else 1.0  # tensors without decay keep Adam's step (timm)
            p = p - 0.005 * ratio * update
            state[name] = p, m, v
            torch.testing.assert_close(expected[name], p)


@pytest.mark.parametrize("opt", ["lars", "larc", "nlars", "nlarc"])
def test_lars_steps_as_in_the_paper_with_timms_variants(opt):
    # You et al. 2017, Algorithm 1 (trust coefficient 0.001), SGD momentum after the scaling; LARC (Apex) clips the
    # ratio over lr at 1; n-: Nesterov momentum
    lr = 0.5
    optimizer, start, grads, after = two_steps(opt, lr)
    assert type(optimizer) is Lars
    for name, decay in (("0.weight", WD), ("1.weight", 0.0)):
        p, buf = start[name].clone(), None
        for grad, expected in zip(grads, after):
            g = grad[name]
            if decay:  # tensors without weight decay take the plain SGD step (timm)
                ratio = 0.001 * p.norm() / (g.norm() + decay * p.norm() + 1e-8)
                if "larc" in opt:
                    ratio = min(ratio / lr, 1.0)
                g = ratio * (g + decay * p)
            buf = g.clone() if buf is None else 0.9 * buf + g
            p = p - lr * (g + 0.9 * buf if opt.startswith("n") else buf)
            torch.testing.assert_close(expected[name], p)


def test_a_zero_weight_or_update_keeps_a_trust_ratio_of_one():
    weight = torch.nn.Parameter(torch.zeros(3, 3))
    optimizer = Lamb([weight], lr=0.1, weight_decay=0.1)
    weight.grad = torch.full((3, 3), 0.1)  # global norm 0.3: not clipped
    optimizer.step()  # ||p|| = 0: the update is Adam's first step, m_hat / (|m_hat| + eps) = 1 - 1e-5 per element
    torch.testing.assert_close(weight.detach(), torch.full((3, 3), -0.1 * 0.1 / (0.1 + 1e-6)))


@pytest.mark.parametrize("opt, refused", [("momentum", "--opt-eps"), ("lion", "--opt-eps"), ("lion", "--momentum"),
                                          ("lamb", "--momentum"), ("lars", "--opt-betas")])
def test_each_refuses_the_settings_it_has_not(opt, refused, capsys):
    value = ["0.9", "0.99"] if refused == "--opt-betas" else ["0.9"]
    err = failed_train([*ONE_EPOCH, "--opt", opt, refused, *value], capsys)
    assert f"{refused} {' '.join(value)} (set on the command line) is not used by --opt {opt}" in err


@pytest.mark.parametrize("opt", ["momentum", "nadamw", "lamb", "lion", "nlarc"])
def test_a_run_trains_and_resumes_with_each(opt, tmp_path):
    out = tmp_path / opt
    assert main(["train", *ONE_EPOCH, "--opt", opt, "--out", str(out)]) == 0
    assert f"opt: {opt}\n" in (out / "config.yaml").read_text()
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0


def test_every_opt_choice_has_its_defaults_and_settings():
    from mobileconv.engine.config import OPTIMIZER_OPTIONS, OPTIMIZERS
    from mobileconv.engine.optim import DEFAULT_BETAS, DEFAULT_EPS, DEFAULT_LR, DEFAULT_MOMENTUM

    assert tuple(DEFAULT_LR) == OPTIMIZERS == tuple(OPTIMIZER_OPTIONS)
    for opt in OPTIMIZERS:  # an option is accepted exactly where the optimizer has a default for it
        has = {"momentum": DEFAULT_MOMENTUM[opt], "opt_eps": DEFAULT_EPS[opt], "opt_betas": DEFAULT_BETAS[opt]}
        assert set(OPTIMIZER_OPTIONS[opt]) == {name for name, value in has.items() if value is not None}, opt
