"""create_model(..., pretrained=path) against the reference vectors of timm and torchvision.

The oracle: each library's own eval-mode logits for a fixed input (../shared/fixtures/reference).
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mobileconv.cli import main as cli_main
from mobileconv.deploy.weights import load_pretrained
from mobileconv.models import create_model

ATOL = 1e-4
# The reference logits are float32. With logits of magnitude up to ~100, float32 summation order
# alone moves them by up to ~1e-3: oneDNN picks other 1x1-conv kernels on 1 thread than on
# several (8e-4 for mobilenetv3_large_100 on 1 thread; even its float64 value is 6e-4 away).
# So each reference is evaluated in the summation order it was computed in: timm's on several
# intra-op threads (difference 0.0 with the default impl: in eval mode the fused MixConv is
# bitwise equal to the split form and grouped 1x1 convs run per group), torchvision's on
# 1 thread (difference 1e-8; the same on several).
# reference file stem -> (mobileconv model name, intra-op threads)
REFERENCES = {
    "timm_mixnet_s": ("mixnet_s", 2),
    "timm_mobilenetv3_large_100": ("mobilenetv3_large_100", 2),
    "torchvision_mobilenet_v3_small": ("mobilenetv3_small_100", 1),
}


def reference_logits(model: torch.nn.Module, reference_dir, stem: str) -> tuple[torch.Tensor, torch.Tensor]:
    threads = REFERENCES[stem][1]
    io = load_file(str(reference_dir / f"{stem}.io.safetensors"))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            return model.eval()(io["x"]), io["logits"]
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("stem", sorted(REFERENCES))
def test_reference_logits_reproduce(reference_dir, stem):
    model = create_model(REFERENCES[stem][0], pretrained=reference_dir / f"{stem}.safetensors")
    logits, expected = reference_logits(model, reference_dir, stem)
    assert logits.dtype == torch.float32
    err = (logits - expected).abs().max().item()
    assert err < ATOL, f"{stem}: max |logits - reference| = {err:.3g}"


def test_convert_then_load_reproduces_reference(reference_dir, tmp_path, capsys):
    """torchvision -> mobileconv file -> create_model(pretrained=...) keeps the logits (and BN eps 1e-3)."""
    stem = "torchvision_mobilenet_v3_small"
    dst = tmp_path / "small.safetensors"
    rc = cli_main(["convert", str(reference_dir / f"{stem}.safetensors"), str(dst), "--model", REFERENCES[stem][0]])
    assert rc == 0
    assert "torchvision" in capsys.readouterr().out
    model = create_model(REFERENCES[stem][0], pretrained=dst)
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}
    logits, expected = reference_logits(model, reference_dir, stem)
    assert (logits - expected).abs().max().item() < ATOL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.safetensors"]  # no temp file left behind


def test_failed_convert_writes_nothing(reference_dir, tmp_path, capsys):
    dst = tmp_path / "out.safetensors"
    rc = cli_main(["convert", str(reference_dir / "timm_mixnet_s.safetensors"), str(dst),
                   "--model", "mobilenetv3_large_100"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("mobileconv convert: error:") and "does not fit" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["missing_dir", "dst_is_dir"])
def test_convert_to_an_unwritable_path_names_it(reference_dir, tmp_path, capsys, where):
    """Checked before the checkpoint is read; the message names the path, not a temporary file."""
    (tmp_path / "existing").mkdir()
    dst = tmp_path / ("nodir/out.safetensors" if where == "missing_dir" else "existing")
    rc = cli_main(["convert", str(reference_dir / "timm_mixnet_s.safetensors"), str(dst), "--model", "mixnet_s"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mobileconv convert: error: cannot write {dst}") and ".tmp" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"] and not any((tmp_path / "existing").iterdir())


def test_convert_num_classes_mismatch_suggests_flag(reference_dir, tmp_path, capsys):
    dst = tmp_path / "out.safetensors"
    rc = cli_main(["convert", str(reference_dir / "timm_mixnet_s.safetensors"), str(dst),
                   "--model", "mixnet_s", "--num-classes", "10"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "1000 classes" in err and "--num-classes 1000" in err
    assert not dst.exists()


def test_other_architecture_is_refused_and_model_untouched(reference_dir):
    model = create_model("mobilenetv3_large_100")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    eps_before = [m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    path = reference_dir / "torchvision_mobilenet_v3_small.safetensors"
    with pytest.raises(ValueError) as info:
        load_pretrained(model, path)
    msg = str(info.value)
    assert str(path) in msg and "torchvision" in msg
    assert "missing keys" in msg and "shape mismatch" in msg
    # a mismatch is reported with both shapes and the torchvision key it came from
    assert "checkpoint [" in msg and "vs model [" in msg and "(from features." in msg
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert eps_before == [m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_timm_checkpoint_into_other_timm_model_lists_keys(reference_dir):
    model = create_model("mixnet_s")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"(?s)missing keys \(\d+\):.*unexpected keys \(\d+\):.*shape mismatch"):
        load_pretrained(model, reference_dir / "timm_mobilenetv3_large_100.safetensors")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_pretrained_missing_path():
    with pytest.raises(FileNotFoundError, match="no_such_checkpoint.pth"):
        create_model("mobilenetv3_small_100", pretrained="/nonexistent/no_such_checkpoint.pth")


def _training_checkpoint(layout: str, weights: dict[str, torch.Tensor]) -> dict:
    """A checkpoint as timm's train.py (CheckpointSaver) or torchvision's references/classification/train.py
    write it: the weights beside the optimizer state and the script's argparse options (``args``)."""
    import argparse

    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.ones(1, 2)).sum().backward()
    opt.step()  # momentum buffers: tensors in the optimizer state
    args = argparse.Namespace(model="m", lr=0.1, epochs=3, opt="sgd", amp=False, data_dir=None)
    if layout == "timm":
        return {"epoch": 3, "arch": "m", "state_dict": weights, "optimizer": opt.state_dict(), "version": 2,
                "args": args, "metric": 71.5}
    return {"model": weights, "optimizer": opt.state_dict(), "lr_scheduler": {"last_epoch": 3}, "epoch": 3,
            "args": args}


@pytest.mark.parametrize("stem, layout", [("timm_mixnet_s", "timm"), ("torchvision_mobilenet_v3_small", "torchvision")])
def test_training_checkpoints_with_argparse_options_load(reference_dir, tmp_path, capsys, stem, layout):
    """Both libraries' training scripts pickle ``args`` (an argparse.Namespace) beside the weights; such a
    checkpoint loads with weights_only=True (the Namespace allowed, nothing else) and reproduces the logits."""
    weights = {k: v.float() for k, v in load_file(str(reference_dir / f"{stem}.safetensors")).items()}
    path = tmp_path / "model_best.pth.tar"
    torch.save(_training_checkpoint(layout, weights), path)
    model = create_model(REFERENCES[stem][0], pretrained=path)
    logits, expected = reference_logits(model, reference_dir, stem)
    assert (logits - expected).abs().max().item() < ATOL
    dst = tmp_path / "converted.safetensors"
    assert cli_main(["convert", str(path), str(dst), "--model", REFERENCES[stem][0]]) == 0, capsys.readouterr().err
    logits, expected = reference_logits(create_model(REFERENCES[stem][0], pretrained=dst), reference_dir, stem)
    assert (logits - expected).abs().max().item() < ATOL


def test_failed_convert_is_one_line(reference_dir, tmp_path, capsys):
    """The loader's key listing becomes one line on the command line, as in eval / predict / export."""
    src = reference_dir / "timm_mixnet_s.safetensors"
    rc = cli_main(["convert", str(src), str(tmp_path / "out.safetensors"), "--model", "mixnet_m"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith(f"mobileconv convert: error: {src}"), err
    assert "does not fit" in err and "missing keys (" in err and "shape mismatch keys (" in err, err
    assert list(tmp_path.iterdir()) == []
