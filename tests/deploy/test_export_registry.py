"""Every registered model exports to ONNX and TorchScript and the files reproduce PyTorch.

The exported files are checked here independently of ``export_model``'s own check: loaded
with onnxruntime / ``torch.jit.load`` directly, run on a batch of 3 (the export example has 2,
so the dynamic batch is exercised) and compared with the eager model in numpy.
"""
from __future__ import annotations

import pytest
import torch

import mobileconv
from mobileconv.deploy.export import export_model

from ._export_helpers import TOL, eager, make_model, ort_run, rel_err, test_size

MODELS = mobileconv.list_models()
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def test_registry_is_covered():
    assert len(MODELS) >= 20


@pytest.mark.parametrize("name", MODELS)
def test_onnx_matches_pytorch(name, tmp_path):
    model = make_model(name)
    size = test_size(name)
    path = tmp_path / f"{name}.onnx"
    result = export_model(model, path, "onnx", input_size=size, batch_size=2)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    import onnx

    graph_input = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert graph_input[0].dim_param and [d.dim_value for d in graph_input[1:]] == [3, size, size]
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    expected = eager(model, x)
    # a meaningful output: large, and different for each image (not a constant the export could match)
    assert expected.abs().max() > 0.1 and (expected - expected[0]).abs().max() > 0.1
    assert rel_err(expected, ort_run(path, x)) <= TOL
    assert result.rel_err <= TOL and result.optimized and result.notes == ()


@pytest.mark.parametrize("name", MODELS)
def test_torchscript_matches_pytorch(name, tmp_path):
    model = make_model(name)
    size = test_size(name)
    path = tmp_path / f"{name}.pt"
    result = export_model(model, path, "torchscript", input_size=size)
    assert result.method == "torch.jit.script"  # scripted, so not tied to the export shape
    loaded = torch.jit.load(str(path))
    x = torch.randn(3, 3, size + 8, size, generator=torch.Generator().manual_seed(1))  # another batch and height
    with torch.no_grad():
        assert rel_err(eager(model, x), loaded(x)) <= TOL
