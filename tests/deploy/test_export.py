"""export_model: formats, dynamic / static shapes, operator implementations, the reference checkpoint, failures."""
from __future__ import annotations

import functools

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import mobileconv
from mobileconv.deploy.export import ExportCheckError, ExportError, export_model, relative_error
from mobileconv.deploy.onnxrt import OrtModel, make_ort_callable
from mobileconv.layers import MixConv2d, XSepConv2d, set_layer_impl

from ._export_helpers import TOL, eager, make_model, ort_run, rel_err, test_size

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def _randn(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- the tolerance measure ---------------------------------------------------------------------------

def test_relative_error_is_absolute_below_one_and_relative_above():
    small = torch.tensor([0.5, -0.25], dtype=torch.float64)
    diff, rel = relative_error(small, small + torch.tensor([0.0, 1e-3], dtype=torch.float64))
    assert diff == pytest.approx(1e-3) and rel == pytest.approx(1e-3)  # max|a| < 1: divided by 1
    large = torch.tensor([40.0, -80.0], dtype=torch.float64)
    diff, rel = relative_error(large, large + torch.tensor([2e-3, 0.0], dtype=torch.float64))
    assert diff == pytest.approx(2e-3) and rel == pytest.approx(2e-3 / 80)
    assert relative_error(small, torch.tensor([float("nan"), 0.0]))[1] == float("inf")
    assert relative_error(small, torch.zeros(3))[1] == float("inf")  # shape mismatch never passes


# --- the timm reference checkpoint --------------------------------------------------------------------

def test_mixnet_s_reference_checkpoint_in_onnxruntime(reference_dir, tmp_path):
    """timm's mixnet_s weights -> ONNX -> onnxruntime reproduces timm's own logits."""
    model = mobileconv.create_model("mixnet_s", pretrained=reference_dir / "timm_mixnet_s.safetensors")
    io = load_file(reference_dir / "timm_mixnet_s.io.safetensors")
    path = tmp_path / "mixnet_s.onnx"
    export_model(model, path, "onnx", input_size=224)
    logits = ort_run(path, io["x"])
    assert logits.shape == tuple(io["logits"].shape)
    assert float(abs(torch.from_numpy(logits) - io["logits"]).max()) <= 1e-3


# --- formats and shapes ---------------------------------------------------------------------------------

# XSepConv: test_export_cli.py exports an XSep model as an exported program
@pytest.mark.parametrize("name", ["mixnet_s_cifar", "tf_mixnet_s"])
def test_exported_program_matches_pytorch(name, tmp_path):
    model = make_model(name)
    size = test_size(name)
    path = tmp_path / f"{name}.pt2"
    result = export_model(model, path, "exported-program", input_size=size)
    assert result.method == "torch.export" and [p.name for p in tmp_path.iterdir()] == [path.name]
    program = torch.export.load(str(path)).module()
    x = _randn(3, 3, size, size)  # exported with a batch of 2, dynamic batch
    with torch.no_grad():
        assert rel_err(eager(model, x), program(x)) <= TOL


def test_static_batch_onnx_refuses_other_batch_sizes(tmp_path):
    model = make_model("mobilenetv3_small_100_cifar")
    path = tmp_path / "static.onnx"
    result = export_model(model, path, "onnx", input_size=32, batch_size=4, dynamic_batch=False)
    assert [c.batch_size for c in result.checks] == [4]
    runner = OrtModel(path)
    assert runner.input_shape == [4, 3, 32, 32]
    # no busy-waiting threads left behind to slow what runs next (bench alternates them with PyTorch)
    assert runner.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    x = _randn(4, 3, 32, 32)
    assert rel_err(eager(model, x), runner(x)) <= TOL
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        runner(_randn(3, 3, 32, 32))


def test_tf_padding_onnx_is_static_in_height_and_width(tmp_path):
    """TF SAME pads depend on the input size: the ONNX graph fixes it, and onnxruntime refuses another."""
    model = make_model("tf_mixnet_s")
    path = tmp_path / "tf.onnx"
    export_model(model, path, "onnx", input_size=(48, 40))  # odd sizes on the way down: asymmetric pads
    x = _randn(2, 3, 48, 40)
    assert rel_err(eager(model, x), ort_run(path, x)) <= TOL
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        ort_run(path, _randn(2, 3, 64, 64))


@pytest.mark.parametrize("name", ["mixnet_s_cifar", "xsep_mobilenetv3_small_100_cifar"])
def test_fast_and_reference_impls_both_export_and_fast_has_fewer_nodes(name, tmp_path):
    import onnx

    model = make_model(name)
    size = test_size(name)
    x = _randn(2, 3, size, size)
    counts = {}
    for impl in ("fast", "reference"):
        path = tmp_path / f"{impl}.onnx"
        export_model(model, path, "onnx", input_size=size, optimize=False, impl=impl)
        assert rel_err(eager(model, x), ort_run(path, x)) <= TOL
        ops = [n.op_type for n in onnx.load(str(path)).graph.node]
        counts[impl] = {"Conv": ops.count("Conv"), "Pad": ops.count("Pad")}
    # fast: one conv per MixConv (not one per kernel size); the XSepConv 2x2 conv (per padding
    # direction: pad + 2x2 conv) becomes one pad-1 3x3 conv. Grouped 1x1 convs are fused only while
    # training (eval keeps them per group for bitwise timm parity; optimize=True fuses them).
    mixconvs = [m for m in model.modules() if isinstance(m, MixConv2d) and m.fusable]
    xseps = [m for m in model.modules() if isinstance(m, XSepConv2d)]
    merged_convs = sum(len(m.kernel_sizes) - 1 for m in mixconvs) + sum(len(m.splits) - 1 for m in xseps)
    removed_pads = sum(len(m.splits) for m in xseps)
    assert merged_convs + removed_pads > 0
    assert counts["reference"]["Conv"] - counts["fast"]["Conv"] == merged_convs
    assert counts["reference"]["Pad"] - counts["fast"]["Pad"] == removed_pads


def test_the_users_model_is_not_changed(tmp_path):
    model = make_model("mixnet_s_cifar").train()
    set_layer_impl(model, "reference")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_model(model, tmp_path / "m.onnx", "onnx", input_size=32)
    assert model.training and all(m.impl == "reference" for m in model.modules() if isinstance(m, MixConv2d))
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


class _NotScriptable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        twice = functools.reduce(lambda a, b: a + b, [x, x])  # lambdas cannot be scripted
        return self.conv(twice).mean((2, 3))


def test_torchscript_falls_back_to_tracing_and_says_so(tmp_path):
    model = _NotScriptable().eval()
    path = tmp_path / "traced.pt"
    result = export_model(model, path, "torchscript", input_size=16)
    assert result.method == "torch.jit.trace" and any("traced instead" in n for n in result.notes)
    x = _randn(3, 3, 16, 16)
    assert rel_err(eager(model, x), torch.jit.load(str(path))(x)) <= TOL


def test_a_check_on_tiny_outputs_is_flagged_as_weak(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        model[0].weight.mul_(1e-6)
        model[0].bias.zero_()
    result = export_model(model, tmp_path / "tiny.onnx", "onnx", input_size=8)
    assert any("says little" in n for n in result.notes)


def test_ort_callable_for_bench_matches_pytorch():
    model = make_model("xsep_mobilenetv3_small_100_cifar")
    runner = make_ort_callable(model, (2, 3, 32, 32), threads=1)
    x = _randn(2, 3, 32, 32, seed=5)
    out = runner(x)
    assert isinstance(out, torch.Tensor) and rel_err(eager(model, x), out) <= TOL


# --- failures leave nothing behind ---------------------------------------------------------------------

class _Drifting(nn.Module):
    """Output depends on how often it was called: the traced constant cannot match the eager run."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.conv(x).mean((2, 3)) + float(self.calls)


class _Unexportable(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.bessel_j0(x).mean((2, 3))  # no ONNX symbolic


def test_failed_check_writes_nothing_and_keeps_an_existing_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous export")
    with pytest.raises(ExportCheckError, match=r"relative error .* > tolerance 0\.0001; nothing was written"):
        export_model(_Drifting(), path, "onnx", input_size=8, optimize=False)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    assert path.read_bytes() == b"previous export"


def test_exporter_failure_is_one_export_error_and_writes_nothing(tmp_path):
    with pytest.raises(ExportError, match="onnx export failed: .*bessel_j0") as info:
        export_model(_Unexportable(), tmp_path / "m.onnx", "onnx", input_size=8)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"format": "tflite"}, "format must be one of 'onnx', 'torchscript', 'exported-program', got 'tflite'"),
    ({"opset": 13}, "opset must be an integer from 17 to"),
    ({"input_size": (3, 0, 32)}, "input_size must be a positive integer N"),
    ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ({"impl": "quick"}, "impl must be one of"),
    ({"tolerance": -1.0}, "tolerance must be a positive finite number, got -1.0"),
    ({"tolerance": float("inf")}, "tolerance must be a positive finite number, got inf"),
    ({"tolerance": float("nan")}, "tolerance must be a positive finite number, got nan"),
])
def test_bad_arguments_are_rejected_before_anything_is_written(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        export_model(nn.Conv2d(3, 4, 3), tmp_path / "m.onnx", **{"input_size": 8, **kwargs})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["missing_dir", "file_as_dir", "is_dir"])
def test_unwritable_output_path(where, tmp_path):
    (tmp_path / "a_file").write_text("x")
    out = {"missing_dir": tmp_path / "nope" / "m.onnx", "file_as_dir": tmp_path / "a_file" / "m.onnx",
           "is_dir": tmp_path}[where]
    with pytest.raises(OSError, match="cannot write"):
        export_model(nn.Conv2d(3, 4, 3), out, "onnx", input_size=8)
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"]


def test_features_only_models_are_refused_with_a_reason(tmp_path):
    backbone = mobileconv.create_model("mobilenetv3_small_100_cifar", features_only=True)
    with pytest.raises(ValueError, match="returns one tensor"):
        export_model(backbone, tmp_path / "f.onnx", "onnx", input_size=32)
    assert list(tmp_path.iterdir()) == []


class _NaNOutput(nn.Module):
    """Logits that are NaN for every input: no export of it can be checked."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x.abs().mean((2, 3)) - 1e6)


def test_infinite_tolerance_is_refused_so_nan_outputs_cannot_pass(tmp_path):
    # relative_error is inf for NaN outputs; an inf tolerance would accept them and write the file
    with pytest.raises(ValueError, match="tolerance must be a positive finite number, got inf"):
        export_model(_NaNOutput(), tmp_path / "m.onnx", "onnx", input_size=8, tolerance=float("inf"))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="tolerance must be a positive finite number"):
        make_ort_callable(nn.Conv2d(3, 4, 3), (1, 3, 8, 8), tolerance=float("nan"))


def test_batch_too_large_for_memory_is_a_one_line_value_error(tmp_path):
    # 10^11 x 3 x 32 x 32 float32 = 1.2 PB, beyond any address space: the check batch cannot be allocated
    with pytest.raises(ValueError, match=r"not enough memory to run the model on a batch of 100000000000x3x32x32") \
            as info:
        export_model(nn.Conv2d(3, 4, 3), tmp_path / "m.onnx", "onnx", input_size=32, batch_size=10**11)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
