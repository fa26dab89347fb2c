"""Shared pieces of the export tests: models with non-trivial weights and an independent comparison."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

import mobileconv

TOL = 1e-4


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics / affine terms and a unit-scale classifier, so that BN folding matters.

    Freshly built models have identity BNs and a tiny classifier (logits ~1e-8): an export that
    dropped a BN or scrambled a channel group would still "match" them.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / m.in_features ** 0.5)
    return model.eval()


def make_model(name: str, seed: int = 0, **kwargs) -> nn.Module:
    """``name`` with weights drawn from ``seed``, randomised, and BN statistics measured on random images.

    With made-up running statistics the activations shrink layer after layer until the logits no
    longer depend on the input (a constant an export could match without computing anything);
    statistics measured on a batch keep every layer's output at unit scale, as after training.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = randomize_(mobileconv.create_model(name, **kwargs), seed)
        size = test_size(name)
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        momenta = [bn.momentum for bn in bns]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average: one batch sets the statistics
        model.train()
        with torch.no_grad():
            model(torch.randn(8, getattr(model, "in_chans", 3), size, size))
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
    return model.eval()


def test_size(name: str) -> int:
    """Small input: 32 px for the CIFAR forms, 64 px for the ImageNet forms."""
    return 32 if name.endswith("_cifar") else 64


test_size.__test__ = False  # a helper, not a test


def rel_err(expected, actual) -> float:
    """``max|a - b| / max(1, max|a|)``, computed here in numpy (not with the code under test)."""
    a = np.asarray(expected.detach() if isinstance(expected, torch.Tensor) else expected, dtype=np.float64)
    b = np.asarray(actual.detach() if isinstance(actual, torch.Tensor) else actual, dtype=np.float64)
    assert a.shape == b.shape, f"shape {b.shape} != expected {a.shape}"
    return float(np.abs(a - b).max() / max(1.0, np.abs(a).max()))


def ort_run(path, x: torch.Tensor) -> np.ndarray:
    """Run an ONNX file in a fresh onnxruntime session (one thread), input by the graph's own name."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


@torch.no_grad()
def eager(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.eval()(x)


def small_model() -> nn.Module:
    """conv -> BN -> ReLU -> pool -> linear with random BN terms (so folding matters) and unit-scale logits."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    return randomize_(model)


def seeded_randn(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
