"""Audit (session 14) of export: models the user already passed through ``optimize_for_inference``.

Oracles: the eager model the optimised copy was made from, run in PyTorch, and the written file
loaded directly (onnxruntime's own ``InferenceSession``, ``torch.jit.load``, ``torch.export.load``),
compared in numpy (``_export_helpers.rel_err``), never ``export_model``'s own check.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import mobileconv
from mobileconv.deploy.export import export_model
from mobileconv.deploy.optimize import MicroBatchedMobileNet, MicroBatchedStages

from ._export_helpers import TOL, eager, make_model, ort_run, rel_err, seeded_randn

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def _load(path, fmt):
    if fmt == "onnx":
        return lambda x: torch.from_numpy(ort_run(path, x))
    if fmt == "torchscript":
        return torch.jit.load(str(path))
    return torch.export.load(str(path)).module()


@pytest.mark.parametrize(("fmt", "suffix"), [("exported-program", ".pt2"), ("onnx", ".onnx"), ("torchscript", ".pt")])
def test_a_model_optimized_for_inference_exports_with_a_dynamic_batch(fmt, suffix, tmp_path):
    """optimize_for_inference micro-batches on CPU by default; as an exported program that failed with
    'exported-program export failed: Constraints violated (batch)' (the chunk plan guards on the batch)."""
    model = make_model("mobilenetv3_small_100_cifar")
    fast = mobileconv.optimize_for_inference(model)
    assert type(fast) is MicroBatchedMobileNet
    path = tmp_path / f"m{suffix}"
    export_model(fast, path, fmt, input_size=32)
    assert type(fast) is MicroBatchedMobileNet  # the user's optimised model is not changed
    run = _load(path, fmt)
    for batch in (1, 5):
        x = seeded_randn(batch, 3, 32, 32, seed=batch)
        expected = eager(model, x)
        assert expected.abs().max() > 0.1
        with torch.no_grad():
            assert rel_err(expected, run(x)) <= TOL


class _Stages(nn.Module):
    """Not a MobileNet, but with a ``blocks`` Sequential of stages: micro-batched as MicroBatchedStages."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU()))
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(x).mean((2, 3)))


def test_a_model_with_micro_batched_stages_exports_as_an_exported_program(tmp_path):
    torch.manual_seed(0)
    model = _Stages().eval()
    with torch.no_grad():
        for bn in (model.blocks[0][1], model.blocks[1][1]):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    fast = mobileconv.optimize_for_inference(model, example_input=seeded_randn(2, 3, 16, 16))
    assert type(fast.blocks) is MicroBatchedStages
    path = tmp_path / "m.pt2"
    export_model(fast, path, "exported-program", input_size=16)  # was: Constraints violated (batch)
    x = seeded_randn(4, 3, 16, 16)
    expected = eager(model, x)
    assert expected.abs().max() > 0.1
    with torch.no_grad():
        assert rel_err(expected, torch.export.load(str(path)).module()(x)) <= TOL


def test_torch_export_of_an_optimized_model_keeps_the_batch_dynamic():
    """``torch.export.export`` called directly (not through export_model) on a micro-batched model: the chunk plan
    made 'Constraints violated (batch)'; under export the stages run on the whole batch."""
    model = make_model("mobilenetv3_small_100_cifar")
    fast = mobileconv.optimize_for_inference(model)
    program = torch.export.export(fast, (seeded_randn(2, 3, 32, 32),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    for batch in (1, 5, 40):  # 40: more than one chunk in eager mode
        x = seeded_randn(batch, 3, 32, 32)
        assert rel_err(program.module()(x), eager(model, x)) < TOL
