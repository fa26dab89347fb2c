"""--bce-loss: timm's binary cross-entropy. The oracle is the loss written out in numpy, one sigmoid per logit;
runs with and without the option show that it is the loss the training steps take."""
import numpy as np
import pytest
import torch

from mobileconv.engine.losses import BinaryCrossEntropy

from .helpers import ONE_EPOCH, failed_train, frozen_first_epoch


def written_out(logits, targets, *, pos_weight=1.0, sum_classes=False):
    """``-p t log s(x) - (1 - t) log(1 - s(x))`` per logit in float64, averaged (or summed per image)."""
    x, t = logits.double().numpy(), targets.double().numpy()
    s = 1 / (1 + np.exp(-x))
    loss = -pos_weight * t * np.log(s) - (1 - t) * np.log(1 - s)
    return loss.sum(1).mean() if sum_classes else loss.mean()


def smoothed(labels, classes, s):
    t = np.full((len(labels), classes), s / classes)
    t[np.arange(len(labels)), labels.numpy()] = 1 - s + s / classes
    return torch.from_numpy(t)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 5, generator=g) * 3, torch.randint(0, 5, (8,), generator=g)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("sum_classes", [False, True])
@pytest.mark.parametrize("pos_weight", [None, 2.5])
def test_class_indices_match_the_loss_written_out(batch, smoothing, sum_classes, pos_weight):
    logits, labels = batch
    got = BinaryCrossEntropy(smoothing, sum_classes=sum_classes, pos_weight=pos_weight)(logits, labels)
    want = written_out(logits, smoothed(labels, 5, smoothing), pos_weight=pos_weight or 1.0, sum_classes=sum_classes)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_soft_targets_are_taken_as_they_are_and_a_threshold_binarises_them(batch):
    logits, labels = batch
    soft = 0.7 * smoothed(labels, 5, 0.1) + 0.3 * smoothed(labels.flip(0), 5, 0.1)  # a mixup of the batch
    loss = BinaryCrossEntropy(smoothing=0.1)  # smoothing is for class indices: soft targets already carry it
    assert loss(logits, soft.float()).item() == pytest.approx(written_out(logits, soft), rel=1e-5)
    binary = (soft > 0.2).double()
    assert set(binary.sum(1).tolist()) <= {1.0, 2.0}  # the label, and the mixed-in label where it differs
    thresholded = BinaryCrossEntropy(target_threshold=0.2)(logits, soft.float())
    assert thresholded.item() == pytest.approx(written_out(logits, binary), rel=1e-5)


def test_bfloat16_logits_are_scored_in_float32(batch):
    logits, labels = batch
    got = BinaryCrossEntropy()(logits.bfloat16(), labels)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(written_out(logits.bfloat16().float(), smoothed(labels, 5, 0)), rel=1e-5)


def test_targets_of_another_shape_are_refused(batch):
    logits, _ = batch
    with pytest.raises(ValueError, match=r"class indices of shape \(8,\) or soft targets of shape \(8, 5\)"):
        BinaryCrossEntropy()(logits, torch.zeros(8, 4))




def test_the_training_steps_take_the_binary_loss(tmp_path):
    ce = frozen_first_epoch(tmp_path / "ce")["loss"]
    bce = frozen_first_epoch(tmp_path / "bce", "--bce-loss")["loss"]
    summed = frozen_first_epoch(tmp_path / "sum", "--bce-loss", "--bce-sum")["loss"]
    classes = 10  # synthetic's
    assert summed == pytest.approx(classes * bce, rel=1e-4)  # a sum over the classes instead of their mean
    assert bce < 0.8 < 2.0 < ce  # about log 2 per logit against about log 10 per image for the softmax


@pytest.mark.parametrize("argv, message", [
    (["--bce-sum"], "--bce-sum (set on the command line) is used by --bce-loss only: add --bce-loss"),
    (["--bce-target-thresh", "0.2"], "--bce-target-thresh 0.2 (set on the command line) is used by --bce-loss only"),
    (["--bce-pos-weight", "2"], "--bce-pos-weight 2.0 (set on the command line) is used by --bce-loss only"),
    (["--bce-loss", "--bce-target-thresh", "1"], "--bce-target-thresh must be in [0, 1)"),
    (["--bce-loss", "--bce-pos-weight", "0"], "--bce-pos-weight must be a finite number > 0"),
])
def test_bad_values_and_options_without_bce_loss_are_refused(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert message in failed_train([*ONE_EPOCH, *argv, "--out", str(out)], capsys)
    assert not out.exists()
