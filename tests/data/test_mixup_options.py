"""--mixup-prob, --mixup-switch-prob, --mixup-off-epoch (timm's): how often a batch is mixed, how often by CutMix,
and for how many epochs; an unmixed batch keeps its images and gets smoothed one-hot targets."""
import pytest
import torch

from mobileconv.cli import main
from mobileconv.data import MixupCutmix
from mobileconv.data import transforms

from ..engine.helpers import TINY, failed_train


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(8, 3, 16, 16, generator=g), torch.arange(8) % 4


def kinds(mixer, n=600):
    """What each of n calls did: 'none', 'mixup' (a blend everywhere) or 'cutmix' (a pasted box, the rest intact)."""
    torch.manual_seed(1)
    images, targets = batch()
    out = []
    for _ in range(n):
        mixed, soft = mixer(images, targets)
        if torch.equal(mixed, images):
            expected = torch.full((8, 4), 0.1 / 4).scatter_(1, targets.view(-1, 1), 1 - 0.1 + 0.1 / 4)
            assert torch.equal(soft, expected)  # smoothed one-hot, written out
            out.append("none")
        elif ((mixed == images) | (mixed == images.flip(0))).all():
            out.append("cutmix")
        else:
            out.append("mixup")
    return out


def test_prob_is_the_share_of_mixed_batches():
    got = kinds(MixupCutmix(4, mixup_alpha=1.0, smoothing=0.1, prob=0.3))
    assert abs(got.count("mixup") / len(got) - 0.3) < 0.06 and set(got) == {"none", "mixup"}
    assert set(kinds(MixupCutmix(4, mixup_alpha=1.0, smoothing=0.1), n=50)) == {"mixup"}


def test_switch_prob_is_the_share_of_cutmix_among_mixed_batches():
    got = kinds(MixupCutmix(4, mixup_alpha=1.0, cutmix_alpha=1.0, smoothing=0.1, switch_prob=0.8))
    cut, mix = got.count("cutmix"), got.count("mixup")
    # a CutMix box can come out empty (lam near 1): those batches read as unmixed
    assert abs(cut / (cut + mix) - 0.8) < 0.06 and got.count("none") < 0.05 * len(got)


def test_no_mixing_while_switched_off():
    mixer = MixupCutmix(4, mixup_alpha=1.0, cutmix_alpha=1.0, smoothing=0.1)
    mixer.mixing = False
    assert set(kinds(mixer, n=20)) == {"none"}


def test_mixup_off_epoch_mixes_the_first_epochs_only(tmp_path, monkeypatch):
    seen = []
    call = transforms.MixupCutmix.__call__

    def spy(self, images, targets):
        seen.append(self.mixing)
        return call(self, images, targets)

    monkeypatch.setattr(transforms.MixupCutmix, "__call__", spy)
    assert main(["train", *TINY, "--epochs", "3", "--mixup", "0.2", "--mixup-off-epoch", "2",
                 "--out", str(tmp_path / "run")]) == 0
    steps = len(seen) // 3  # 64 images, batch 16: 4 steps per epoch
    assert steps == 4 and seen == [True] * 8 + [False] * 4


@pytest.mark.parametrize("argv, message", [
    (["--mixup-prob", "0.5"], "--mixup-prob 0.5 (set on the command line) is used by --mixup or --cutmix only"),
    (["--mixup-off-epoch", "3"], "--mixup-off-epoch 3 (set on the command line) is used by --mixup or --cutmix only"),
    (["--mixup", "0.2", "--mixup-switch-prob", "0.3"],
     "--mixup-switch-prob 0.3 (set on the command line) is used by --mixup and --cutmix both only"),
    (["--mixup", "0.2", "--mixup-prob", "1.5"], "--mixup-prob must be a probability in [0, 1]"),
])
def test_mixing_options_without_mixing_are_refused(argv, message, capsys):
    assert message in failed_train([*TINY, *argv], capsys)
