"""--mixup-mode elem / pair and --cutmix-minmax (timm's): per-image draws, shared by an image and its partner in
pair mode, and CutMix boxes of drawn sides. Each image is a constant (its index), so what was mixed, and by how
much, can be read off the pixels and checked against the targets written out."""
import pytest
import torch

from mobileconv.cli import main
from mobileconv.data import MixupCutmix, one_hot_smooth

from ..engine.helpers import TINY, failed_train

N, CLASSES, SMOOTHING = 8, 8, 0.1


def constant_images(n=N, size=20):
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, size, size).clone()


def expected_targets(lam):
    y = torch.arange(len(lam))
    return (lam.view(-1, 1) * one_hot_smooth(y, CLASSES, SMOOTHING)
            + (1 - lam.view(-1, 1)) * one_hot_smooth(y.flip(0), CLASSES, SMOOTHING))


def mixup_weights(mixed):
    """``lam`` of each image from its pixels: ``lam * i + (1 - lam) * (n - 1 - i)``."""
    n = len(mixed)
    i = torch.arange(n, dtype=torch.float32)
    return (mixed[:, 0, 0, 0] - (n - 1 - i)) / (i - (n - 1 - i))


@pytest.mark.parametrize("mode", ["elem", "pair"])
def test_mixup_draws_a_weight_per_image_or_per_pair(mode):
    torch.manual_seed(0)
    x = constant_images()
    mixed, soft = MixupCutmix(CLASSES, mixup_alpha=1.0, smoothing=SMOOTHING, mode=mode)(x, torch.arange(N))
    assert torch.equal(mixed.amin((1, 2, 3)), mixed.amax((1, 2, 3)))  # a blend: every pixel the same
    lam = mixup_weights(mixed)
    torch.testing.assert_close(soft, expected_targets(lam))
    if mode == "elem":
        assert len({round(v, 4) for v in lam.tolist()}) == N  # every image its own weight
    else:
        torch.testing.assert_close(lam, lam.flip(0))  # an image and its partner share theirs
        assert len({round(v, 4) for v in lam.tolist()}) == N // 2


@pytest.mark.parametrize("mode", ["elem", "pair"])
@pytest.mark.parametrize("minmax", [None, (0.25, 0.75)])
def test_cutmix_pastes_a_box_per_image_or_per_pair(mode, minmax):
    torch.manual_seed(1)
    x = constant_images()
    mixed, soft = MixupCutmix(CLASSES, cutmix_alpha=1.0, smoothing=SMOOTHING, mode=mode,
                              cutmix_minmax=minmax)(x, torch.arange(N))
    own = mixed == x
    assert (own | (mixed == x.flip(0))).all()  # each pixel its own image's or its partner's
    lam = own[:, 0].float().mean((1, 2))  # the share of the image left in place
    torch.testing.assert_close(soft, expected_targets(lam))
    pasted = [(~own[i, 0]).nonzero() for i in range(N)]
    boxes = [tuple(p.amin(0).tolist() + p.amax(0).tolist()) if len(p) else None for p in pasted]
    assert sum(box is not None for box in boxes) >= N - 1  # a box of lam near 1 may be empty
    if mode == "pair":
        assert all(boxes[i] == boxes[N - 1 - i] for i in range(N))
    else:
        assert len({box for box in boxes if box is not None}) == sum(box is not None for box in boxes)
    for box, p in zip(boxes, pasted):  # a rectangle, each pixel of it pasted
        if box is not None:
            assert len(p) == (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
    if minmax is not None:  # sides from [int(0.25 * 20), int(0.75 * 20)) = [5, 15), inside the image
        assert all(5 <= y1 - y0 + 1 < 15 and 5 <= x1 - x0 + 1 < 15 for y0, x0, y1, x1 in boxes)


def test_minmax_box_sides_are_uniform_in_their_range():
    torch.manual_seed(2)
    mixer = MixupCutmix(CLASSES, cutmix_minmax=(0.2, 0.6), mode="elem")
    heights = []
    for _ in range(60):
        mixed, _ = mixer(constant_images(n=2, size=10), torch.arange(2))
        rows = (mixed[0, 0] != 0).any(1)
        heights.append(int(rows.sum()))
    assert set(heights) == {2, 3, 4, 5}  # [int(0.2 * 10), int(0.6 * 10)) = [2, 6), every side drawn


def test_prob_and_switch_prob_apply_per_image():
    torch.manual_seed(3)
    mixer = MixupCutmix(CLASSES, mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.6, switch_prob=0.25, mode="elem")
    x, counts = constant_images(n=N, size=12), {"none": 0, "cutmix": 0, "mixup": 0}
    for _ in range(150):
        mixed, _ = mixer(x, torch.arange(N))
        for i in range(N):
            if torch.equal(mixed[i], x[i]):
                counts["none"] += 1
            elif ((mixed[i] == x[i]) | (mixed[i] == x[N - 1 - i])).all():
                counts["cutmix"] += 1
            else:
                counts["mixup"] += 1
    total = sum(counts.values())
    mixed_share = (counts["cutmix"] + counts["mixup"]) / total
    assert abs(mixed_share - 0.6) < 0.05  # a CutMix box can come out empty and read as unmixed: a little below
    assert abs(counts["cutmix"] / (counts["cutmix"] + counts["mixup"]) - 0.25) < 0.05


def test_an_odd_batch_leaves_its_middle_image_in_pair_mode():
    torch.manual_seed(4)
    x = constant_images(n=5)
    mixed, soft = MixupCutmix(CLASSES, mixup_alpha=1.0, mode="pair")(x, torch.arange(5))
    assert torch.equal(mixed[2], x[2]) and not torch.equal(mixed[0], x[0])
    assert torch.equal(soft[2], one_hot_smooth(torch.tensor([2]), CLASSES, 0.0)[0])


def test_nothing_is_mixed_while_switched_off():
    mixer = MixupCutmix(CLASSES, mixup_alpha=1.0, cutmix_alpha=1.0, smoothing=SMOOTHING, mode="elem")
    mixer.mixing = False
    x = constant_images()
    mixed, soft = mixer(x, torch.arange(N))
    assert torch.equal(mixed, x) and torch.equal(soft, one_hot_smooth(torch.arange(N), CLASSES, SMOOTHING))


def test_a_run_mixes_per_image_with_minmax_boxes(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--mixup", "0.2", "--cutmix-minmax", "0.2", "0.8",
                 "--mixup-mode", "elem", "--out", str(out)]) == 0
    assert "mixup_mode: elem" in (out / "config.yaml").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--mixup-mode", "elem"], "--mixup-mode elem (set on the command line) is used by --mixup or --cutmix only"),
    (["--cutmix", "1", "--cutmix-minmax", "0.2", "0.8"], "--cutmix 1.0 is not used with --cutmix-minmax"),
    (["--cutmix-minmax", "0.8", "0.2"], "--cutmix-minmax must be two fractions 0 < MIN < MAX <= 1"),
])
def test_bad_values_are_refused(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert message in failed_train([*TINY, *argv, "--out", str(out)], capsys)
    assert not out.exists()
