"""Malformed checkpoints and destinations found in review: each gets an error that describes it truthfully.

Oracles: the shapes the test itself puts into the checkpoint, and the model's state before the load.
"""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

import mobileconv
from mobileconv.cli import main
from mobileconv.deploy.weights import load_pretrained

from .test_weights import TinyNet, random_state, same_state


def test_classifier_of_another_input_width_is_not_reported_as_a_class_count_mismatch(tmp_path):
    """Same number of classes (5), other input width (7 vs 4): it used to say "5 classes but the model has 5"."""
    state = random_state()
    state["classifier.weight"] = torch.rand(5, 7)
    path = tmp_path / "w.pth"
    torch.save(state, path)
    model = TinyNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as info:
        load_pretrained(model, path)
    message = str(info.value)
    assert "classifier.weight: checkpoint [5, 7] vs model [5, 4]" in message
    assert "classes but the model has" not in message
    assert same_state(model, before)


def test_other_class_count_is_still_explained(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(random_state(num_classes=9), path)
    with pytest.raises(ValueError, match="classifier has 9 classes but the model has 5"):
        load_pretrained(TinyNet(), path)


@pytest.mark.parametrize("key", ["features.1.block.0.0.weight", "features.2.block.1.0.weight"])
def test_torchvision_conv_weight_that_is_not_4d_is_a_value_error(reference_dir, tmp_path, capsys, key):
    """A scalar where a conv kernel belongs ended in an IndexError traceback inside the key mapping."""
    state = load_file(str(reference_dir / "torchvision_mobilenet_v3_small.safetensors"))
    state[key] = torch.tensor(1.0)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    model = mobileconv.create_model("mobilenetv3_small_100")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"unrecognised torchvision layer: .*{key} \[\].*4-D weight"):
        load_pretrained(model, path)
    assert same_state(model, before)
    dst = tmp_path / "out.safetensors"
    assert main(["convert", str(path), str(dst), "--model", "mobilenetv3_small_100"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mobileconv convert: error: ") and len(err.strip().splitlines()) == 1, err
    assert not dst.exists()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc (a folder nobody can create files in)")
def test_unwritable_destination_is_refused_before_the_source_is_read(tmp_path, capsys):
    """``os.access`` says yes to root for /proc and read-only mounts: the source was read (here: missing) first."""
    missing_src = tmp_path / "not-there.pth"
    assert main(["convert", str(missing_src), "/proc/converted.safetensors", "--model", "mobilenetv3_small_100"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mobileconv convert: error: cannot write /proc/converted.safetensors: directory /proc is "
                          "not writable"), err
    assert "not-there" not in err
