"""benchmarks/vs_timm.py without timm: a one-line refusal; with a stand-in timm: the report it writes."""
import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import torch

import mobileconv
from mobileconv.layers import set_layer_impl

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "vs_timm.py"


def load():
    spec = importlib.util.spec_from_file_location("_bench_vs_timm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_timm_is_a_one_line_refusal(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(SystemExit) as info:
        load().parse_args(["--out", str(tmp_path)])
    assert info.value.code == 2
    assert "compares with timm, which is not installed" in capsys.readouterr().err.strip().splitlines()[-1]


def fake_timm(make):
    """A module with timm's ``create_model(name, pretrained=False)`` and ``__version__``."""
    module = types.ModuleType("timm")
    module.__version__ = "stand-in"
    module.create_model = lambda name, pretrained=False: make(name)
    return module


def test_report_compares_the_two_models_on_the_same_weights(monkeypatch, tmp_path):
    # the split / concat formulation, as timm writes MixConv, with mobileconv's key names
    monkeypatch.setitem(sys.modules, "timm", fake_timm(
        lambda name: set_layer_impl(mobileconv.create_model(name), "reference")))
    module = load()
    assert module.main(["--models", "mixnet_s_cifar", "--image-size", "32", "--batch-size", "2", "--rounds", "1",
                        "--threads", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "vs_timm.json").read_text())["rows"]
    assert [(r["model"], r["scenario"], r["batch_size"]) for r in rows] == [
        ("mixnet_s_cifar", "infer", 2), ("mixnet_s_cifar", "latency", 1), ("mixnet_s_cifar", "train", 2)]
    assert all(r["speedup"] > 0 and r["timm_images_per_s"] > 0 for r in rows)
    report = (tmp_path / "vs_timm.md").read_text()
    assert "| mixnet_s_cifar | latency | 1 | no |" in report and "timm stand-in" in report
    assert (tmp_path / "vs_timm.png").read_bytes()[:4] == b"\x89PNG"


def test_a_different_architecture_is_refused(monkeypatch):
    """The check that the weights carried over: a model computing other logits stops the comparison."""
    monkeypatch.setitem(sys.modules, "timm", fake_timm(lambda name: mobileconv.create_model(name)))
    module = load()
    real_load = module.load_state_dict

    def load_then_perturb(model, state_dict, **kw):
        real_load(model, state_dict, **kw)
        with torch.no_grad():
            model.classifier.weight.mul_(2)

    monkeypatch.setattr(module, "load_state_dict", load_then_perturb)
    with pytest.raises(RuntimeError, match="logits differ from timm's"):
        module.timm_twin("mobilenetv3_small_100_cifar", "cpu")
