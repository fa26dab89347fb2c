"""`mobileconv export`: a checked export from a checkpoint, and one-line errors that leave nothing behind."""
from __future__ import annotations

import re
import shlex

import pytest
import torch
from safetensors.torch import save_file

from mobileconv.cli import build_parser, main

from ._export_helpers import TOL, eager, make_model, ort_run, rel_err

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
REFERENCE_CHECKPOINT = "timm_mixnet_s.safetensors"
CKPT_MODEL = "xsep_mobilenetv3_small_100_cifar"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An XSep-MobileNetV3 (CIFAR form) with random BN statistics and 10 classes, as a safetensors state_dict."""
    model = make_model(CKPT_MODEL, num_classes=10)
    path = tmp_path_factory.mktemp("ckpt") / "xsep.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def test_export_from_checkpoint_writes_a_checked_onnx(checkpoint, tmp_path, capsys):
    model, ckpt = checkpoint
    out = tmp_path / "xsep.onnx"
    rc = main(["export", CKPT_MODEL, "--checkpoint", str(ckpt), "--out", str(out)])  # default size: 32
    stdout = capsys.readouterr().out
    assert rc == 0
    assert [p.name for p in tmp_path.iterdir()] == ["xsep.onnx"]
    printed = [float(v) for v in re.findall(r"max \|onnxruntime - pytorch\| = ([0-9.e+-]+)", stdout)]
    assert len(printed) == 2 and max(printed) <= TOL  # batch 2 and batch 3 (dynamic batch)
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    logits = ort_run(out, x)
    assert logits.shape == (5, 10)  # classes taken from the checkpoint
    assert rel_err(eager(model, x), logits) <= TOL


@pytest.mark.parametrize("fmt", ["torchscript", "exported-program"])
def test_other_formats_reload_and_match(fmt, checkpoint, tmp_path, capsys):
    model, ckpt = checkpoint
    out = tmp_path / ("m.pt" if fmt == "torchscript" else "m.pt2")
    rc = main(["export", CKPT_MODEL, "--checkpoint", str(ckpt), "--format", fmt, "--static-batch", "--out", str(out)])
    assert rc == 0 and "max |reloaded program - pytorch|" in capsys.readouterr().out
    program = torch.jit.load(str(out)) if fmt == "torchscript" else torch.export.load(str(out)).module()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert rel_err(eager(model, x), program(x)) <= TOL


def _fails(argv, capsys, tmp_path, *expected):
    """Run the CLI; expect exit 2, one stderr line naming the problem, and the directory unchanged."""
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("mobileconv export: error: "), err
    for text in expected:
        assert text in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_missing_checkpoint(tmp_path, capsys):
    _fails(["export", "mobilenetv1_025", "--checkpoint", str(tmp_path / "none.safetensors"),
            "--out", str(tmp_path / "m.onnx")], capsys, tmp_path, "not found", "none.safetensors")


def test_mismatched_checkpoint(reference_dir, tmp_path, capsys):
    _fails(["export", "mobilenetv1_025", "--checkpoint", str(reference_dir / REFERENCE_CHECKPOINT),
            "--out", str(tmp_path / "m.onnx")], capsys, tmp_path, "does not fit", "missing keys")


def test_not_a_checkpoint(tmp_path, capsys):
    bogus = tmp_path / "notes.safetensors"
    bogus.write_text("hello")
    _fails(["export", "mobilenetv1_025", "--checkpoint", str(bogus), "--out", str(tmp_path / "m.onnx")],
           capsys, tmp_path, "notes.safetensors")


def test_unknown_format(tmp_path, capsys):
    _fails(["export", "mobilenetv1_025", "--format", "tflite", "--out", str(tmp_path / "m.tflite")],
           capsys, tmp_path, "'tflite'", "'onnx', 'torchscript', 'exported-program'")


def test_format_not_given_and_not_in_the_suffix(tmp_path, capsys):
    _fails(["export", "mobilenetv1_025", "--out", str(tmp_path / "model.bin")], capsys, tmp_path, "--format")


@pytest.mark.parametrize("where", ["missing_dir", "file_as_dir"])
def test_unwritable_output(where, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    parent = tmp_path / ("nope" if where == "missing_dir" else "a_file")
    _fails(["export", "mobilenetv1_025", "--out", str(parent / "m.onnx")], capsys, tmp_path, "cannot write")


def test_output_naming_a_folder_with_a_trailing_slash_is_refused(tmp_path, capsys):
    """``--out sub/`` (no such folder yet) used to write a file named ``sub``: open("sub/", "w") refuses it."""
    _fails(["export", "mobilenetv1_025", "--format", "onnx", "--out", f"{tmp_path / 'sub'}/"], capsys, tmp_path,
           "it names a folder (give a file name inside it)")


def test_opset_below_17(tmp_path, capsys):
    _fails(["export", "mobilenetv1_025", "--opset", "11", "--out", str(tmp_path / "m.onnx")], capsys, tmp_path,
           "opset must be an integer from 17")


def test_impl_without_no_optimize_is_refused(tmp_path, capsys):
    """The optimised export fuses every MixConv, so --impl would be silently ignored there."""
    _fails(["export", "mixnet_s_cifar", "--impl", "reference", "--out", str(tmp_path / "m.onnx")], capsys, tmp_path,
           "--impl reference applies only with --no-optimize")


def test_readme_export_commands_parse():
    """Every `mobileconv export` / `bench` command in the README's deploy section is accepted by the parser."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("<!-- section:deploy -->")[1].split("<!-- /section:deploy -->")[0]
    commands = [line.strip() for line in section.splitlines() if line.strip().startswith("mobileconv ")]
    assert any(c.startswith("mobileconv export") for c in commands)
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command.split(" #")[0])[1:])
        assert callable(args.func)


def test_readme_worked_example_runs_and_reproduces_timm(reference_dir, tmp_path, monkeypatch, capsys):
    """The README's Python example (timm checkpoint -> ONNX -> onnxruntime), run as written in a scratch dir."""
    from pathlib import Path

    import numpy as np
    from safetensors.numpy import load_file

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("<!-- section:deploy -->")[1].split("<!-- /section:deploy -->")[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    code = code.replace('"../shared/fixtures/reference"', repr(str(reference_dir)))
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(code, scope)  # noqa: S102 - our own documentation
    assert [p.name for p in tmp_path.iterdir()] == ["mixnet_s.onnx"]
    expected = load_file(str(reference_dir / "timm_mixnet_s.io.safetensors"))["logits"]
    assert np.abs(scope["logits"] - expected).max() <= 1e-3
    assert "top-1 class:" in capsys.readouterr().out


@pytest.mark.parametrize(("option", "message"), [
    (["--tolerance", "inf"], "tolerance must be a positive finite number, got inf"),
    (["--batch-size", "100000000000"], "not enough memory to run the model on a batch of 100000000000x3x32x32"),
])
def test_bad_tolerance_and_huge_batch_are_one_line_errors(option, message, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    rc = main(["export", "mobilenetv3_small_100_cifar", "--out", str(out), *option])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"mobileconv export: error: {message}") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_export_of_a_training_checkpoint_defaults_to_its_recorded_image_size(checkpoint, tmp_path):
    """A `mobileconv train` checkpoint records img_size (as eval / predict use it); export takes it too."""
    import onnxruntime as ort

    from mobileconv.engine.checkpoint import save_weights

    model, _ = checkpoint
    ckpt = tmp_path / "last.safetensors"
    save_weights(ckpt, model.state_dict(), {"format": "mobileconv", "model": CKPT_MODEL, "img_size": 16})
    out = tmp_path / "trained.onnx"
    assert main(["export", CKPT_MODEL, "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert ort.InferenceSession(str(out)).get_inputs()[0].shape[1:] == [3, 16, 16]
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    assert rel_err(eager(model, x), ort_run(out, x)) <= TOL
    assert main(["export", CKPT_MODEL, "--checkpoint", str(ckpt), "--input-size", "24", "--out", str(out)]) == 0
    assert ort.InferenceSession(str(out)).get_inputs()[0].shape[1:] == [3, 24, 24]  # --input-size wins


def test_head_less_convert_and_export_give_the_pre_logits(checkpoint, tmp_path, capsys):
    """`--num-classes 0` (timm's feature-extractor form): convert writes no classifier, export emits the pooled
    features; a head-less file converted so is exported as such without the flag (it used to want 1000 classes)."""
    model, ckpt = checkpoint
    headless = tmp_path / "headless.safetensors"
    assert main(["convert", str(ckpt), str(headless), "--model", CKPT_MODEL, "--num-classes", "0"]) == 0
    from safetensors import safe_open

    with safe_open(str(headless), "pt") as f:
        assert not any(k.startswith("classifier") for k in f.keys()) and f.metadata()["num_classes"] == "0"
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():  # the oracle: the 10-class model's own pre-logits
        expected = model.eval().forward_head(model.forward_features(x), pre_logits=True)
    for source, extra in ((headless, []), (ckpt, ["--num-classes", "0"])):
        out = tmp_path / f"{source.stem}.onnx"
        assert main(["export", CKPT_MODEL, "--checkpoint", str(source), "--out", str(out), *extra]) == 0
        got = ort_run(out, x)
        assert got.shape == expected.shape == (3, model.num_features)
        assert rel_err(got, expected) <= TOL
    again = tmp_path / "again.safetensors"  # converted again without the flag: still head-less, the same tensors
    assert main(["convert", str(headless), str(again), "--model", CKPT_MODEL]) == 0
    with safe_open(str(headless), "pt") as a, safe_open(str(again), "pt") as b:
        assert set(a.keys()) == set(b.keys()) and b.metadata()["num_classes"] == "0"
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())
    capsys.readouterr()
