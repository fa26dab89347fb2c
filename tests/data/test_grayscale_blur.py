"""--color-jitter-prob, --grayscale-prob and --gaussian-blur-prob (timm's, SimCLR's augmentations) against plain
tensor formulas: ITU-R 601 luma, and a 23-tap Gaussian written out with reflected borders."""
import math

import pytest
import torch
import torch.nn.functional as F

from mobileconv.cli import main
from mobileconv.data import BatchTransform

from ..engine.helpers import ONE_EPOCH, failed_train
from .test_transforms import MEAN, STD, images, normalise

LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def grey(x):
    return (x.float() / 255 * LUMA).sum(1, keepdim=True).expand(-1, 3, -1, -1)


def normalised(x):
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def gaussian_blur(x, sigma):
    """x (C, H, W) blurred by a 23 x 23 Gaussian of the given sigma, borders reflected (torchvision's GaussianBlur)."""
    taps = torch.arange(23, dtype=torch.float32) - 11
    kernel = torch.exp(-taps ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    padded = F.pad(x[None], (11, 11, 11, 11), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, 23).expand(3, 1, 1, 23), groups=3)
    return F.conv2d(rows, kernel.view(1, 1, 23, 1).expand(3, 1, 23, 1), groups=3)[0]


def test_grayscale_with_probability_one_is_the_luma_in_each_channel():
    x = images(size=12)
    out = BatchTransform(12, MEAN, STD, train=True, grayscale_prob=1.0)(x)
    torch.testing.assert_close(out, normalised(grey(x)), rtol=0, atol=1e-5)


def test_blur_with_probability_one_is_a_23_tap_gaussian_of_a_drawn_sigma():
    torch.manual_seed(0)
    x = images(n=6, size=16)
    transform = BatchTransform(16, MEAN, STD, train=True, gaussian_blur_prob=1.0)
    out = transform(x)
    sigmas = transform.blur._params["sigma"]
    assert sigmas.shape == (6,) and ((0.1 <= sigmas) & (sigmas <= 2.0)).all() and sigmas.std() > 0
    expected = torch.stack([gaussian_blur(image.float() / 255, float(s)) for image, s in zip(x, sigmas)])
    torch.testing.assert_close(out, normalised(expected), rtol=0, atol=1e-4)


@pytest.mark.parametrize("option", ["grayscale_prob", "gaussian_blur_prob", "color_jitter_prob"])
def test_each_applies_to_about_its_share_of_the_images(option):
    torch.manual_seed(0)
    x = images(n=200, size=12)
    jitter = {"color_jitter": 0.4} if option == "color_jitter_prob" else {}
    out = BatchTransform(12, MEAN, STD, train=True, **jitter, **{option: 0.3})(x)
    changed = int(((out - normalise(x)).abs().flatten(1).amax(1) > 1e-4).sum())
    assert abs(changed - 60) < 4 * math.sqrt(200 * 0.3 * 0.7), changed  # binomial(200, 0.3): 60 +- 6.5


def test_the_clean_split_is_left_alone():
    x = images(size=12)
    out = BatchTransform(12, MEAN, STD, train=True, grayscale_prob=1.0, splits=2)(x)
    torch.testing.assert_close(out[:4], normalise(x))
    torch.testing.assert_close(out[4:], normalised(grey(x)), rtol=0, atol=1e-5)


def test_the_blur_needs_12_pixels():
    with pytest.raises(ValueError, match=r"needs images of at least 12 px \(--img-size\), got 11 px"):
        BatchTransform(11, MEAN, STD, train=True, gaussian_blur_prob=0.5)


def test_a_run_with_all_three(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *ONE_EPOCH, "--color-jitter", "0.4", "--color-jitter-prob", "0.8", "--grayscale-prob", "0.2",
                 "--gaussian-blur-prob", "0.5", "--out", str(out)]) == 0
    config = (out / "config.yaml").read_text()
    assert "color_jitter_prob: 0.8\n" in config and "grayscale_prob: 0.2\n" in config
    assert "gaussian_blur_prob: 0.5\n" in config


@pytest.mark.parametrize("argv, message", [
    (["--no-aug", "--grayscale-prob", "0.5"], "--grayscale-prob 0.5 (set on the command line) is an augmentation: "
                                              "leave it out with --no-aug"),
    (["--no-aug", "--color-jitter-prob", "0.5"], "--color-jitter-prob 0.5 (set on the command line) is an "
                                                 "augmentation"),
    (["--color-jitter", "0", "--color-jitter-prob", "0.5"], "--color-jitter-prob 0.5 (set on the command line) is "
                                                            "how often --color-jitter applies, and the colour jitter "
                                                            "is off"),
    (["--color-jitter-prob", "0.5"], "--color-jitter-prob 0.5 is how often the colour jitter applies, and it is off "
                                     "here (--color-jitter defaults to 0 for digits and synthetic data and with --aa)"),
    (["--gaussian-blur-prob", "1.5"], "--gaussian-blur-prob must be a probability in [0, 1], got 1.5"),
    (["--img-size", "8", "--gaussian-blur-prob", "0.5"], "needs images of at least 12 px (--img-size), got 8 px"),
])
def test_bad_or_unused_values_are_refused(argv, message, tmp_path, capsys):
    err = failed_train([*ONE_EPOCH, *argv, "--out", str(tmp_path / "run")], capsys)
    assert message in err
