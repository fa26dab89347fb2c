"""What a run's state.pt records, and crash-safe writes of checkpoints and weights files.

* ``--resume`` compared only the number of classes: a run whose class folders were renamed (or
  re-sorted, an old run recorded from folders written in NFD) trained on with its labels swapped.
* A state.pt copied out of its run folder did not record its model, data, image size, mean and std:
  ``eval`` needed ``--model`` / ``--data`` and normalised with the model's ``pretrained_cfg``.
* ``deploy.weights.save_weights`` did not fsync the folder after the rename, and both writers named
  their temporary file ``.<name>.tmp...``: past 255 bytes for a valid output name.
"""
import hashlib
import os
import shutil
import unicodedata

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from mobileconv.cli import main
from mobileconv.deploy import weights
from mobileconv.deploy.export import export_model
from mobileconv.engine import checkpoint as ckpt
from mobileconv.engine import trainer
from mobileconv.engine.inference import load_checkpoint, resolve_normalization

from .helpers import MODEL, failed_train

ARGS = ["--model", MODEL, "--img-size", "16", "--batch-size", "8", "--max-val-samples", "4", "--quiet",
        "--warmup-epochs", "0"]
# the ImageNet statistics an image folder is normalised with (torchvision's documented values), which differ
# from the model's pretrained_cfg (CIFAR-10's)
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CAFE_NFC = "caf\u00e9"
CAFE_NFD = unicodedata.normalize("NFD", CAFE_NFC)  # "cafe" + combining acute accent, as macOS writes it
# sorted by code point: NFD "cafe\u0301" < "cafz" < NFC "caf\u00e9"
CLASSES = ["cafz", CAFE_NFC]


def make_image_folder(root, classes):
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 2)):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / split / name / f"{i}.png")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished one-epoch run on an image folder with the classes ``cafz`` and ``café``."""
    root = tmp_path_factory.mktemp("trained")
    make_image_folder(root / "images", CLASSES)
    assert main(["train", *ARGS, "--data", str(root / "images"), "--epochs", "1", "--out", str(root / "run")]) == 0
    return root


def copy_run(trained, tmp_path, *, old_state=False):
    """The run and its data copied to ``tmp_path``; ``old_state``: its state.pt as runs wrote it before it
    recorded classes, mean and std."""
    shutil.copytree(trained / "images", tmp_path / "images")
    shutil.copytree(trained / "run", tmp_path / "run")
    data = os.path.realpath(tmp_path / "images")  # the same data, at the copy's path
    config_path = tmp_path / "run" / "config.yaml"
    config_path.write_text(yaml.safe_dump({**yaml.safe_load(config_path.read_text()), "data": data}))
    state_path = tmp_path / "run" / ckpt.STATE_FILE
    state = ckpt.load_state(state_path)
    state["config"]["data"] = data
    if old_state:
        for key in ("classes", "mean", "std"):
            state.pop(key, None)
    ckpt.save_state(state_path, state)
    return tmp_path / "images", tmp_path / "run"


def rename_class(images, old, new):
    for split in ("train", "val"):
        (images / split / old).rename(images / split / new)


def snapshot(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def no_training(monkeypatch):
    monkeypatch.setattr(trainer, "train_epochs", lambda run: pytest.fail("training started"))


# ---- --resume checks the class names --------------------------------------------------------------------

def test_resume_after_a_class_folder_was_renamed_is_refused_naming_it(trained, tmp_path, capsys, no_training):
    images, run = copy_run(trained, tmp_path)
    rename_class(images, "cafz", "dog")  # same count, same sorted position
    before = snapshot(run)
    err = failed_train(["--resume", str(run), "--epochs", "2"], capsys)
    assert "other classes than the data has" in err and "'cafz'" in err and "'dog'" in err, err
    assert str(run / ckpt.STATE_FILE) in err
    assert snapshot(run) == before


def test_resume_of_an_old_run_falls_back_to_the_class_names_its_files_record(trained, tmp_path, capsys,
                                                                          monkeypatch):
    """A state.pt without classes: the run folder's last.safetensors, else summary.json, else the count."""
    images, run = copy_run(trained, tmp_path, old_state=True)
    rename_class(images, "cafz", "dog")
    monkeypatch.setattr(trainer, "train_epochs", lambda run: pytest.fail("training started"))
    err = failed_train(["--resume", str(run), "--epochs", "2"], capsys)
    assert "'cafz'" in err and "'dog'" in err and str(run / ckpt.LAST_FILE) in err, err
    (run / ckpt.LAST_FILE).unlink()
    err = failed_train(["--resume", str(run), "--epochs", "2"], capsys)
    assert "'cafz'" in err and "'dog'" in err and str(run / "summary.json") in err, err
    (run / "summary.json").unlink()  # nothing records the names: the number of classes is all there is to check
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    assert ckpt.load_state(run / ckpt.STATE_FILE)["classes"] == [CAFE_NFC, "dog"]  # recorded from now on


def test_old_run_recorded_in_nfd_resumes_only_when_its_label_order_still_holds(trained, tmp_path, capsys,
                                                                             no_training):
    """Runs from before class names were NFC recorded macOS's NFD names, sorted in that form: label 0 was café."""
    images, run = copy_run(trained, tmp_path)
    state = ckpt.load_state(run / ckpt.STATE_FILE)
    state["classes"] = [CAFE_NFD, "cafz"]  # NFD sort order; the data's labels are now cafz = 0, café = 1
    ckpt.save_state(run / ckpt.STATE_FILE, state)
    err = failed_train(["--resume", str(run), "--epochs", "2"], capsys)
    assert "the same names in another order: label 0 was" in err and "'cafz'" in err, err


def test_old_run_recorded_in_nfd_in_the_same_order_resumes(trained, tmp_path):
    images, run = copy_run(trained, tmp_path)
    state = ckpt.load_state(run / ckpt.STATE_FILE)
    state["classes"] = ["cafz", CAFE_NFD]  # the same classes in the same order, only written in NFD
    ckpt.save_state(run / ckpt.STATE_FILE, state)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    assert ckpt.load_state(run / ckpt.STATE_FILE)["classes"] == CLASSES


# ---- a state.pt records what eval / predict need --------------------------------------------------------

def test_state_pt_copied_out_of_its_run_is_evaluated_with_the_training_preprocessing(trained, tmp_path, capsys):
    alone = tmp_path / "copied"
    alone.mkdir()
    shutil.copy(trained / "run" / ckpt.STATE_FILE, alone / ckpt.STATE_FILE)
    shutil.copy(trained / "run" / ckpt.LAST_FILE, alone / ckpt.LAST_FILE)  # no summary.json beside either

    state = torch.load(alone / ckpt.STATE_FILE, map_location="cpu", weights_only=True)
    assert state["classes"] == CLASSES
    assert state["mean"] == pytest.approx(IMAGENET_MEAN) and state["std"] == pytest.approx(IMAGENET_STD)

    loaded = load_checkpoint(None, alone / ckpt.STATE_FILE, torch.device("cpu"))
    assert loaded.name == MODEL and loaded.get("classes") == CLASSES and loaded.get("img_size") == 16
    assert loaded.get("dataset") == os.path.realpath(trained / "images")
    mean, std = resolve_normalization(loaded)
    assert mean == pytest.approx(IMAGENET_MEAN) and std == pytest.approx(IMAGENET_STD)
    assert mean != pytest.approx(list(loaded.model.pretrained_cfg["mean"]))

    # eval needs neither --model nor --data, and scores as the run's weights file (the same weights without --ema)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(alone / ckpt.STATE_FILE)]) == 0
    from_state = capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(alone / ckpt.LAST_FILE)]) == 0
    from_weights = capsys.readouterr().out
    assert from_state.replace(ckpt.STATE_FILE, ckpt.LAST_FILE) == from_weights


def test_malformed_recorded_classes_in_a_state_are_refused_on_resume(trained, tmp_path, capsys, no_training):
    images, run = copy_run(trained, tmp_path)
    state = ckpt.load_state(run / ckpt.STATE_FILE)
    state["classes"] = ["cafz"]
    ckpt.save_state(run / ckpt.STATE_FILE, state)
    err = failed_train(["--resume", str(run), "--epochs", "2"], capsys)
    assert "is not a state.pt of mobileconv train (1 classes for num_classes 2)" in err, err


# ---- crash-safe, long-name-safe writes -------------------------------------------------------------------

def _small_model():
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))


WRITERS = {
    "deploy.save_weights": lambda path: weights.save_weights(_small_model(), path),
    "checkpoint.save_state": lambda path: ckpt.save_state(path, {"epoch": 1}),
    "checkpoint.save_weights": lambda path: ckpt.save_weights(path, {"w": torch.ones(2)}),
    "deploy.export_model": lambda path: export_model(_small_model().eval(), path, "onnx", input_size=8),
}


@pytest.mark.skipif(os.name != "posix", reason="fstat inodes of POSIX file systems")
@pytest.mark.parametrize("writer", WRITERS)
def test_file_then_rename_then_folder_reach_the_disk_in_that_order(tmp_path, monkeypatch, writer):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        events.append(("replace", os.stat(src).st_ino))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    WRITERS[writer](path)
    monkeypatch.undo()
    assert [what for what, _ in events].count("replace") == 1
    at = events.index(next(e for e in events if e[0] == "replace"))
    assert ("fsync", events[at][1]) in events[:at]  # the data, before the rename
    assert ("fsync", os.stat(tmp_path).st_ino) in events[at + 1:]  # the rename itself, after it
    assert path.read_bytes() != b"old" and os.stat(path).st_ino == events[at][1]


@pytest.mark.parametrize("writer", WRITERS)
def test_an_output_name_of_the_longest_allowed_length_is_written(tmp_path, writer):
    """The temporary file was '.<name>.<random>.tmp' / '.<name>.tmp-<random>': over 255 bytes."""
    path = tmp_path / ("w" * (255 - len(".safetensors")) + ".safetensors")
    path.write_bytes(b"old")  # the name itself is a valid one
    WRITERS[writer](path)
    assert path.read_bytes() != b"old"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_a_multibyte_long_name_is_cut_on_a_character_boundary(tmp_path):
    path = tmp_path / ("\u00e9" * 121 + ".safetensors")  # 242 + 12 bytes in UTF-8
    ckpt.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == [path.name]
