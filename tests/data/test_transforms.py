"""Batch transforms and mixup / cutmix against plain tensor formulas."""
import pytest
import torch

from mobileconv.data import BatchTransform, MixupCutmix, one_hot_smooth

MEAN, STD = (0.1, 0.2, 0.3), (0.5, 0.4, 0.25)


def images(n=4, size=8):
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def normalise(x):
    return (x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_eval_transform_is_scaling_and_normalisation():
    x = images()
    torch.testing.assert_close(BatchTransform(8, MEAN, STD)(x), normalise(x))


def test_eval_transform_resizes_to_size():
    out = BatchTransform(16, MEAN, STD)(images(size=8))
    assert out.shape == (4, 3, 16, 16)


def test_train_flip_with_probability_one_mirrors():
    x = images()
    t = BatchTransform(8, MEAN, STD, train=True, scale=(1.0, 1.0), hflip=1.0)
    torch.testing.assert_close(t(x), normalise(x).flip(-1))


def test_train_crop_changes_images_but_keeps_shape():
    torch.manual_seed(0)
    x = images(size=16)
    out = BatchTransform(16, MEAN, STD, train=True, scale=(0.2, 0.5), color_jitter=0.4)(x)
    assert out.shape == x.shape and not torch.allclose(out, normalise(x))


def test_one_hot_smooth_formula():
    t = one_hot_smooth(torch.tensor([2, 0]), 4, 0.2)
    assert torch.allclose(t, torch.tensor([[0.05, 0.05, 0.85, 0.05], [0.85, 0.05, 0.05, 0.05]]))


def test_mixup_mixes_images_and_targets_with_one_lambda():
    torch.manual_seed(1)
    x, y = torch.randn(6, 3, 8, 8), torch.arange(6)
    mixed, soft = MixupCutmix(6, mixup_alpha=0.4)(x, y)
    lam = float(soft[0, 0])  # sample 0 keeps lam of its label 0, gets 1 - lam of label 5
    assert torch.allclose(soft.sum(1), torch.ones(6))
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.flip(0))
    assert soft[0, 5] == pytest.approx(1 - lam)


def test_cutmix_target_weight_is_the_kept_area():
    torch.manual_seed(3)
    x = torch.zeros(2, 1, 20, 20)
    x[1] = 1.0
    mixed, soft = MixupCutmix(2, cutmix_alpha=1.0)(x, torch.tensor([0, 1]))
    kept = float((mixed[0] == 0).float().mean())  # pixels of sample 0 not replaced by sample 1
    assert soft[0, 0].item() == pytest.approx(kept) and soft[1, 1].item() == pytest.approx(kept)
