"""``mobileconv eval`` / ``predict``: checked checkpoint loading (BN eps restored), and their errors.

Checkpoints are written here directly (no training run): a fresh model with the metadata the
trainer records, or with ``deploy.weights.save_weights`` for one whose BatchNorm eps is 1e-3.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

import mobileconv
from mobileconv.cli import main
from mobileconv.data import build_datasets
from mobileconv.deploy.weights import save_weights as save_mobileconv_weights
from mobileconv.deploy.weights import set_bn_eps
from mobileconv.engine import inference
from mobileconv.engine.checkpoint import save_weights

from .helpers import MODEL

CLASSES = [f"class_{i}" for i in range(10)]  # the synthetic dataset's
TRAINER_META = {"format": "mobileconv", "model": MODEL, "dataset": "synthetic", "num_classes": 10, "classes": CLASSES,
                "img_size": 16, "mean": [0.5] * 3, "std": [0.5] * 3}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A checkpoint as ``mobileconv train`` writes it (tensors + JSON metadata), in a folder of its own."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "last.safetensors"
    save_weights(path, mobileconv.create_model(MODEL, num_classes=10).state_dict(), TRAINER_META)
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(path)
    return path


def run(args, capsys):
    """``main(args)`` -> (exit code, stderr); argparse's exit becomes an exit code too."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def assert_one_line_error(code, err, command, *parts):
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"mobileconv {command}: error: "), err
    assert "Traceback" not in err
    for part in parts:
        assert part in err, err


# ---- checked loading -------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["eval", "predict", "convert"])
def test_missing_checkpoint_is_named_without_errno(tmp_path, image, capsys, command):
    missing = tmp_path / "nope.safetensors"
    args = {"eval": ["eval", "--checkpoint", missing],
            "predict": ["predict", image, "--checkpoint", missing],
            "convert": ["convert", missing, tmp_path / "out.safetensors", "--model", MODEL]}[command]
    code, err = run(args, capsys)
    assert_one_line_error(code, err, command, f"error: checkpoint file not found: {missing}\n")
    assert "Errno" not in err


def test_predict_refuses_a_folder_before_predicting(ckpt, image, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(inference, "load_image", lambda *a: pytest.fail("an image was read before the check"))
    code, err = run(["predict", image, tmp_path, "--checkpoint", ckpt], capsys)
    assert_one_line_error(code, err, "predict", f"image {tmp_path} is a folder; pass image files")


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_checkpoint_of_another_architecture_is_the_loaders_one_line_error(ckpt, image, capsys, command):
    args = [command, "--checkpoint", ckpt, "--model", "mixnet_s_cifar"]
    code, err = run(args + ([image] if command == "predict" else ["--data", "synthetic"]), capsys)
    # the message of deploy.weights' checked loader (as `mobileconv export` prints it), not load_state_dict's
    assert_one_line_error(code, err, command, f"{ckpt} (mobileconv checkpoint) does not fit the model",
                          "missing keys (", "shape mismatch keys (")


@pytest.fixture(scope="module")
def eps_ckpt(tmp_path_factory):
    """A model whose BatchNorms have eps 1e-3 and the statistics of the synthetic test images (where the
    smallest variances are ~1e-5, so eps matters), saved with ``deploy.weights.save_weights`` (metadata
    ``bn_eps``), and the model itself."""
    torch.manual_seed(0)
    model = mobileconv.create_model(MODEL, num_classes=10)
    set_bn_eps(model, 1e-3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None  # running statistics = those of the one batch below
                m.weight.uniform_(0.5, 1.5)
        model.train()(synthetic_test_batch()[0])
    path = tmp_path_factory.mktemp("eps") / "eps.safetensors"
    save_mobileconv_weights(model.eval(), path, {"model": MODEL})
    return path, model


def synthetic_test_batch(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
    """The 100 synthetic test images at 32 px, normalised with ``mean`` / ``std`` (default synthetic's own, 0.5)."""
    _, test_set, _ = build_datasets("synthetic", 32)
    images, labels = zip(*(test_set[i] for i in range(len(test_set))))
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return (torch.stack(images).float() / 255 - mean) / std, torch.stack(labels)


def test_loaded_model_restores_the_recorded_bn_eps(eps_ckpt):
    path, original = eps_ckpt
    loaded = inference.load_checkpoint(None, path, torch.device("cpu"))
    oracle = mobileconv.create_model(MODEL, num_classes=10, pretrained=str(path)).eval()
    assert {m.eps for m in loaded.model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded.model(x), oracle(x))
        assert torch.equal(loaded.model(x), original(x))


def test_predict_and_eval_give_the_saved_models_outputs(eps_ckpt, image, capsys):
    path, original = eps_ckpt
    # nothing recorded but the model: the model's 32 px and CIFAR-10 mean / std, class names = indices
    capsys.readouterr()
    assert main(["predict", str(image), "--checkpoint", str(path), "--format", "json", "--device", "cpu"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    x = torch.from_numpy(np.array(Image.open(image))).permute(2, 0, 1).float().unsqueeze(0) / 255
    with torch.no_grad():
        mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
        expected = original((x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)).softmax(1)[0].topk(5)
    assert [t["class"] for t in top] == [str(i) for i in expected.indices.tolist()]
    np.testing.assert_allclose([t["prob"] for t in top], expected.values.numpy(), rtol=1e-5)

    assert main(["eval", "--checkpoint", str(path), "--data", "synthetic", "--format", "json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    # eval normalises as predict does: nothing recorded, so with the model's CIFAR-10 mean / std, not synthetic's
    images, labels = synthetic_test_batch(mean=[0.4914, 0.4822, 0.4465], std=[0.2470, 0.2435, 0.2616])
    with torch.no_grad():
        loss = F.cross_entropy(original(images), labels).item()
    assert result["count"] == 100
    assert result["loss"] == pytest.approx(loss, rel=1e-5)


@pytest.mark.parametrize("as_type", [str, Path])
def test_predict_images_takes_one_path_as_well_as_a_list(ckpt, image, as_type):
    # a bare string used to be iterated character by character ("image /: ...")
    one = inference.predict_images(None, ckpt, as_type(image), top_k=3, device="cpu")
    listed = inference.predict_images(None, ckpt, [image], top_k=3, device="cpu")
    assert len(one) == 1 and one[0]["image"] == str(image)
    assert one == listed


def test_eval_refuses_data_with_other_class_names(ckpt, tmp_path, capsys, monkeypatch):
    # digits and synthetic both have 10 classes: the count alone let a digits checkpoint be scored on synthetic
    monkeypatch.setattr(inference, "evaluate", lambda *a, **k: pytest.fail("evaluation started"))
    code, err = run(["eval", "--checkpoint", ckpt, "--data", "digits"], capsys)
    assert_one_line_error(code, err, "eval", "was trained on the classes ['class_0', 'class_1', 'class_2', ...], "
                                             "--data digits has ['0', '1', '2', ...]")
    other = tmp_path / "other.safetensors"  # recorded dataset and class names that disagree
    save_weights(other, mobileconv.create_model(MODEL, num_classes=10).state_dict(),
                 {**TRAINER_META, "classes": [str(i) for i in range(10)]})
    code, err = run(["eval", "--checkpoint", other], capsys)
    assert_one_line_error(code, err, "eval", "its recorded dataset 'synthetic' has ['class_0', 'class_1', 'class_2', ...]")


# ---- option values ---------------------------------------------------------------------------------

@pytest.mark.parametrize("command, option, value", [
    ("eval", "--img-size", "0"), ("eval", "--img-size", "-8"), ("eval", "--img-size", "x"),
    ("eval", "--max-val-samples", "0"), ("eval", "--max-val-samples", "-5"),
    ("predict", "--img-size", "0"), ("predict", "--img-size", "-3"),
])
def test_non_positive_sizes_are_refused_by_the_parser(ckpt, image, capsys, monkeypatch, command, option, value):
    monkeypatch.setattr(inference, "load_checkpoint", lambda *a: pytest.fail("the checkpoint was loaded"))
    args = [command, "--checkpoint", ckpt, option, value] + ([image] if command == "predict" else [])
    code, err = run(args, capsys)
    assert_one_line_error(code, err, command, f"argument {option}: expected a positive integer, got '{value}'")


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_img_size_below_the_models_minimum_is_refused(ckpt, image, capsys, command):
    # the _cifar forms have output stride 8: they need 8 px or more (SPEC.md, models/_builder.cifar_form)
    args = [command, "--checkpoint", ckpt, "--img-size", "7"] + ([image] if command == "predict" else [])
    code, err = run(args, capsys)
    assert_one_line_error(code, err, command, "--img-size 7 is too small for mobilenetv3_small_100_cifar",
                          "at least 8 pixels")
    assert run(["predict", image, "--checkpoint", ckpt, "--img-size", "8"], capsys)[0] == 0


def test_library_refuses_non_positive_sizes(ckpt, image):
    with pytest.raises(ValueError, match="--img-size must be a positive integer, got 0"):
        inference.evaluate_checkpoint(None, ckpt, img_size=0)
    with pytest.raises(ValueError, match="--max-val-samples must be a positive integer, got -5"):
        inference.evaluate_checkpoint(None, ckpt, max_samples=-5)
    with pytest.raises(ValueError, match="--img-size must be a positive integer, got 0"):
        inference.predict_images(None, ckpt, [image], img_size=0)


@pytest.mark.parametrize("top_k", [0, -2])
def test_library_refuses_non_positive_top_k(ckpt, image, top_k):
    """top_k=0 gave empty predictions, a negative one torch's 'selected index k out of range'."""
    with pytest.raises(ValueError, match=f"--top-k must be a positive integer, got {top_k}"):
        inference.predict_images(None, ckpt, [image], top_k=top_k)


# ---- corrupt metadata ------------------------------------------------------------------------------

BOTH_READ = [  # metadata field, corrupt value, expected message
    ("img_size", "abc", "recorded img_size 'abc' is not a positive integer"),
    ("img_size", "-5", "recorded img_size -5 is not a positive integer"),
    ("img_size", "4", "img_size 4 recorded in {path} is too small for mobilenetv3_small_100_cifar"),
    ("model", "42", "recorded model 42 is not a model name"),  # not "--model 42": no --model was given
    ("model", "resnet50", "recorded model 'resnet50' is not a known model"),
]


@pytest.mark.parametrize("command, field, value, expected",
                         [(c, *case) for c in ("eval", "predict") for case in BOTH_READ]
                         + [("eval", "dataset", "7", "recorded dataset 7 is not a --data value")])
def test_corrupt_metadata_names_the_file_and_field(tmp_path, image, capsys, command, field, value, expected):
    path = tmp_path / "c.safetensors"
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in TRAINER_META.items()}
    save_file(mobileconv.create_model(MODEL, num_classes=10).state_dict(), path, metadata={**meta, field: value})
    args = [command, "--checkpoint", path] + ([image] if command == "predict" else [])
    code, err = run(args, capsys)
    assert_one_line_error(code, err, command, str(path), expected.format(path=path))


@pytest.mark.parametrize("field, value, expected", [
    ("classes", "5", "recorded classes 5 is not a list of class names"),
    ("classes", '["a", "b"]', "2 recorded class names for the checkpoint's 10 outputs"),
    ("mean", "[0.5, 0.5]", "recorded mean [0.5, 0.5] is not a list of 3 numbers"),
    ("std", "[0.5, 0, 0.5]", "recorded std [0.5, 0, 0.5] is not a list of 3 numbers > 0"),
    # Python's json reads NaN / Infinity: such a normalisation made every probability nan
    ("mean", "[NaN, 0.5, 0.5]", "recorded mean [nan, 0.5, 0.5] is not a list of 3 numbers (finite"),
    ("std", "[0.5, Infinity, 0.5]", "recorded std [0.5, inf, 0.5] is not a list of 3 numbers > 0 (finite"),
])
def test_corrupt_metadata_that_predict_reads(tmp_path, image, capsys, field, value, expected):
    path = tmp_path / "c.safetensors"
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in TRAINER_META.items()}
    save_file(mobileconv.create_model(MODEL, num_classes=10).state_dict(), path, metadata={**meta, field: value})
    code, err = run(["predict", image, "--checkpoint", path], capsys)
    assert_one_line_error(code, err, "predict", str(path), expected)


# ---- output files ----------------------------------------------------------------------------------

@pytest.mark.parametrize("plot, message", [
    ("nodir/x.png", "plot folder '{tmp}/nodir' does not exist"),
    ("x.txt", "plot file must end in .png, got '{tmp}/x.txt'"),
])
def test_bad_plot_path_is_refused_before_evaluating(ckpt, tmp_path, capsys, monkeypatch, plot, message):
    monkeypatch.setattr(inference, "evaluate_checkpoint", lambda *a: pytest.fail("evaluation started"))
    code, err = run(["eval", "--checkpoint", ckpt, "--plot", tmp_path / plot], capsys)
    assert_one_line_error(code, err, "eval", message.format(tmp=tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_failed_eval_writes_nothing(ckpt, tmp_path, capsys):
    code, err = run(["eval", "--checkpoint", ckpt, "--model", "mixnet_s_cifar", "--out", tmp_path / "out",
                     "--plot", tmp_path / "cm.png"], capsys)
    assert_one_line_error(code, err, "eval", "does not fit the model")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    code, err = run(["eval", "--checkpoint", ckpt, "--out", tmp_path / "file"], capsys)
    assert_one_line_error(code, err, "eval", f"--out {tmp_path / 'file'} exists and is not a folder")


def test_unwritable_out_is_refused_before_evaluating(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(inference, "evaluate_checkpoint", lambda *a: pytest.fail("evaluation started"))
    (tmp_path / "file").write_text("x")
    code, err = run(["eval", "--checkpoint", ckpt, "--out", tmp_path / "file" / "run"], capsys)
    assert_one_line_error(code, err, "eval", f"--out {tmp_path / 'file' / 'run'}: cannot write there")


def test_a_recorded_dataset_that_is_gone_is_named_as_the_checkpoints(tmp_path, capsys):
    """The user passed no --data: the error says the path came from the checkpoint, and how to override it."""
    path = tmp_path / "last.safetensors"
    gone = tmp_path / "moved-away"
    save_weights(path, mobileconv.create_model(MODEL, num_classes=10).state_dict(),
                 {**TRAINER_META, "dataset": str(gone)})
    code, err = run(["eval", "--checkpoint", path], capsys)
    assert_one_line_error(code, err, "eval", str(gone), f"(the dataset {path} records; pass --data to use another)")
