"""--clip-mode norm|value|agc (timm's): what --clip-grad bounds. Adaptive gradient clipping is checked against the
NFNet paper's rule written out in numpy, unit by unit; the step against SGD applied by hand."""
import numpy as np
import pytest
import torch
from torch import nn

from mobileconv.cli import main
from mobileconv.engine.loop import backward_and_step
from mobileconv.engine.optim import adaptive_clip_grad, clip_gradients

from .helpers import TINY, failed_train


def agc_written_out(w, g, factor, eps=1e-3):
    """Each unit (a row of the flattened weight; the whole tensor for a vector): G * min(1, f max(|W|, eps) / |G|)."""
    w, g = w.double().numpy(), g.double().numpy()
    rows = (w.reshape(1, -1), g.reshape(1, -1)) if w.ndim <= 1 else (w.reshape(len(w), -1), g.reshape(len(g), -1))
    out = []
    for wu, gu in zip(*rows):
        limit = factor * max(np.linalg.norm(wu), eps)
        norm = np.linalg.norm(gu)
        out.append(gu if norm < limit else gu * limit / max(norm, 1e-6))
    return torch.from_numpy(np.stack(out).reshape(g.shape))


@pytest.mark.parametrize("shape", [(6, 3, 3, 3), (5, 7), (9,)])
def test_adaptive_clipping_matches_the_rule_unit_by_unit(shape):
    g = torch.Generator().manual_seed(len(shape))
    p = nn.Parameter(torch.randn(shape, generator=g))
    # half of the units get gradients far above 0.05 of their weights' norm, the others far below
    scale = torch.where(torch.arange(shape[0]) % 2 == 0, 10.0, 1e-4).view(-1, *[1] * (len(shape) - 1))
    p.grad = torch.randn(shape, generator=g) * (scale if len(shape) > 1 else 1.0)
    expected, before = agc_written_out(p.detach(), p.grad, 0.05), p.grad.clone()
    adaptive_clip_grad([p], 0.05)
    torch.testing.assert_close(p.grad.double(), expected, rtol=1e-5, atol=1e-7)
    if len(shape) > 1:  # the small gradients are left as they were, the large ones clipped
        assert torch.equal(p.grad[1::2], before[1::2]) and not torch.allclose(p.grad[::2], before[::2])


def test_value_mode_clamps_each_element_and_norm_mode_the_global_norm():
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2, 2))
    a.grad, b.grad = torch.tensor([3.0, -0.2, -4.0]), torch.tensor([[0.5, -2.0], [0.0, 1.5]])
    clip_gradients([a, b], 1.0, "value")
    torch.testing.assert_close(a.grad, torch.tensor([1.0, -0.2, -1.0]))
    torch.testing.assert_close(b.grad, torch.tensor([[0.5, -1.0], [0.0, 1.0]]))
    clip_gradients([a, b], 0.5, "norm")
    total = torch.cat([a.grad, b.grad.flatten()]).norm()
    assert total.item() == pytest.approx(0.5, rel=1e-5)
    with pytest.raises(ValueError, match="mode must be one of"):
        clip_gradients([a], 1.0, "elementwise")


def test_the_step_applies_the_clipped_gradient():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x = torch.randn(8, 4) * 50
    loss = model(x).square().mean()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expected = [p.detach() - agc_written_out(p.detach(), gr, 0.02).float() for p, gr in zip(model.parameters(), grads)]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    backward_and_step(model(x).square().mean(), model, optimizer, None, 0.02, "agc")
    for p, want in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=1e-6)


def test_a_run_clips_adaptively_and_clip_mode_needs_clip_grad(tmp_path, capsys):
    assert main(["train", *TINY, "--epochs", "1", "--clip-grad", "0.01", "--clip-mode", "agc",
                 "--out", str(tmp_path / "run")]) == 0
    message = "--clip-mode agc (set on the command line) says how --clip-grad clips, which is off: add --clip-grad"
    assert message in failed_train([*TINY, "--clip-mode", "agc", "--out", str(tmp_path / "bad")], capsys)
