"""``mobileconv eval`` on a tree with val/ alone (ImageNet's validation set without its training set), or on a
folder of class folders (``--data imagenet/val``): the test images are read, nothing else is needed.

Oracle: the accuracy counted by hand from a model whose prediction is fixed by the image colour.
"""
import numpy as np
import pytest
import torch
from PIL import Image

import mobileconv
from mobileconv.cli import main
from mobileconv.data import build_test_dataset
from mobileconv.engine.checkpoint import save_weights

CLASSES = ("blue", "red")


def _val(folder, counts=(3, 2)):
    for name, count in zip(CLASSES, counts):
        (folder / name).mkdir(parents=True)
        for i in range(count):
            colour = (0, 0, 255) if name == "blue" else (255, 0, 0)
            Image.fromarray(np.full((20, 24, 3), colour, np.uint8)).save(folder / name / f"{i}.png")


@pytest.mark.parametrize("layout", ["val-only", "class-folders"])
def test_the_test_split_is_read_without_a_train_folder(tmp_path, layout):
    root = tmp_path / "data"
    _val(root / "val" if layout == "val-only" else root)
    test, info = build_test_dataset(str(root), 16)
    assert info.classes == list(CLASSES) and info.kind == "imagefolder" and info.test_split == (
        "val" if layout == "val-only" else "data")
    assert len(test) == 5 and test.labels.tolist() == [0, 0, 0, 1, 1]


def test_train_folder_is_not_listed_for_eval(tmp_path, monkeypatch):
    root = tmp_path / "data"
    _val(root / "val")
    (root / "train" / "only-in-train").mkdir(parents=True)  # would make build_datasets refuse the tree
    test, info = build_test_dataset(str(root), 16)
    assert info.classes == list(CLASSES)


def test_eval_scores_a_checkpoint_on_a_folder_of_class_folders(tmp_path, capsys):
    """A 2-class model whose classifier ignores its features (weight 0, bias favouring 'red'): 2 of 5 right."""
    root = tmp_path / "val"
    _val(root)
    model = mobileconv.create_model("mobilenetv3_small_100", num_classes=2)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 1.0]))  # always 'red'
    save_weights(tmp_path / "w.safetensors", model.state_dict())
    assert main(["eval", "--checkpoint", str(tmp_path / "w.safetensors"), "--model", "mobilenetv3_small_100",
                 "--data", str(root), "--img-size", "32", "--device", "cpu", "--format", "json"]) == 0
    import json
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == 5 and result["top1"] == pytest.approx(100 * 2 / 5)  # the 2 red images of 5
    assert result["split"] == "val" and result["classes"] == list(CLASSES)


def test_a_class_without_test_images_is_reported_not_refused(tmp_path):
    root = tmp_path / "val"
    _val(root, counts=(2, 0))
    test, info = build_test_dataset(str(root), 16)
    assert info.classes == list(CLASSES) and len(test) == 2


@pytest.mark.parametrize("make, message", [
    (lambda root: root.mkdir(), "no class folders"),
    (lambda root: (root / "train" / "a").mkdir(parents=True), "missing val/ folder"),
    (lambda root: (root / "val" / "a").mkdir(parents=True), "no images"),
])
def test_unusable_folders_are_refused(tmp_path, make, message):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(ValueError, match=message):
        build_test_dataset(str(root), 16)


def test_eval_with_worker_processes_gives_the_same_result(tmp_path, capsys):
    import json

    _val(tmp_path / "val", counts=(3, 3))
    save_weights(tmp_path / "w.safetensors", mobileconv.create_model("mobilenetv3_small_100", num_classes=2)
                 .state_dict())
    results = []
    for workers in ("0", "2"):
        assert main(["eval", "--checkpoint", str(tmp_path / "w.safetensors"), "--model", "mobilenetv3_small_100",
                     "--data", str(tmp_path / "val"), "--img-size", "32", "--batch-size", "2", "--device", "cpu",
                     "--format", "json", "--workers", workers]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["count"] == 6 and results[0]["confusion"] == results[1]["confusion"]
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-6)


def test_negative_workers_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--checkpoint", "w.safetensors", "--workers", "-1"])
    assert "expected an integer >= 0, got '-1'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["train", "val"])
def test_a_folder_of_class_folders_may_have_a_class_named_train_or_val(tmp_path, name):
    """CIFAR-100 has a class 'train': a folder whose train/ or val/ holds images, not class folders, is a class."""
    root = tmp_path / "data"
    _val(root)
    (root / name).mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / name / "0.png")
    test, info = build_test_dataset(str(root), 16)
    assert info.classes == sorted([*CLASSES, name]) and len(test) == 6


def test_eval_optimize_scores_the_optimised_copy_alike(tmp_path, capsys):
    """--optimize: the same confusion matrix and loss (to 1e-4) as the plain model; the checkpoint's model is
    evaluated through optimize_for_inference's copy (BN folded: no BatchNorm2d left in what runs)."""
    import json

    from mobileconv.engine import loop

    _val(tmp_path / "val", counts=(3, 3))
    torch.manual_seed(0)
    save_weights(tmp_path / "w.safetensors", mobileconv.create_model("mixnet_s", num_classes=2).state_dict())
    ran = []
    evaluate = loop.evaluate

    def recording_evaluate(model, *args, **kwargs):
        ran.append(any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()))
        return evaluate(model, *args, **kwargs)

    results = []
    with pytest.MonkeyPatch.context() as mp:
        from mobileconv.engine import inference
        mp.setattr(inference, "evaluate", recording_evaluate)
        for option in ([], ["--optimize"]):
            assert main(["eval", "--checkpoint", str(tmp_path / "w.safetensors"), "--model", "mixnet_s", "--data",
                         str(tmp_path / "val"), "--img-size", "64", "--device", "cpu", "--format", "json",
                         *option]) == 0
            results.append(json.loads(capsys.readouterr().out))
    assert ran == [True, False]
    assert [r["optimized"] for r in results] == [False, True]
    assert results[0]["confusion"] == results[1]["confusion"]
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-4)
