"""Audit of the training recipe: a momentum turned on when a run is resumed, AMP grad scaling with clipping.

Expected values come from TensorFlow's RMSProp update written out, from torch.optim.RMSprop itself, or from
clipping written out on unscaled gradients; never from the code under test.
"""
import pytest
import torch
from torch import nn

from mobileconv.cli import main
from mobileconv.engine.checkpoint import load_state
from mobileconv.engine.loop import backward_and_step
from mobileconv.engine.optim import RMSpropTF, create_optimizer

from .helpers import MODEL

# one step per epoch: 16 training images, batch 16
QUICK = ["--model", MODEL, "--data", "synthetic", "--img-size", "16", "--max-train-samples", "16",
         "--max-val-samples", "8", "--batch-size", "16", "--quiet"]


# ---- a momentum turned on after steps without one (--momentum given on resume) ----------------------------


def steps(optimizer, param, grads):
    for g in grads:
        param.grad = g.clone()
        optimizer.step()


def test_rmsproptf_momentum_turned_on_later_starts_from_zero_as_tensorflow_would():
    torch.manual_seed(0)
    p0 = torch.randn(4, 3, dtype=torch.float64)
    grads = [torch.randn(4, 3, dtype=torch.float64) for _ in range(5)]
    lr, alpha, eps = 0.02, 0.9, 1e-3
    param = nn.Parameter(p0.clone())
    opt = RMSpropTF([param], lr=lr, momentum=0.0)
    steps(opt, param, grads[:2])
    opt.param_groups[0]["momentum"] = 0.9
    steps(opt, param, grads[2:])
    # oracle: TF's update; without momentum p -= lr g / sqrt(ms + eps), then mom starts at 0
    p, ms, mom = p0.clone(), torch.ones_like(p0), torch.zeros_like(p0)
    for i, g in enumerate(grads):
        ms = alpha * ms + (1 - alpha) * g * g
        if i < 2:
            p = p - lr * g / torch.sqrt(ms + eps)
        else:
            mom = 0.9 * mom + lr * g / torch.sqrt(ms + eps)
            p = p - mom
    torch.testing.assert_close(param.detach(), p, rtol=1e-12, atol=1e-12)


def test_torch_rmsprop_momentum_turned_on_later_continues_as_torch_with_a_zero_buffer():
    torch.manual_seed(1)
    grads = [torch.randn(3, 2) for _ in range(5)]
    model = nn.Linear(2, 3, bias=False)
    opt = create_optimizer(model, "rmsprop", lr=0.01, weight_decay=0.0, momentum=0.0)
    steps(opt, model.weight, grads[:2])
    # oracle: torch.optim.RMSprop with momentum 0.9 from the same step count and mean square, buffer 0
    ref = nn.Parameter(model.weight.detach().clone())
    oracle = torch.optim.RMSprop([ref], lr=0.01, alpha=0.9, eps=1e-3 ** 0.5, momentum=0.9)
    saved = opt.state[model.weight]
    oracle.state[ref] = {"step": saved["step"].clone(), "square_avg": saved["square_avg"].clone(),
                         "momentum_buffer": torch.zeros_like(ref)}
    for group in opt.param_groups:
        group["momentum"] = 0.9
    steps(opt, model.weight, grads[2:])
    steps(oracle, ref, grads[2:])
    torch.testing.assert_close(model.weight.detach(), ref.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("opt", ["rmsproptf", "rmsprop"])
def test_a_run_trained_without_momentum_resumes_with_one(opt, tmp_path, capsys):
    # README: a --momentum given with --resume replaces the saved value while the optimizer's buffers carry on
    run = tmp_path / "run"
    assert main(["train", *QUICK, "--opt", opt, "--momentum", "0", "--epochs", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--momentum", "0.9", "--quiet"]) == 0, \
        capsys.readouterr().err
    state = load_state(run / "state.pt")
    assert state["epoch"] == 2
    assert all(g["momentum"] == 0.9 for g in state["optimizer"]["param_groups"])
    buffers = [s["momentum_buffer"] for s in state["optimizer"]["state"].values()]
    assert buffers and all(torch.isfinite(b).all() and b.abs().sum() > 0 for b in buffers)


# ---- AMP grad scaling with clipping ------------------------------------------------------------------------


def test_fp16_grad_scaler_unscales_before_clipping():
    torch.manual_seed(2)
    model, x = nn.Linear(4, 3), torch.randn(8, 4)
    ref = nn.Linear(4, 3)
    ref.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    backward_and_step(model(x).square().sum(), model, opt, scaler, clip_grad=0.5)
    # oracle: the unscaled gradients clipped to a global 2-norm of 0.5 by hand, then plain SGD
    ref(x).square().sum().backward()
    grads = [p.grad for p in ref.parameters()]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert norm > 0.5  # clipping acts
    with torch.no_grad():
        for p, g in zip(ref.parameters(), grads):
            p -= 0.1 * g * (0.5 / (norm + 1e-6))
    for mine, theirs in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(mine, theirs)

