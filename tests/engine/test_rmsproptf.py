"""RMSpropTF (``--opt rmsproptf``) against TensorFlow 1's RMSProp update written out by hand."""
import math

import pytest
import torch
from torch import nn

from mobileconv.engine.optim import RMSpropTF, create_optimizer


def tf_rmsprop_steps(p0, grads, lrs, alpha=0.9, eps=1e-3, momentum=0.9, weight_decay=0.0):
    """``tf.compat.v1.train.RMSPropOptimizer`` (centered=False): ms starts at 1, eps inside the root, lr in momentum."""
    p, ms, mom = p0.clone(), torch.ones_like(p0), torch.zeros_like(p0)
    for g, lr in zip(grads, lrs):
        g = g + weight_decay * p
        ms = alpha * ms + (1 - alpha) * g * g
        mom = momentum * mom + lr * g / torch.sqrt(ms + eps)
        p = p - mom
    return p


@pytest.mark.parametrize("momentum, weight_decay", [(0.9, 0.0), (0.9, 0.01), (0.0, 0.0)])
def test_steps_match_tensorflow_rmsprop_while_the_lr_changes(momentum, weight_decay):
    torch.manual_seed(0)
    p0 = torch.randn(5, 3, dtype=torch.float64)
    grads = [torch.randn(5, 3, dtype=torch.float64) * 0.1 for _ in range(6)]
    lrs = [0.01, 0.02, 0.05, 0.05, 0.03, 0.001]  # a warm-up, then decay: the lr inside momentum matters
    param = nn.Parameter(p0.clone())
    opt = RMSpropTF([param], lr=lrs[0], momentum=momentum, weight_decay=weight_decay)
    for g, lr in zip(grads, lrs):
        opt.param_groups[0]["lr"] = lr
        param.grad = g.clone()
        opt.step()
    expected = tf_rmsprop_steps(p0, grads, lrs, momentum=momentum, weight_decay=weight_decay)
    torch.testing.assert_close(param.detach(), expected, rtol=1e-12, atol=1e-12)


def test_first_step_is_about_lr_times_the_gradient_unlike_torch_rmsprop():
    """TF starts the mean square at 1: a first step of lr * g / sqrt(0.9 + 0.1 g^2 + eps), ~lr * g for small g.

    torch.optim.RMSprop starts it at 0: lr * g / (sqrt(0.1) |g| + sqrt(1e-3)), 30 times that for g = 1e-3.
    """
    g, lr = 1e-3, 0.01
    tf, pt = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    tf.grad, pt.grad = torch.full((1,), g), torch.full((1,), g)
    RMSpropTF([tf], lr=lr).step()
    torch.optim.RMSprop([pt], lr=lr, alpha=0.9, eps=math.sqrt(1e-3), momentum=0.9).step()
    assert -tf.item() == pytest.approx(lr * g / math.sqrt(0.9 + 0.1 * g * g + 1e-3), rel=1e-6)
    assert -pt.item() == pytest.approx(lr * g / (math.sqrt(0.1) * g + math.sqrt(1e-3)), rel=1e-5)
    assert -pt.item() > 25 * -tf.item()


def test_resumed_from_its_state_dict_it_continues_the_same_steps():
    torch.manual_seed(1)
    grads = [torch.randn(4) for _ in range(5)]
    whole, resumed = nn.Parameter(torch.ones(4)), nn.Parameter(torch.ones(4))
    opt = RMSpropTF([whole], lr=0.05, weight_decay=1e-3)
    for g in grads:
        whole.grad = g.clone()
        opt.step()
    first = RMSpropTF([resumed], lr=0.05, weight_decay=1e-3)
    for g in grads[:2]:
        resumed.grad = g.clone()
        first.step()
    state = first.state_dict()
    second = RMSpropTF([resumed], lr=0.05, weight_decay=1e-3)
    second.load_state_dict(state)
    for g in grads[2:]:
        resumed.grad = g.clone()
        second.step()
    torch.testing.assert_close(resumed.detach(), whole.detach(), rtol=0, atol=0)


def test_create_optimizer_builds_it_with_the_paper_settings_and_decay_groups():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    opt = create_optimizer(model, "rmsproptf", lr=0.016, weight_decay=1e-5)
    assert isinstance(opt, RMSpropTF)
    decay, no_decay = opt.param_groups
    assert (decay["alpha"], decay["momentum"], decay["eps"], decay["lr"]) == (0.9, 0.9, 1e-3, 0.016)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (1e-5, 0.0)
    with pytest.raises(ValueError, match="--opt-eps must be a finite number > 0"):
        create_optimizer(model, "rmsproptf", lr=0.01, weight_decay=0, eps=0.0)
    with pytest.raises(ValueError, match="RMSpropTF: alpha and momentum must be in"):
        RMSpropTF(model.parameters(), momentum=1.0)
