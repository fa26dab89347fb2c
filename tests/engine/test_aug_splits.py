"""--aug-splits / --jsd-loss / --resplit: AugMix's training (timm's options). The JSD loss is checked against its
formula written out in numpy, the splits against normalisation by hand, the micro-batches and the whole run
against the plain step and the plain run they must reduce to."""
import numpy as np
import pytest
import torch
from torch import nn

from mobileconv.data import BatchTransform
from mobileconv.engine.distributed import DistEnv
from mobileconv.engine.loop import StepSettings, micro_batches, train_one_epoch
from mobileconv.engine.losses import JsdCrossEntropy

from .helpers import ONE_EPOCH, failed_train, frozen_first_epoch

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def jsd_written_out(logits, labels, splits, alpha=12.0):
    x = logits.double().numpy()
    size = len(x) // splits
    parts = [x[i * size:(i + 1) * size] for i in range(splits)]
    probs = [np.exp(p - p.max(1, keepdims=True)) / np.exp(p - p.max(1, keepdims=True)).sum(1, keepdims=True)
             for p in parts]
    ce = -np.log(probs[0][np.arange(size), labels[:size].numpy()]).mean()
    mixture = np.clip(np.mean(probs, axis=0), 1e-7, 1)
    kl = [(p * (np.log(p) - np.log(mixture))).sum() / size for p in probs]  # summed over classes, per image
    return ce + alpha * np.mean(kl)


@pytest.mark.parametrize("splits", [2, 3])
def test_the_jsd_loss_matches_its_formula(splits):
    g = torch.Generator().manual_seed(splits)
    logits, labels = torch.randn(4 * splits, 7, generator=g) * 2, torch.randint(0, 7, (4,), generator=g)
    targets = labels.repeat(splits)
    got = JsdCrossEntropy(splits)(logits, targets)
    assert got.item() == pytest.approx(jsd_written_out(logits, labels, splits), rel=1e-5)
    same = logits[:4].repeat(splits, 1)  # identical predictions: no divergence, the clean split's cross-entropy
    assert JsdCrossEntropy(splits)(same, targets).item() == pytest.approx(
        nn.functional.cross_entropy(logits[:4], labels).item(), rel=1e-6)


def test_the_jsd_loss_refuses_a_batch_that_does_not_split():
    with pytest.raises(ValueError, match="a batch of 7 logits does not split into 3 equal splits"):
        JsdCrossEntropy(3)(torch.zeros(7, 5), torch.zeros(7, dtype=torch.long))
    with pytest.raises(ValueError, match="num_splits must be >= 2"):
        JsdCrossEntropy(1)


def batch(n=4, size=12):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def normalised(images):
    return (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_the_splits_are_a_clean_batch_and_augmented_versions_of_it():
    images = batch()
    torch.manual_seed(0)
    out = BatchTransform(12, MEAN, STD, train=True, auto_augment="rand-m9-n3", color_jitter=0.4, splits=3)(images)
    clean, first, second = out.split(4)
    torch.testing.assert_close(clean, normalised(images))  # no crop, no flip here: the clean split is only normalised
    assert not torch.allclose(first, clean) and not torch.allclose(second, first)  # each augmented on its own draws


@pytest.mark.parametrize("resplit", [False, True])
def test_erasing_spares_the_clean_split_with_resplit_only(resplit):
    images = batch()
    torch.manual_seed(0)
    out = BatchTransform(12, MEAN, STD, train=True, reprob=1.0, splits=2, resplit=resplit)(images)
    clean, augmented = out.split(4)
    erased = (augmented == 0).flatten(1).any(1)  # const erasing writes 0, the mean colour
    assert erased.all()
    assert torch.equal(clean, normalised(images)) == resplit


def test_micro_batches_take_the_same_images_from_every_split():
    ids = torch.arange(5).repeat(3)  # image i of split s at s * 5 + i
    images = ids.float().view(15, 1, 1, 1).expand(15, 3, 2, 2).contiguous(memory_format=torch.channels_last)
    parts = micro_batches(images, ids, 2, splits=3)
    assert [t.tolist() for _, t in parts] == [[0, 1, 2] * 3, [3, 4] * 3]
    assert all(torch.equal(x[:, 0, 0, 0].long(), t) and x.is_contiguous(memory_format=torch.channels_last)
               for x, t in parts)
    assert [t.tolist() for _, t in micro_batches(images, ids, 2)] == [ids[:8].tolist(), ids[8:].tolist()]


def test_micro_batches_take_the_whole_batchs_jsd_step():
    def model():
        torch.manual_seed(1)  # no batch norm: the micro-batches' gradients add up to the whole batch's exactly
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))

    images, labels = batch(6, 8), torch.arange(6) % 5
    transform = BatchTransform(8, MEAN, STD, train=True, auto_augment="rand-m9", splits=3)
    nets = []
    for accum in (1, 3):
        net = model()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        torch.manual_seed(2)  # the same augmentation draws
        result = train_one_epoch(net, [(images, labels)], optimizer, scheduler, JsdCrossEntropy(3), transform,
                                 DistEnv(), epoch=1, settings=StepSettings(grad_accum_steps=accum))
        nets.append((net, result["loss"]))
    (whole, whole_loss), (parts, parts_loss) = nets
    assert parts_loss == pytest.approx(whole_loss, rel=1e-5)
    for a, b in zip(whole.parameters(), parts.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)




def test_a_run_over_splits_that_nothing_augments_is_the_plain_run(tmp_path):
    # synthetic data has no colour jitter: without --aa the augmented splits are copies of the clean one, batch
    # norm sees the same statistics, the divergence is 0 and the loss is the plain run's cross-entropy (no dropout,
    # whose masks would be drawn for three times the images)
    plain = frozen_first_epoch(tmp_path / "plain")
    split = frozen_first_epoch(tmp_path / "split", "--aug-splits", "3", "--jsd-loss")
    assert split["loss"] == pytest.approx(plain["loss"], rel=1e-4)
    augmix = frozen_first_epoch(tmp_path / "augmix", "--aug-splits", "3", "--jsd-loss", "--aa", "augmix-m3-w3")
    assert augmix["loss"] != pytest.approx(plain["loss"], rel=1e-5)  # the augmented splits are other images now


@pytest.mark.parametrize("argv, message", [
    (["--jsd-loss"], "--jsd-loss (set on the command line) compares the predictions of --aug-splits, which is off"),
    (["--aug-splits", "1"], "--aug-splits must be 0 (off) or >= 2"),
    (["--aug-splits", "3", "--no-aug"], "--aug-splits 3 (set on the command line) is an augmentation"),
    (["--aug-splits", "2", "--resplit"], "--resplit (set on the command line) spares the clean split"),
    (["--aug-splits", "2", "--jsd-loss", "--bce-loss"], "--jsd-loss and --bce-loss are two different losses"),
    (["--aug-splits", "2", "--jsd-loss", "--mixup", "0.2"], "--jsd-loss scores the clean split against class labels"),
])
def test_bad_combinations_are_refused(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert message in failed_train([*ONE_EPOCH, *argv, "--out", str(out)], capsys)
    assert not out.exists()
