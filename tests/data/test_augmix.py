"""AugMix (``--aa augmix-...``): timm's ``AugMixAugment`` on a batch.

Oracles: the mixing against numpy and Pillow doing what timm's ``_apply_basic`` does (a float32 sum of the chains,
clipped, ``astype(uint8)``, ``Image.blend``); the chains' draws against timm's rules written out here (its 13
``_AUGMIX_TRANSFORMS``, uniform, each always applied, 1-3 ops per chain, magnitudes uniform in ``[0, m]``); the
ops themselves are checked against Pillow in ``test_auto_augment_ops.py``.
"""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from mobileconv.cli import main
from mobileconv.data import auto_augment as ra

TIMM_AUGMIX_TRANSFORMS = ["AutoContrast", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                          "SharpnessIncreasing", "Equalize", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                          "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"]


@pytest.mark.parametrize("policy, expected", [
    ("augmix", {}),
    ("augmix-m5-w4-d2", {"magnitude": 5, "width": 4, "depth": 2}),
    ("augmix-a0.5-mstd0.5", {"alpha": 0.5, "magnitude_std": 0.5}),
])
def test_policy_strings_parse_as_timm_reads_them(policy, expected):
    assert ra.parse_augmix(policy) == expected
    module = ra.auto_augment_transform(policy)
    assert isinstance(module, ra.AugMix)
    defaults = {"magnitude": 3, "width": 3, "depth": -1, "alpha": 1.0, "magnitude_std": math.inf}
    assert {k: getattr(module, k) for k in defaults} == {**defaults, **expected}


@pytest.mark.parametrize("policy, message", [
    ("augmix-x3", "unknown section 'x3'"),
    ("augmix-w0", "needs w >= 1 chains, d >= 1 ops per chain and a > 0"),
    ("augmix-a0", "needs w >= 1 chains"),
    ("augmix-m5-m6", "repeated section 'm6'"),
    ("augmix-w2.5", "section 'w2.5' needs a whole number"),
    ("augmix-b1", "timm's -b (blended) shortcut"),
])
def test_bad_policy_strings_are_refused_naming_the_form(policy, message):
    with pytest.raises(ValueError, match=f"--aa {policy!r}: .*{message}".replace("(", r"\(").replace(")", r"\)")):
        ra.auto_augment_transform(policy)


def test_mixing_is_timms_float32_sum_uint8_truncation_and_pillow_blend():
    rng = np.random.default_rng(0)
    n, width = 5, 3
    x = rng.integers(0, 256, (n, 3, 6, 7)).astype(np.uint8)
    chains = [rng.integers(0, 256, (n, 3, 6, 7)).astype(np.uint8) for _ in range(width)]
    weights = np.float32(rng.dirichlet([1.0] * width, size=n))
    mix = np.float32(rng.beta(1.0, 1.0, size=n))
    got = ra.augmix_combine(torch.from_numpy(x).float(), [torch.from_numpy(c).float() for c in chains],
                            torch.from_numpy(weights), torch.from_numpy(mix))
    for i in range(n):
        mixed = np.zeros((6, 7, 3), dtype=np.float32)
        for j in range(width):
            mixed += weights[i, j] * chains[j][i].transpose(1, 2, 0).astype(np.float32)
        np.clip(mixed, 0, 255.0, out=mixed)
        expected = Image.blend(Image.fromarray(x[i].transpose(1, 2, 0)), Image.fromarray(mixed.astype(np.uint8)),
                               float(mix[i]))
        assert np.array_equal(got[i].numpy().transpose(1, 2, 0).astype(np.uint8), np.asarray(expected)), i


@pytest.fixture
def recorded(monkeypatch):
    """Every op replaced by one that records (name, image ids, argument) and leaves the images as they are."""
    calls = []
    for name, (op, argument) in list(ra.OPS.items()):
        def fake(images, *args, name=name, argument=argument):
            calls.append((name, images[:, 0, 0, 0].long().tolist(), None if argument is None else args[0].tolist()))
            return images
        monkeypatch.setitem(ra.OPS, name, (fake, argument))
    return calls


def batch(n):
    x = torch.zeros(n, 3, 40, 50)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.float32)  # the recorder tells the images apart
    return x


def test_each_chain_draws_one_to_three_ops_uniformly_from_timms_thirteen(recorded):
    torch.manual_seed(0)
    n, width = 3000, 3
    ra.AugMix(magnitude=3, width=width)(batch(n))
    per_op = {name: sum(len(ids) for op, ids, _ in recorded if op == name) for name in TIMM_AUGMIX_TRANSFORMS}
    assert {op for op, _, _ in recorded} == set(TIMM_AUGMIX_TRANSFORMS)
    applied = n * width * 2  # depth uniform in 1-3: two ops per chain on average, each always applied
    assert abs(sum(per_op.values()) - applied) < 5 * math.sqrt(n * width * 2 / 3)
    for name, count in per_op.items():
        assert abs(count - applied / 13) < 5 * math.sqrt(applied / 13), (name, count)


def test_a_fixed_depth_applies_that_many_ops_per_chain_at_uniform_magnitudes(recorded):
    torch.manual_seed(1)
    n = 2000
    ra.AugMix(magnitude=5, width=2, depth=2)(batch(n))
    assert sum(len(ids) for _, ids, _ in recorded) == n * 2 * 2
    # PosterizeIncreasing takes 4 - trunc(m / 10 * 4) bits: with m uniform in [0, 5], 4 bits for m < 2.5, else 3
    bits = [b for op, _, args in recorded if op == "PosterizeIncreasing" for b in args]
    assert set(bits) == {3.0, 4.0} and abs(bits.count(4.0) / len(bits) - 0.5) < 0.1
    # Rotate takes +-m / 10 * 30 degrees: uniform in [-15, 15], signed at random
    degrees = torch.tensor([d for op, _, args in recorded if op == "Rotate" for d in args])
    assert degrees.abs().max() <= 15 and abs(float(degrees.abs().mean()) - 7.5) < 1.0
    assert abs(float((degrees < 0).float().mean()) - 0.5) < 0.1


def test_mixing_weights_are_dirichlet_and_the_blend_factor_beta(monkeypatch):
    seen = {}

    def capture(x, chains, weights, mix):
        seen.update(weights=weights, mix=mix, chains=len(chains))
        return x
    monkeypatch.setattr(ra, "augmix_combine", capture)
    torch.manual_seed(2)
    ra.AugMix(width=4, alpha=1.0)(torch.zeros(4000, 3, 8, 8))
    weights, mix = seen["weights"], seen["mix"]
    assert seen["chains"] == 4 and weights.shape == (4000, 4)
    assert torch.allclose(weights.sum(1), torch.ones(4000, dtype=weights.dtype))
    assert torch.allclose(weights.mean(0), torch.full((4,), 0.25, dtype=weights.dtype), atol=0.02)
    assert 0 <= float(mix.min()) and float(mix.max()) <= 1 and abs(float(mix.mean()) - 0.5) < 0.02  # Beta(1, 1)
    assert abs(float(mix.var()) - 1 / 12) < 0.01


def test_uint8_in_uint8_out_and_the_input_left_alone():
    torch.manual_seed(3)
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    before = x.clone()
    y = ra.AugMix()(x)
    assert y.dtype == torch.uint8 and y.shape == x.shape and torch.equal(x, before) and not torch.equal(y, x)


def test_train_cli_takes_an_augmix_policy(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "mobilenetv3_small_100_cifar", "--data", "synthetic", "--img-size", "16",
                 "--max-train-samples", "16", "--max-val-samples", "8", "--batch-size", "8", "--epochs", "1",
                 "--quiet", "--aa", "augmix-m3-w2", "--out", str(run)]) == 0, capsys.readouterr().err
    assert "aa: augmix-m3-w2" in (run / "config.yaml").read_text()
