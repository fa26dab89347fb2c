"""``mobileconv average`` / ``average_checkpoints``: the mean of several checkpoints' weights (timm's avg_checkpoints).

Oracles: means computed here with plain tensor arithmetic from the files the test wrote or the run saved, and
values that must come through unchanged (integer buffers, the mean of identical weights).
"""
import shutil
from pathlib import Path

import pytest
import torch

from mobileconv.cli import main
from mobileconv.engine.checkpoint import average_checkpoints, load_weights, save_weights

from .helpers import TINY

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "reference"


def write(path, epoch, top1, scale, model="mixnet_s", test_loss=1.0):
    tensors = {"conv.weight": torch.full((2, 3), scale), "half": torch.full((4,), scale, dtype=torch.float16),
               "bn.num_batches_tracked": torch.tensor(epoch * 10)}
    save_weights(path, tensors, {"model": model, "epoch": epoch, "top1": top1, "top5": 99.0, "test_loss": test_loss,
                                 "classes": ["a", "b"]})
    return path


def test_float_tensors_are_averaged_and_integers_come_from_the_latest_epoch(tmp_path):
    files = [write(tmp_path / "b.safetensors", 5, 60.0, 3.0), write(tmp_path / "a.safetensors", 3, 70.0, 0.5),
             write(tmp_path / "c.safetensors", 4, 65.0, 1.0)]
    info = average_checkpoints(files, tmp_path / "avg.safetensors")
    tensors, meta = load_weights(tmp_path / "avg.safetensors")
    assert torch.equal(tensors["conv.weight"], torch.full((2, 3), 1.5))  # (3 + 0.5 + 1) / 3
    assert tensors["half"].dtype == torch.float16 and torch.equal(tensors["half"], torch.full((4,), 1.5).half())
    assert tensors["bn.num_batches_tracked"].item() == 50  # epoch 5's, given first
    assert meta["averaged_epochs"] == [3, 4, 5] and "epoch" not in meta and "top1" not in meta
    assert meta["model"] == "mixnet_s" and meta["classes"] == ["a", "b"]
    assert info == {"files": [str(tmp_path / n) for n in ("a.safetensors", "c.safetensors", "b.safetensors")],
                    "epochs": [3, 4, 5], "tensors": 3}


def test_top_keeps_the_checkpoints_of_the_best_recorded_top1(tmp_path):
    files = [write(tmp_path / f"{e}.safetensors", e, top1, scale)
             for e, top1, scale in ((1, 50.0, 1.0), (2, 80.0, 2.0), (3, 70.0, 4.0))]
    average_checkpoints(files, tmp_path / "avg.safetensors", top=2)
    tensors, meta = load_weights(tmp_path / "avg.safetensors")
    assert torch.equal(tensors["conv.weight"], torch.full((2, 3), 3.0)) and meta["averaged_epochs"] == [2, 3]


def test_top_by_loss_keeps_the_lowest_test_losses(tmp_path, capsys):
    files = [write(tmp_path / f"{e}.safetensors", e, 90.0, scale, test_loss=loss)
             for e, loss, scale in ((1, 0.9, 1.0), (2, 0.3, 2.0), (3, 0.5, 4.0), (4, 0.3, 8.0))]
    assert main(["average", *map(str, files), "--top", "2", "--metric", "loss",
                 "--out", str(tmp_path / "avg.safetensors")]) == 0, capsys.readouterr().err
    tensors, meta = load_weights(tmp_path / "avg.safetensors")
    # epochs 2 and 4 tie at 0.3: both kept before epoch 3's 0.5
    assert meta["averaged_epochs"] == [2, 4] and torch.equal(tensors["conv.weight"], torch.full((2, 3), 5.0))
    assert not {"top1", "top5", "test_loss", "epoch"} & set(meta)


def test_a_run_folder_gives_its_best_epochs_and_the_average_evaluates(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "3", "--checkpoint-hist", "2", "--out", str(run)]) == 0
    files = sorted(run.glob("checkpoint-*.safetensors"))
    assert len(files) == 2
    capsys.readouterr()
    assert main(["average", str(run), "--out", str(tmp_path / "avg.safetensors")]) == 0
    assert capsys.readouterr().out.startswith("averaged 2 checkpoints (epochs ")
    averaged, meta = load_weights(tmp_path / "avg.safetensors")
    first, second = (load_weights(f)[0] for f in files)
    for name, value in averaged.items():
        if value.is_floating_point():
            assert torch.allclose(value, (first[name].double() + second[name].double()).div(2).float()), name
    assert meta["model"] == TINY[1] and meta["dataset"] == "synthetic"
    assert main(["eval", "--checkpoint", str(tmp_path / "avg.safetensors"), "--max-val-samples", "8"]) == 0


def test_timm_checkpoints_average_under_their_own_names(tmp_path):
    source = REFERENCE / "timm_mobilenetv3_large_100.safetensors"
    copy = shutil.copy(source, tmp_path / "copy.safetensors")
    average_checkpoints([source, copy], tmp_path / "avg.safetensors")
    original, _ = load_weights(source)
    averaged, _ = load_weights(tmp_path / "avg.safetensors")
    assert averaged.keys() == original.keys()
    assert all(torch.equal(averaged[k], original[k]) for k in original)  # the mean of equal weights is those weights


@pytest.mark.parametrize("case, message", [
    ("shape", "b.safetensors: conv.weight has shape (3, 3), "),
    ("keys", "b.safetensors does not hold the tensors of "),
    ("model", "the checkpoints are of different models (mixnet_l, mixnet_s)"),
    ("twice", "a checkpoint is given twice: "),
    ("empty folder", "holds no checkpoint-EPOCH.safetensors files"),
    ("corrupt", "b.safetensors is not a readable safetensors checkpoint"),
    ("no top1", "--top 1 ranks checkpoints by the test top1 that mobileconv train records in its weights files; "),
])
def test_bad_sources_are_refused_and_nothing_is_written(tmp_path, capsys, case, message):
    a = write(tmp_path / "a.safetensors", 1, 50.0, 1.0)
    b = tmp_path / "b.safetensors"
    if case == "shape":
        save_weights(b, {"conv.weight": torch.ones(3, 3), "half": torch.ones(4).half(),
                         "bn.num_batches_tracked": torch.tensor(1)}, {"model": "mixnet_s"})
    elif case == "keys":
        save_weights(b, {"conv.weight": torch.ones(2, 3)}, {"model": "mixnet_s"})
    elif case == "model":
        write(b, 2, 50.0, 1.0, model="mixnet_l")
    elif case == "corrupt":
        b.write_bytes(a.read_bytes()[:100])
    else:
        save_weights(b, load_weights(a)[0], {})  # no epoch, no top-1
    sources = {"twice": [a, a], "empty folder": [tmp_path / "empty"]}.get(case, [a, b])
    (tmp_path / "empty").mkdir()
    dst = tmp_path / "avg.safetensors"
    dst.write_bytes(b"previous")
    argv = ["average", *map(str, sources), "--out", str(dst)] + (["--top", "1"] if case == "no top1" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mobileconv average: error: ") and message in err and err.count("\n") == 1, err
    assert dst.read_bytes() == b"previous"


def test_a_torch_load_name_is_refused(tmp_path, capsys):
    a = write(tmp_path / "a.safetensors", 1, 50.0, 1.0)
    assert main(["average", str(a), "--out", str(tmp_path / "avg.pth")]) == 2
    assert "--out 'avg.pth' ends in .pth" in capsys.readouterr().err.replace(str(tmp_path) + "/", "")
    assert not (tmp_path / "avg.pth").exists()
