"""Regressions from reviewing export as a user: output paths, in-place models, precision, converted models.

Every exported file is checked here independently of ``export_model``'s own check: onnxruntime
(or ``torch.jit.load`` / ``torch.export.load``) against the eager model, compared in numpy.
"""
from __future__ import annotations

import os
import stat

import pytest
import torch
from torch import nn

import mobileconv
from mobileconv.cli import main
from mobileconv.deploy.export import export_model
from mobileconv.deploy.onnxrt import make_ort_callable

from ._export_helpers import TOL, eager, ort_run, randomize_, rel_err, seeded_randn, small_model

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
CLI_MODEL = "mobilenetv3_small_100_cifar"


def _load(path, fmt):
    if fmt == "onnx":
        return lambda x: ort_run(path, x)
    if fmt == "torchscript":
        return torch.jit.load(str(path))
    return torch.export.load(str(path)).module()


# --- what gets written ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "fmt"), [("m.pt", "onnx"), ("m.onnx", "torchscript"), ("m.pt", "exported-program"),
                                           ("m.PT2", "onnx")])
def test_a_suffix_of_another_format_is_refused(name, fmt, tmp_path):
    """An ONNX file named .pt (or a TorchScript one named .onnx) was written and then failed to load."""
    with pytest.raises(ValueError, match=rf"the suffix '{name[1:]}' .* is for format"):
        export_model(small_model(), tmp_path / name, fmt, input_size=8)
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_a_suffix_that_contradicts_format(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", CLI_MODEL, "--format", "torchscript", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is for format 'onnx', not 'torchscript'" in err
    assert list(tmp_path.iterdir()) == []


def test_cli_reads_the_format_from_an_upper_case_suffix(tmp_path, capsys):
    """`--out MODEL.ONNX` was refused with "cannot tell the format"."""
    out = tmp_path / "MODEL.ONNX"
    assert main(["export", CLI_MODEL, "--out", str(out), "--static-batch"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["MODEL.ONNX"]
    assert ort_run(out, seeded_randn(2, 3, 32, 32)).shape == (2, 10)  # an ONNX file, whatever its name's case


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_an_existing_special_file_is_not_replaced(tmp_path):
    """`--out /dev/stdout` (run as root) replaced the /dev/stdout link by the file; a FIFO became a regular file."""
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="exists and is not a regular file"):
        export_model(small_model(), fifo, "onnx", input_size=8)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and list(tmp_path.iterdir()) == [fifo]
    link = tmp_path / "out.onnx"
    link.symlink_to(fifo)  # as /dev/stdout -> /proc/self/fd/1 -> a pipe
    with pytest.raises(ValueError, match="exists and is not a regular file"):
        export_model(small_model(), link, "onnx", input_size=8)
    assert os.path.islink(link) and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_symbolic_link_is_followed(tmp_path):
    """The file a link points to is replaced, as open(path, "w") would; the link stays a link."""
    target = tmp_path / "v1.onnx"
    target.write_bytes(b"old export")
    link = tmp_path / "latest.onnx"
    link.symlink_to(target.name)
    model = small_model()
    result = export_model(model, link, "onnx", input_size=8)
    assert result.path == target.resolve()
    assert os.readlink(link) == target.name and sorted(p.name for p in tmp_path.iterdir()) == ["latest.onnx",
                                                                                              "v1.onnx"]
    x = seeded_randn(3, 3, 8, 8)
    assert rel_err(eager(model, x), ort_run(link, x)) <= TOL


# --- models the check got wrong ------------------------------------------------------------------------

class _NormalizesInPlace(nn.Module):
    """Subtracts the mean from its input in place, as some preprocessing wrappers do."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.sub_(0.5)
        return self.fc(self.conv(x).relu().mean((2, 3)))


@pytest.mark.filterwarnings("ignore:ONNX Preprocess - Removing mutation:UserWarning")
@pytest.mark.parametrize(("fmt", "suffix"), [("onnx", ".onnx"), ("torchscript", ".pt"),
                                             ("exported-program", ".pt2")])
def test_a_model_that_changes_its_input_in_place_exports(fmt, suffix, tmp_path):
    """The check reused the batch the eager run had changed: a correct export failed with error ~0.2."""
    model = _NormalizesInPlace().eval()
    path = tmp_path / f"m{suffix}"
    export_model(model, path, fmt, input_size=8)
    x = seeded_randn(3, 3, 8, 8)
    expected = eager(model, x.clone())
    with torch.no_grad():
        assert rel_err(expected, _load(path, fmt)(x.clone())) <= TOL
    runner = make_ort_callable(model, (2, 3, 8, 8), threads=1)  # the bench backend had the same problem
    x = seeded_randn(2, 3, 8, 8, seed=2)
    assert rel_err(eager(model, x.clone()), runner(x.clone())) <= TOL


def test_a_half_precision_model_is_exported_in_float32_and_says_so(tmp_path):
    import onnx

    model = small_model().half()
    path = tmp_path / "half.onnx"
    result = export_model(model, path, "onnx", input_size=8)
    assert any("float16 weights were exported as float32" in n for n in result.notes)
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert next(model.parameters()).dtype == torch.float16  # the user's model is not converted
    x = seeded_randn(3, 3, 8, 8)
    assert rel_err(eager(model.float(), x), ort_run(path, x)) <= TOL


# --- converted models, batch 1, channels_last --------------------------------------------------------------

def _calibrated(model: nn.Module, size: int) -> nn.Module:
    """Random weights and BN statistics measured on random images (unit-scale layers, input-dependent logits)."""
    model = randomize_(model)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        model(seeded_randn(8, 3, size, size, seed=9))
    return model.eval()


@pytest.mark.parametrize("convert", ["mixify", "xsepify"])
def test_a_converted_model_exports_at_batch_one_and_runs_any_batch(convert, tmp_path):
    """mixify / xsepify output, exported with a batch of 1 at 40 px, run in onnxruntime at 1 and 4, channels_last."""
    torch.manual_seed(0)
    base = mobileconv.create_model("mobilenetv3_small_100_cifar")
    model = _calibrated(mobileconv.mixify(base, (3, 5)) if convert == "mixify" else mobileconv.xsepify(base, 3), 40)
    kinds = {type(m).__name__ for m in model.modules()}
    assert ("MixConv2d" if convert == "mixify" else "XSepConv2d") in kinds
    path = tmp_path / "converted.onnx"
    result = export_model(model, path, "onnx", input_size=40, batch_size=1)
    assert [c.batch_size for c in result.checks] == [1, 2] and result.optimized
    for batch in (1, 4):
        x = seeded_randn(batch, 3, 40, 40, seed=batch).contiguous(memory_format=torch.channels_last)
        expected = eager(model, x)
        assert expected.abs().max() > 0.1  # a meaningful output, not ~0
        assert rel_err(expected, ort_run(path, x.contiguous())) <= TOL


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_replaced_file_keeps_its_permissions(tmp_path):
    """A private (0600) export became world-readable (0644) when exported again: open(path, "w") keeps the mode."""
    path = tmp_path / "private.onnx"
    path.write_bytes(b"old export")
    path.chmod(0o600)
    export_model(small_model(), path, "onnx", input_size=8)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and path.read_bytes() != b"old export"
