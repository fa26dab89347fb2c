"""Digits split and normalisation against scikit-learn's raw data; augmentation keeps channel order."""
from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sk_digits

from mobileconv.data import BatchTransform, build_datasets


def test_train_and_test_are_a_partition_of_the_1797_images():
    """As multisets of (pixels, label): every source image once, in exactly one split (digits has duplicates)."""
    train, test, _ = build_datasets("digits", 8)
    x, y = sk_digits(return_X_y=True)
    source = Counter(tuple(np.round(row * 255 / 16).astype(int)) + (int(label),) for row, label in zip(x, y))
    ours = Counter(tuple(img[0].flatten().tolist()) + (int(label),) for ds in (train, test)
                   for img, label in zip(ds.images, ds.labels))
    assert ours == source and (len(train), len(test)) == (1437, 360)
    assert set(train.labels.tolist()) == set(test.labels.tolist()) == set(range(10))


def test_normalisation_is_that_of_the_32px_train_split():
    train, _, info = build_datasets("digits", 32)
    pixels = train.images[:, 0].double() / 255  # grey: the three channels are equal
    assert info.mean == pytest.approx((float(pixels.mean()),) * 3, abs=5e-4)
    assert info.std == pytest.approx((float(pixels.std()),) * 3, abs=5e-4)


def test_augmentation_keeps_channels_apart():
    """A pure red batch stays pure red through crop, flip and resize (no jitter)."""
    images = torch.zeros(4, 3, 12, 12, dtype=torch.uint8)
    images[:, 0] = 200
    torch.manual_seed(0)
    out = BatchTransform(8, (0.0,) * 3, (1.0,) * 3, train=True, scale=(0.3, 0.6), hflip=0.5)(images)
    assert out.shape == (4, 3, 8, 8)
    torch.testing.assert_close(out[:, 0], torch.full((4, 8, 8), 200 / 255))
    assert torch.all(out[:, 1:] == 0)
