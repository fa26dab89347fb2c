"""``mobileconv train --pretrained FILE``: fine-tuning from published or own weights.

Oracle: the file's own tensors (read with safetensors), against the run's saved weights after one step at a
learning rate of 1e-12, which moves no weight by more than ~1e-10.
"""
import pytest
import torch
from safetensors.torch import load_file

import mobileconv
from mobileconv.cli import main
from mobileconv.deploy.weights import save_weights

QUICK = ["--data", "synthetic", "--img-size", "32", "--max-train-samples", "8", "--max-val-samples", "8",
         "--batch-size", "8", "--epochs", "1", "--quiet", "--lr", "1e-12", "--warmup-epochs", "0"]


def test_timm_imagenet_weights_start_a_10_class_run_with_a_new_classifier(reference_dir, tmp_path, capsys):
    source = reference_dir / "timm_mixnet_s.safetensors"
    run = tmp_path / "run"
    assert main(["train", "--model", "mixnet_s", "--pretrained", str(source), *QUICK, "--out", str(run)]) == 0, \
        capsys.readouterr().err
    timm, saved = load_file(str(source)), load_file(str(run / "last.safetensors"))
    assert saved["classifier.weight"].shape == (10, 1536)  # the dataset's classes, not ImageNet's 1000
    convs = [k for k in timm if k.endswith("weight") and timm[k].dim() == 4]
    assert len(convs) > 50
    for key in convs:
        torch.testing.assert_close(saved[key], timm[key].float(), rtol=0, atol=1e-6, msg=key)


def test_weights_with_the_runs_classes_keep_their_classifier(tmp_path, capsys):
    model = mobileconv.create_model("mobilenetv3_small_100_cifar", num_classes=10)
    with torch.no_grad():
        model.classifier.weight.normal_(0, 1)
    save_weights(model, tmp_path / "start.safetensors")
    run = tmp_path / "run"
    assert main(["train", "--model", "mobilenetv3_small_100_cifar", "--pretrained", str(tmp_path / "start.safetensors"),
                 *QUICK, "--out", str(run)]) == 0, capsys.readouterr().err
    saved = load_file(str(run / "last.safetensors"))
    torch.testing.assert_close(saved["classifier.weight"], model.classifier.weight.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("model, pretrained, expected", [
    ("mixnet_s", "missing.safetensors", "--pretrained {tmp}/missing.safetensors: no such file"),
    ("mixnet_m", "REF", "--pretrained: {ref} (keys named as in timm / mobileconv) does not fit the model; the model "
                        "was not changed. (missing keys (87): "),
])
def test_unusable_pretrained_weights_stop_the_run_in_one_line(reference_dir, tmp_path, capsys, model, pretrained,
                                                               expected):
    ref = reference_dir / "timm_mixnet_s.safetensors"
    path = str(ref) if pretrained == "REF" else str(tmp_path / pretrained)
    assert main(["train", "--model", model, "--pretrained", path, *QUICK, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert expected.format(tmp=tmp_path, ref=ref) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_other_weights_given_with_resume_are_refused_the_same_ones_accepted(tmp_path, capsys):
    model = mobileconv.create_model("mobilenetv3_small_100_cifar", num_classes=10)
    start, other = tmp_path / "start.safetensors", tmp_path / "other.safetensors"
    save_weights(model, start)
    save_weights(model, other)
    run = tmp_path / "run"
    command = ["train", "--model", "mobilenetv3_small_100_cifar", "--pretrained", str(start), *QUICK]
    assert main([*command, "--out", str(run)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--pretrained", str(other)]) == 2
    err = capsys.readouterr().err
    assert f"--pretrained {other} (set on the command line) with --resume: a resumed run goes on from its own " \
           "weights in state.pt" in err
    assert "pretrained: " + str(start) in (run / "config.yaml").read_text()  # the run is as it was
    # the same command again with --resume (the usual way to continue a run) is fine
    assert main([*command[:-2], "--epochs", "2", "--resume", str(run)]) == 0, capsys.readouterr().err
