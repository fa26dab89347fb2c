"""``--reprob``: random erasing on the normalised batch (one rectangle per image, set to 0 = the mean colour;
``--recount``: up to N), with timm's sampler.

Oracle: the erased pixels found by comparing against the same batch transformed without erasing, and
the rectangle / area bounds of Zhong et al. (2-33% of the area, aspect ratio 0.3-3.3), up to pixel rounding.
"""
import pytest
import torch

from mobileconv.cli import main
from mobileconv.data import BatchTransform

MEAN, STD = (0.2, 0.3, 0.4), (0.5, 0.5, 0.5)


def test_every_image_gets_one_rectangle_at_the_mean_colour_when_reprob_is_1():
    torch.manual_seed(0)
    images = torch.full((64, 3, 40, 40), 200, dtype=torch.uint8)  # normalised: far from 0 in every channel
    plain = BatchTransform(40, MEAN, STD, train=True)(images)
    erased = BatchTransform(40, MEAN, STD, train=True, reprob=1.0)(images)
    changed = (erased != plain).any(dim=1)  # (N, H, W)
    assert torch.equal(erased.masked_select(changed.unsqueeze(1).expand_as(erased)),
                       torch.zeros(int(changed.sum()) * 3))
    for mask in changed:
        rows, cols = mask.any(dim=1).nonzero().flatten(), mask.any(dim=0).nonzero().flatten()
        assert len(rows) and len(cols)
        h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        assert int(mask.sum()) == h * w  # one filled rectangle
        assert 0.015 <= h * w / (40 * 40) <= 0.36
        assert 0.3 / 1.5 <= h / w <= 3.3 * 1.5  # 0.3-3.3, loosened for rounding to whole pixels


def test_reprob_is_a_probability_per_image():
    torch.manual_seed(0)
    images = torch.full((400, 3, 16, 16), 200, dtype=torch.uint8)
    plain = BatchTransform(16, MEAN, STD, train=True)(images)
    erased = BatchTransform(16, MEAN, STD, train=True, reprob=0.25)(images)
    share = (erased != plain).flatten(1).any(dim=1).float().mean().item()
    assert 0.18 <= share <= 0.32  # 100 of 400 expected; binomial sd 8.7 images


def test_eval_transform_never_erases():
    images = torch.full((8, 3, 16, 16), 200, dtype=torch.uint8)
    assert torch.equal(BatchTransform(16, MEAN, STD, reprob=1.0)(images), BatchTransform(16, MEAN, STD)(images))


QUICK = ["--model", "mobilenetv3_small_100_cifar", "--data", "synthetic", "--img-size", "16",
         "--max-train-samples", "16", "--max-val-samples", "8", "--batch-size", "8", "--epochs", "1", "--quiet"]


def test_train_with_random_erasing_records_it(tmp_path, capsys):
    assert main(["train", *QUICK, "--reprob", "0.25", "--out", str(tmp_path / "run")]) == 0, capsys.readouterr().err
    assert "reprob: 0.25" in (tmp_path / "run" / "config.yaml").read_text()


@pytest.mark.parametrize("args, expected", [
    (["--reprob", "1.5"], "--reprob must be a probability in [0, 1], got 1.5"),
    (["--no-aug", "--reprob", "0.2"], "--reprob must be 0 with --no-aug (random erasing is an augmentation)"),
])
def test_bad_reprob_is_refused(tmp_path, capsys, args, expected):
    assert main(["train", *QUICK, *args, "--out", str(tmp_path / "run")]) == 2
    assert expected in capsys.readouterr().err


def test_resume_with_no_aug_drops_the_runs_reprob(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *QUICK, "--reprob", "0.5", "--out", str(run)]) == 0, capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-aug", "--quiet"]) == 0, capsys.readouterr().err
    config = (run / "config.yaml").read_text()
    assert "reprob: 0.0" in config and "aug: false" in config


@pytest.mark.parametrize("ratio, rows_spanned", [((4.0, 4.0), 16), ((0.25, 0.25), 64)])
def test_ratio_sets_the_crops_width_over_height(ratio, rows_spanned):
    """A quarter of a 64 x 64 image at width / height 4 is 64 x 16 (16 source rows), at 1/4 it is 16 x 64."""
    torch.manual_seed(0)
    rows = torch.arange(64, dtype=torch.float32).view(1, 1, 64, 1).expand(8, 3, 64, 64)
    images = (rows * 4).to(torch.uint8)  # pixel value = 4 x its row
    out = BatchTransform(64, (0, 0, 0), (1, 1, 1), train=True, scale=(0.25, 0.25), ratio=ratio)(images)
    spanned = (out.amax(dim=(1, 2, 3)) - out.amin(dim=(1, 2, 3))) * 255 / 4 + 1  # source rows seen per image
    assert torch.all((spanned - rows_spanned).abs() <= 2), spanned


def test_train_records_the_ratio(tmp_path, capsys):
    assert main(["train", *QUICK, "--ratio", "0.5", "2", "--out", str(tmp_path / "run")]) == 0, \
        capsys.readouterr().err
    assert "ratio:\n- 0.5\n- 2.0" in (tmp_path / "run" / "config.yaml").read_text()
    assert main(["train", *QUICK, "--ratio", "2", "0.5", "--out", str(tmp_path / "bad")]) == 2
    assert "--ratio must be two finite numbers 0 < MIN <= MAX, got (2.0, 0.5)" in capsys.readouterr().err


# ---- timm's sampler, and --recount --------------------------------------------------------------------------

def test_rectangles_follow_timms_area_and_aspect_rule():
    from mobileconv.data.transforms import RandomErasing

    torch.manual_seed(3)
    boxes = RandomErasing(1.0).boxes(3000, 60, 80)
    assert len({b[0] for b in boxes}) == len(boxes) > 2950  # one per image (a few find no fit in 10 tries)
    area = torch.tensor([h * w / (60 * 80) for _, _, _, h, w in boxes])
    aspect = torch.tensor([h / w for _, _, _, h, w in boxes])
    assert area.min() >= 0.015 and area.max() <= 0.35  # 2-33%, up to rounding to whole pixels
    assert aspect.min() >= 0.25 and aspect.max() <= 4.0  # 0.3-3.3, likewise
    assert abs(aspect.log().mean()) < 0.05  # log-uniform around 1
    assert all(h < 60 and w < 80 and 0 <= t <= 60 - h and 0 <= left <= 80 - w for _, t, left, h, w in boxes)


def test_recount_draws_one_to_n_rectangles_each_of_a_share_of_the_area():
    from mobileconv.data.transforms import RandomErasing

    torch.manual_seed(4)
    boxes = RandomErasing(1.0, max_count=3).boxes(3000, 64, 64)
    per_image = torch.bincount(torch.tensor([b[0] for b in boxes]), minlength=3000)
    counts = torch.bincount(per_image, minlength=4)[1:4].float() / 3000
    assert torch.all((counts - 1 / 3).abs() < 0.04), counts  # 1, 2 or 3, uniformly
    for n in (2, 3):  # an image with n rectangles: each at most a third of the area over n, up to rounding
        images = (per_image == n).nonzero().flatten()[:200].tolist()
        areas = [h * w / 64 ** 2 for i, _, _, h, w in boxes if i in set(images)]
        assert max(areas) <= 1 / 3 / n + 0.02


def test_recount_without_erasing_is_refused(capsys):
    assert main(["train", *QUICK, "--recount", "2"]) == 2
    assert "--recount 2 (set on the command line) counts random-erasing rectangles" in capsys.readouterr().err
