"""``mobileconv convert`` of mobileconv's own training checkpoints: recognised as such, metadata kept.

The oracles: the source file's metadata and tensors as safetensors reads them, and the accuracy
the training run recorded in its summary.json.
"""
import json

import pytest
import torch
from safetensors import safe_open

import mobileconv
from mobileconv.cli import main
from mobileconv.engine.checkpoint import load_weights, save_weights

from ..engine.helpers import MODEL, TINY


def read(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    return out


def convert(src, dst, capsys, *extra):
    capsys.readouterr()
    assert main(["convert", str(src), str(dst), "--model", MODEL, *extra]) == 0
    return capsys.readouterr().out


def test_converted_training_checkpoint_keeps_its_metadata(trained, tmp_path, capsys):
    src, dst = trained / "last.safetensors", tmp_path / "converted.safetensors"
    out = convert(src, dst, capsys)
    assert out.startswith(f"{src} (mobileconv) -> {dst}: {MODEL}, 10 classes"), out
    src_tensors, src_meta = read(src)
    tensors, meta = read(dst)
    assert src_meta["format"] == "mobileconv"  # what `mobileconv train` writes
    for key in ("model", "dataset", "num_classes", "classes", "img_size", "mean", "std", "epoch", "ema"):
        assert meta[key] == src_meta[key], key
    assert meta["converted_from"] == "mobileconv" and meta["format"] == "mobileconv" and meta["bn_eps"] == "1e-05"
    assert tensors.keys() == src_tensors.keys() and all(torch.equal(tensors[k], src_tensors[k]) for k in tensors)

    # eval reads model, dataset and img_size from the converted file alone (no summary.json beside it)
    assert main(["eval", "--checkpoint", str(dst), "--format", "json", "--max-val-samples", "32"]) == 0
    result = json.loads(capsys.readouterr().out)
    summary = json.loads((trained / "summary.json").read_text())
    assert result["img_size"] == 16 and result["dataset"] == "synthetic"
    assert result["top1"] == pytest.approx(summary["top1"]) and result["top5"] == pytest.approx(summary["top5"])


def test_training_checkpoint_without_format_key_is_recognised(tmp_path, capsys):
    """Files from `mobileconv train` before it recorded ``format``: recognised by the keys it records."""
    meta = {"model": MODEL, "dataset": "synthetic", "num_classes": 10, "classes": [f"c{i}" for i in range(10)],
            "img_size": 16, "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "epoch": 3, "ema": False}
    src, dst = tmp_path / "old.safetensors", tmp_path / "converted.safetensors"
    save_weights(src, mobileconv.create_model(MODEL, num_classes=10).state_dict(), meta)
    assert "format" not in read(src)[1]
    out = convert(src, dst, capsys)
    assert out.startswith(f"{src} (mobileconv) -> "), out
    kept = load_weights(dst)[1]  # JSON values decoded
    assert {k: kept[k] for k in meta} == meta and kept["converted_from"] == "mobileconv"


def test_timm_checkpoint_gains_no_training_metadata(reference_dir, tmp_path, capsys):
    dst = tmp_path / "mixnet_s.safetensors"
    capsys.readouterr()
    assert main(["convert", str(reference_dir / "timm_mixnet_s.safetensors"), str(dst), "--model", "mixnet_s"]) == 0
    assert "(timm)" in capsys.readouterr().out
    assert set(read(dst)[1]) == {"format", "bn_eps", "model", "num_classes", "converted_from"}
