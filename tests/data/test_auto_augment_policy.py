"""RandAugment's policy (``--aa``): which ops each image draws, with which arguments, as timm draws them.

The ops themselves are checked against Pillow in ``test_auto_augment_ops.py``. Here they are replaced by
recorders, and the draws are compared with timm's rules written out: ops uniform over timm's 15 (with
replacement; ``w0``: timm's weights, without), each applied with probability 0.5, magnitude ``N(m, mstd)``
clipped to ``[0, mmax]``, signed ops negated half the time, and timm's level-to-argument formulas.
"""
import math

import pytest
import torch

from mobileconv.cli import main
from mobileconv.data import BatchTransform
from mobileconv.data import auto_augment as ra

TIMM_RAND_TRANSFORMS = ["AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
                        "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
                        "TranslateYRel"]


@pytest.mark.parametrize("policy, expected", [
    ("rand-m9-mstd0.5", dict(magnitude=9, num_layers=2, magnitude_std=0.5, magnitude_max=10, increasing=False,
                             weighted=False)),
    ("rand-m7-n3-mstd101-mmax20-inc1", dict(magnitude=7, num_layers=3, magnitude_std=math.inf, magnitude_max=20,
                                            increasing=True, weighted=False)),
    ("rand-w0", dict(magnitude=10, num_layers=2, magnitude_std=0, magnitude_max=10, increasing=False, weighted=True)),
    ("rand-inc1-w0", dict(magnitude=10, num_layers=2, magnitude_std=0, magnitude_max=10, increasing=True,
                          weighted=True)),
    ("rand", dict(magnitude=10, num_layers=2, magnitude_std=0, magnitude_max=10, increasing=False, weighted=False)),
])
def test_policy_strings_parse_as_timm_reads_them(policy, expected):
    assert ra.parse_rand_augment(policy) == expected


@pytest.mark.parametrize("policy, message", [
    ("v1", "expected timm's RandAugment string"),
    ("trivial", "or an AutoAugment policy v0/v0r/original/originalr"),
    ("trivial", "or timm's AugMix string"),
    ("", "expected"),
    ("rand-m9-x3", "unknown section 'x3'"),
    ("rand-m9-m7", "repeated section 'm7'"),
    ("rand-mfoo", "unknown section 'mfoo'"),
    ("rand-m9.5.1", "needs a number"),
    ("rand-n0", "n >= 1"),
    ("rand-w1", "w0"),
    ("rand-inc2", "inc0 / inc1"),
    ("rand-n14-w0", "w0 gives only 13 ops a weight above 0"),
    ("v0-m9", "section 'm9' is not one -mstd"),
    ("v0-mstd0.5-mstd1", "section 'mstd1' is not one -mstd"),
    ("original-mstdx", "section 'mstdx'"),
])
def test_bad_policy_strings_are_refused_naming_the_form(policy, message):
    with pytest.raises(ValueError, match="^--aa") as info:
        ra.auto_augment_transform(policy)
    assert message in str(info.value)


def test_auto_augment_policy_strings_and_timm_tables():
    v0 = ra.auto_augment_transform("v0", fill=(1, 2, 3))
    assert isinstance(v0, ra.AutoAugment) and v0.magnitude_std == 0 and v0.fill == (1, 2, 3)
    # spot checks against timm's auto_augment_policy_v0 / _original: 25 sub-policies of two (op, p, m) each
    assert len(v0.policy) == 25 and all(len(sub) == 2 for sub in v0.policy)
    assert v0.policy[0] == (("Equalize", 0.8, 1.0), ("ShearY", 0.8, 4.0))
    assert v0.policy[22] == (("Posterize", 0.8, 2.0), ("Solarize", 0.6, 10.0))
    original = ra.auto_augment_transform("original-mstd0.5")
    assert original.magnitude_std == 0.5
    assert original.policy[0] == (("PosterizeOriginal", 0.4, 8.0), ("Rotate", 0.6, 9.0))
    assert original.policy[24] == (("Equalize", 0.8, 8.0), ("Equalize", 0.6, 3.0))
    v0r = ra.auto_augment_transform("v0r").policy
    assert v0r[12][0] == ("PosterizeIncreasing", 0.4, 6.0) and v0r[0] == v0.policy[0]
    assert ra.auto_augment_transform("originalr").policy[3] == (("PosterizeIncreasing", 0.6, 7.0),
                                                                ("PosterizeIncreasing", 0.6, 6.0))
    assert ra.auto_augment_transform("v0-mstd101").magnitude_std == 101  # timm: uniform above 100 for rand only
    assert isinstance(ra.auto_augment_transform("rand-m9"), ra.RandAugment)


@pytest.fixture
def recorded(monkeypatch):
    """Every op replaced by one that records (name, image ids, argument) and marks the images it touched."""
    calls = []
    argument_taken = {n: a is not None for n, (_, a) in ra.OPS.items()}
    for name, (op, argument) in list(ra.OPS.items()):
        def fake(images, *args, name=name, geometric=op in ra.GEOMETRIC):
            arg = args[0].tolist() if argument_taken[name] else None
            calls.append((name, images[:, 0, 0, 0].long().tolist(), arg))
            if geometric:  # (value, fill, bicubic per image)
                assert len(args) == 3 and args[1] == (10, 20, 30) and len(args[2]) == len(images)
                resampled.extend(args[2].tolist())
            return images
        monkeypatch.setitem(ra.OPS, name, (fake, argument))
        monkeypatch.setitem(ra.OPS, name, (fake, argument))
    monkeypatch.setattr(ra, "GEOMETRIC", {ra.OPS[n][0] for n in ("Rotate", "ShearX", "ShearY", "TranslateXRel",
                                                                  "TranslateYRel")})
    return calls


resampled = []  # the recorder's bicubic flags, one per geometric op application


@pytest.fixture(autouse=True)
def _fresh_resampled():
    resampled.clear()


def batch(n, h=4, w=5):
    """Images whose first pixel is their index, so that a recorder can tell which images an op got."""
    x = torch.zeros(n, 3, h, w)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.float32)
    return x


def test_each_image_draws_its_ops_uniformly_and_applies_each_with_probability_half(recorded):
    torch.manual_seed(0)
    n = 6000
    ra.RandAugment(magnitude=9, num_layers=2, fill=(10, 20, 30))(batch(n))
    per_op = {name: sum(len(ids) for op, ids, _ in recorded if op == name) for name in TIMM_RAND_TRANSFORMS}
    assert set(per_op) == set(TIMM_RAND_TRANSFORMS) and set(op for op, _, _ in recorded) <= set(per_op)
    expected = n * 2 * 0.5 / 15  # two draws per image, each applied half the time: 400 per op
    for name, count in per_op.items():
        assert abs(count - expected) < 5 * math.sqrt(expected), (name, count)
    applied = sum(per_op.values())
    assert abs(applied - n) < 5 * math.sqrt(n * 0.5)  # 2 n draws, each applied with probability 1/2
    # per image, not per batch: one call gives many different ops to different images, each about as often
    assert len({name for name, _, _ in recorded}) == 15


def test_magnitude_noise_clipping_and_timm_level_to_argument_formulas(recorded):
    torch.manual_seed(1)
    ra.RandAugment(magnitude=9, num_layers=2, magnitude_std=0.5, fill=(10, 20, 30))(batch(6000, h=40, w=50))
    args = {}
    for name, _, arg in recorded:
        args.setdefault(name, []).extend(arg or [])
    # Rotate: (level / 10) * 30 degrees, randomly negated; level ~ N(9, 0.5) clipped to [0, 10]
    rot = torch.tensor(args["Rotate"], dtype=torch.float64)
    level = rot.abs() / 30 * 10
    assert abs(level.mean() - 9) < 0.05 and abs(level.std() - 0.5) < 0.05 and level.max() <= 10
    assert 0.4 < (rot < 0).double().mean() < 0.6
    # enhance ops: (level / 10) * 1.8 + 0.1, unsigned
    color = torch.tensor(args["Color"], dtype=torch.float64)
    assert torch.allclose(((color - 0.1) / 1.8 * 10).mean(), torch.tensor(9.0, dtype=torch.float64), atol=0.06)
    assert color.min() >= 0.1 and color.max() <= 1.9 + 1e-9  # level clipped at 10: 1.9
    # integer ops: int(level / 10 * 4) bits (level near 9 -> 3 bits, 4 when clipped at 10), thresholds
    bits = torch.tensor(args["Posterize"])
    assert set(bits.tolist()) <= {2.0, 3.0, 4.0} and (bits == 3).double().mean() > 0.9  # levels 7.5 to 10: rare
    solarize = torch.tensor(args["Solarize"])
    assert solarize.min() >= int(7 / 10 * 256) and solarize.max() <= 256 and torch.equal(solarize, solarize.trunc())
    assert max(args["SolarizeAdd"]) <= 110 and min(args["SolarizeAdd"]) >= int(7 / 10 * 110)
    # translate: (level / 10) * 0.45 of the side, in pixels: width for x, height for y
    tx, ty = torch.tensor(args["TranslateXRel"]), torch.tensor(args["TranslateYRel"])
    assert tx.abs().max() <= 0.45 * 50 + 1e-9 and ty.abs().max() <= 0.45 * 40 + 1e-9
    assert tx.abs().mean() > 0.45 * 50 * 0.85 and ty.abs().mean() > 0.45 * 40 * 0.85
    shear = torch.tensor(args["ShearX"])
    assert shear.abs().max() <= 0.3 and 0.4 < (shear < 0).double().mean() < 0.6


def test_uniform_magnitudes_and_increasing_ops(recorded):
    torch.manual_seed(2)
    ra.RandAugment.from_policy("rand-m10-mstd101-inc1", fill=(10, 20, 30))(batch(6000))
    names = {name for name, _, _ in recorded}
    assert {"PosterizeIncreasing", "SolarizeIncreasing", "ColorIncreasing"} <= names
    assert not names & {"Posterize", "Solarize", "Color"}
    rot = torch.tensor([a for name, _, arg in recorded if name == "Rotate" for a in arg]).abs() / 3
    assert abs(rot.mean() - 5) < 0.3 and rot.max() <= 10  # uniform in [0, 10]
    color = torch.tensor([a for name, _, arg in recorded if name == "ColorIncreasing" for a in arg])
    assert color.min() >= 0.1 and color.max() <= 1.9 and (color < 1).any() and (color > 1).any()  # 1 +- 0.9 level


def test_weighted_choice_draws_distinct_ops_with_timm_weights(recorded):
    torch.manual_seed(3)
    ra.RandAugment.from_policy("rand-m9-w0", fill=(10, 20, 30))(batch(4000))
    per_image = {}
    for name, ids, _ in recorded:
        for i in ids:
            per_image.setdefault(i, []).append(name)
    assert all(len(set(ops)) == len(ops) for ops in per_image.values())  # without replacement
    counts = {name: sum(name in ops for ops in per_image.values()) for name in TIMM_RAND_TRANSFORMS}
    assert counts["Posterize"] == counts["Invert"] == 0  # weight 0 in timm's w0
    assert counts["Rotate"] > counts["ShearX"] > counts["TranslateXRel"] > counts["Color"] > counts["Solarize"]


def test_same_seed_same_augmentation_and_input_left_alone():
    x = torch.randint(0, 256, (16, 3, 24, 20)).float()
    before = x.clone()
    policy = ra.RandAugment.from_policy("rand-m9-mstd0.5")
    torch.manual_seed(5)
    a = policy(x)
    torch.manual_seed(5)
    b = policy(x)
    assert torch.equal(a, b) and torch.equal(x, before)
    assert torch.equal(a, a.round()) and a.min() >= 0 and a.max() <= 255
    assert (a != x).flatten(1).any(1).float().mean() > 0.4  # most images changed, not all (prob 0.5 per op)


def test_batch_transform_applies_rand_augment_to_the_8_bit_crop_and_fills_with_the_mean_colour():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    images = torch.full((400, 3, 32, 32), 255, dtype=torch.uint8)
    torch.manual_seed(0)
    out = BatchTransform(32, mean, std, train=True, auto_augment="rand-m10-n1")(images)
    pixels = (out * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)) * 255
    assert torch.allclose(pixels, pixels.round(), atol=1e-3)  # 8-bit values, as timm's PIL images
    fill = torch.tensor([124.0, 116.0, 104.0]).view(1, 3, 1, 1)  # timm's img_mean: round(255 * mean)
    uncovered = (pixels.round() == fill).all(1)  # geometric ops uncover corners / edges at the mean colour
    assert 20 < uncovered.flatten(1).any(1).sum() < 200  # 5 of 15 ops move pixels, applied half the time
    inverted = (pixels.round() == 0).all(1).flatten(1).all(1)  # Invert, Solarize (threshold <= 255) of white
    assert inverted.sum() > 5
    plain = BatchTransform(32, mean, std, train=True)(images)
    assert torch.allclose(plain * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1), 
                          torch.ones_like(plain))


def test_pixel_mode_erases_the_same_rectangles_with_standard_normal_noise():
    mean, std = (0.2, 0.3, 0.4), (0.5, 0.5, 0.5)
    images = torch.full((200, 3, 40, 40), 200, dtype=torch.uint8)
    torch.manual_seed(0)
    const = BatchTransform(40, mean, std, train=True, reprob=0.5)(images)
    torch.manual_seed(0)
    pixel = BatchTransform(40, mean, std, train=True, reprob=0.5, remode="pixel")(images)
    plain = BatchTransform(40, mean, std, train=True)(images)
    erased = (const != plain).any(1)
    assert torch.equal(erased, (pixel != plain).all(1))  # the same rectangles, every channel redrawn
    noise = pixel.permute(0, 2, 3, 1)[erased]
    assert 60 < erased.flatten(1).any(1).sum() < 140
    assert abs(noise.mean()) < 0.02 and abs(noise.std() - 1) < 0.02  # N(0, 1) per pixel and channel
    assert noise.unique().numel() > 0.9 * noise.numel()
    torch.manual_seed(0)  # rand: the same rectangles, one N(0, 1) value per channel of each
    rand = BatchTransform(40, mean, std, train=True, reprob=0.5, remode="rand")(images)
    assert torch.equal(erased, (rand != plain).all(1))
    fills = [rand[i][:, erased[i]] for i in range(200) if erased[i].any()]  # (3, pixels) per erased image
    assert all(torch.equal(f, f[:, :1].expand_as(f)) for f in fills)  # one value per channel across the rectangle
    per_channel = torch.cat([f[:, 0] for f in fills])
    assert abs(per_channel.mean()) < 0.15 and abs(per_channel.std() - 1) < 0.15
    with pytest.raises(ValueError, match="remode must be one of"):
        BatchTransform(40, mean, std, train=True, reprob=0.5, remode="noise")


def test_train_cli_records_rand_augment_and_turns_colour_jitter_off_by_default(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", "synthetic", "--epochs", "1", "--max-train-samples", "64", "--batch-size", "32",
                 "--aa", "rand-m9-mstd0.5", "--reprob", "0.3", "--remode", "pixel", "--out", str(out),
                 "--quiet"]) == 0
    config = (out / "config.yaml").read_text()
    assert "aa: rand-m9-mstd0.5" in config and "remode: pixel" in config and "color_jitter: 0.0" in config


@pytest.mark.parametrize("args, message", [
    (["--aa", "rand-m9-bad1"], "unknown section 'bad1'"),
    (["--aa", "rand-m9", "--no-aug"], "leave it out with --no-aug"),
    (["--remode", "pixel"], "add --reprob"),
    (["--remode", "noise"], "invalid choice"),
])
def test_train_cli_refuses_bad_augmentation_options_before_training(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    try:
        code = main(["train", "--data", "synthetic", "--epochs", "1", "--out", str(out), *args])
    except SystemExit as stop:  # argparse's own refusal of a value outside the choices
        code = stop.code
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_auto_augment_gives_each_image_one_sub_policy_applied_in_order(recorded):
    torch.manual_seed(4)
    n = 5000
    policy = ra.AutoAugment(ra.POLICY_V0, fill=(10, 20, 30))
    policy(batch(n))
    received = {}
    for name, ids, arg in recorded:
        for k, i in enumerate(ids):
            received.setdefault(i, []).append((name, None if arg is None else arg[k]))
    subs = [tuple(name for name, _, _ in sub) for sub in ra.POLICY_V0]
    for ops in received.values():  # what an image got is its sub-policy's ops, in order, some left out
        names = tuple(name for name, _ in ops)
        assert any(names == sub or (len(names) == 1 and names[0] in sub) for sub in subs), names
    # no magnitude noise: Rotate gets (magnitude / 10) * 30 degrees for v0's Rotate magnitudes only
    rotations = {abs(arg) for name, ids, args in recorded if name == "Rotate" for arg in args}
    assert rotations == {m / 10 * 30 for m in (8, 9, 0, 7, 2, 5)}
    # each op applied with its probability: images left untouched, (1 - p1) (1 - p2) averaged over the 25
    untouched = sum((1 - a[1]) * (1 - b[1]) for a, b in ra.POLICY_V0) / 25 * n
    assert abs((n - len(received)) - untouched) < 5 * math.sqrt(untouched)
    shear_y = [arg for name, _, args in recorded if name == "ShearY" for arg in args]
    expected = n / 25 * (0.8 + 0.6 + 0.8 + 0.4)  # ShearY in sub-policies 0 (0.8), 10 (0.6), 17 (0.8), 21 (0.4)
    assert abs(len(shear_y) - expected) < 5 * math.sqrt(expected)
    assert {round(abs(a), 9) for a in shear_y} == {round(m / 10 * 0.3, 9) for m in (4, 3, 0, 7)}
    posterize = [arg for name, _, args in recorded if name == "Posterize" for arg in args]
    assert set(posterize) == {2.0, 0.0}  # int(6 / 10 * 4), int(2 / 10 * 4): timm's (TPU) posterize levels


def test_auto_augment_original_posterize_keeps_4_to_8_bits(recorded):
    torch.manual_seed(5)
    ra.AutoAugment.from_policy("original", fill=(10, 20, 30))(batch(3000))
    bits = {arg for name, _, args in recorded if name == "PosterizeOriginal" for arg in args}
    assert bits == {int(m / 10 * 4) + 4 for m in (8, 7, 6, 5)}  # 7, 6, 6, 6


def test_train_cli_takes_an_auto_augment_policy(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", "synthetic", "--epochs", "1", "--max-train-samples", "64", "--batch-size", "32",
                 "--aa", "v0", "--out", str(out), "--quiet"]) == 0
    assert "aa: v0" in (out / "config.yaml").read_text()


def test_auto_augment_magnitude_noise_and_a_policy_of_ones_own(recorded):
    torch.manual_seed(6)
    ra.AutoAugment([[("Rotate", 1.0, 5)], [("Invert", 0.5, 0), ("Rotate", 1.0, 9.9)]], magnitude_std=0.5,
                   fill=(10, 20, 30))(batch(4000))
    rotations = torch.tensor([arg for name, _, args in recorded if name == "Rotate" for arg in args]).abs() / 3
    low, high = rotations[rotations < 7.5], rotations[rotations >= 7.5]
    assert abs(low.mean() - 5) < 0.05 and abs(low.std() - 0.5) < 0.05  # N(5, 0.5)
    assert high.max() <= 10 and (high == 10).float().mean() > 0.4  # N(9.9, 0.5) clipped to 10
    with pytest.raises(ValueError, match="unknown: \\['Blur'\\]"):
        ra.AutoAugment([[("Blur", 1.0, 5)]])


# timm's auto_augment_policy_v0 and auto_augment_policy_original, copied entry for entry
TIMM_V0 = [
    [('Equalize', 0.8, 1), ('ShearY', 0.8, 4)], [('Color', 0.4, 9), ('Equalize', 0.6, 3)],
    [('Color', 0.4, 1), ('Rotate', 0.6, 8)], [('Solarize', 0.8, 3), ('Equalize', 0.4, 7)],
    [('Solarize', 0.4, 2), ('Solarize', 0.6, 2)], [('Color', 0.2, 0), ('Equalize', 0.8, 8)],
    [('Equalize', 0.4, 8), ('SolarizeAdd', 0.8, 3)], [('ShearX', 0.2, 9), ('Rotate', 0.6, 8)],
    [('Color', 0.6, 1), ('Equalize', 1.0, 2)], [('Invert', 0.4, 9), ('Rotate', 0.6, 0)],
    [('Equalize', 1.0, 9), ('ShearY', 0.6, 3)], [('Color', 0.4, 7), ('Equalize', 0.6, 0)],
    [('Posterize', 0.4, 6), ('AutoContrast', 0.4, 7)], [('Solarize', 0.6, 8), ('Color', 0.6, 9)],
    [('Solarize', 0.2, 4), ('Rotate', 0.8, 9)], [('Rotate', 1.0, 7), ('TranslateYRel', 0.8, 9)],
    [('ShearX', 0.0, 0), ('Solarize', 0.8, 4)], [('ShearY', 0.8, 0), ('Color', 0.6, 4)],
    [('Color', 1.0, 0), ('Rotate', 0.6, 2)], [('Equalize', 0.8, 4), ('Equalize', 0.0, 8)],
    [('Equalize', 1.0, 4), ('AutoContrast', 0.6, 2)], [('ShearY', 0.4, 7), ('SolarizeAdd', 0.6, 7)],
    [('Posterize', 0.8, 2), ('Solarize', 0.6, 10)], [('Solarize', 0.6, 8), ('Equalize', 0.6, 1)],
    [('Color', 0.8, 6), ('Rotate', 0.4, 5)],
]
TIMM_ORIGINAL = [
    [('PosterizeOriginal', 0.4, 8), ('Rotate', 0.6, 9)], [('Solarize', 0.6, 5), ('AutoContrast', 0.6, 5)],
    [('Equalize', 0.8, 8), ('Equalize', 0.6, 3)], [('PosterizeOriginal', 0.6, 7), ('PosterizeOriginal', 0.6, 6)],
    [('Equalize', 0.4, 7), ('Solarize', 0.2, 4)], [('Equalize', 0.4, 4), ('Rotate', 0.8, 8)],
    [('Solarize', 0.6, 3), ('Equalize', 0.6, 7)], [('PosterizeOriginal', 0.8, 5), ('Equalize', 1.0, 2)],
    [('Rotate', 0.2, 3), ('Solarize', 0.6, 8)], [('Equalize', 0.6, 8), ('PosterizeOriginal', 0.4, 6)],
    [('Rotate', 0.8, 8), ('Color', 0.4, 0)], [('Rotate', 0.4, 9), ('Equalize', 0.6, 2)],
    [('Equalize', 0.0, 7), ('Equalize', 0.8, 8)], [('Invert', 0.6, 4), ('Equalize', 1.0, 8)],
    [('Color', 0.6, 4), ('Contrast', 1.0, 8)], [('Rotate', 0.8, 8), ('Color', 1.0, 2)],
    [('Color', 0.8, 8), ('Solarize', 0.8, 7)], [('Sharpness', 0.4, 7), ('Invert', 0.6, 8)],
    [('ShearX', 0.6, 5), ('Equalize', 1.0, 9)], [('Color', 0.4, 0), ('Equalize', 0.6, 3)],
    [('Equalize', 0.4, 7), ('Solarize', 0.2, 4)], [('Solarize', 0.6, 5), ('AutoContrast', 0.6, 5)],
    [('Invert', 0.6, 4), ('Equalize', 1.0, 8)], [('Color', 0.6, 4), ('Contrast', 1.0, 8)],
    [('Equalize', 0.8, 8), ('Equalize', 0.6, 3)],
]


@pytest.mark.parametrize("name, table, research", [("v0", TIMM_V0, False), ("v0r", TIMM_V0, True),
                                                   ("original", TIMM_ORIGINAL, False),
                                                   ("originalr", TIMM_ORIGINAL, True)])
def test_every_auto_augment_entry_is_timms(name, table, research):
    """timm's "r" policies are the same tables with PosterizeIncreasing for every Posterize variant."""
    expected = [[("PosterizeIncreasing" if research and op.startswith("Posterize") else op, float(p), float(m))
                 for op, p, m in sub] for sub in table]
    assert [list(sub) for sub in ra.auto_augment_transform(name).policy] == expected


def test_increasing_ops_take_timms_weights_by_position(recorded):
    torch.manual_seed(7)
    ra.RandAugment.from_policy("rand-m9-inc1-w0", fill=(10, 20, 30))(batch(4000))
    names = {name for name, _, _ in recorded}
    # Posterize (position 4) and Invert (position 2) weigh 0 in w0, so PosterizeIncreasing and Invert never come
    assert "PosterizeIncreasing" not in names and "Invert" not in names and "SolarizeIncreasing" in names


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.uint8, torch.float64])
def test_other_dtypes_holding_8_bit_values_come_back_in_their_dtype(dtype):
    x = torch.randint(0, 256, (12, 3, 20, 24))
    for policy in ("rand-m9-mstd0.5", "v0"):
        torch.manual_seed(0)
        expected = ra.auto_augment_transform(policy)(x.float())
        torch.manual_seed(0)
        got = ra.auto_augment_transform(policy)(x.to(dtype))
        assert got.dtype == dtype and torch.equal(got.float(), expected)  # 0-255 integers are exact in each


def test_training_builds_its_transform_with_the_policy_and_fill_mode(tmp_path, monkeypatch):
    from mobileconv.engine import trainer

    built = []
    real = trainer.BatchTransform

    def spy(*args, **kwargs):
        transform = real(*args, **kwargs)
        built.append(transform)
        return transform

    monkeypatch.setattr(trainer, "BatchTransform", spy)
    assert main(["train", "--data", "synthetic", "--epochs", "1", "--max-train-samples", "64", "--batch-size", "32",
                 "--aa", "original-mstd0.5", "--reprob", "0.5", "--remode", "pixel", "--color-jitter", "0.3",
                 "--out", str(tmp_path / "run"), "--quiet"]) == 0
    training = [t for t in built if t.auto_augment is not None]
    assert len(training) == 1 and isinstance(training[0].auto_augment, ra.AutoAugment)
    assert training[0].auto_augment.magnitude_std == 0.5 and training[0].remode == "pixel"
    assert training[0].erase is not None and training[0].color_jitter is not None  # explicit jitter kept
    assert all(t.auto_augment is None and t.erase is None for t in built if t is not training[0])  # test transform


def test_resume_with_aa_takes_its_colour_jitter_default_not_the_recorded_one(tmp_path):
    run = tmp_path / "run"
    quick = ["--max-train-samples", "64", "--batch-size", "32", "--quiet"]
    assert main(["train", "--data", "synthetic", "--epochs", "1", "--color-jitter", "0.4", "--out", str(run),
                 *quick]) == 0
    assert "color_jitter: 0.4" in (run / "config.yaml").read_text()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--aa", "rand-m9", "--quiet"]) == 0
    config = (run / "config.yaml").read_text()
    assert "aa: rand-m9" in config and "color_jitter: 0.0" in config


@pytest.mark.parametrize("interpolation, share", [("random", 0.5), ("bilinear", 0.0), ("bicubic", 1.0)])
@pytest.mark.parametrize("policy", ["rand-m9", "v0"])
def test_geometric_ops_resample_as_timm_picks(recorded, interpolation, share, policy):
    """timm's training default ("random") picks bilinear or bicubic with equal odds at each geometric op."""
    torch.manual_seed(8)
    ra.auto_augment_transform(policy, fill=(10, 20, 30), interpolation=interpolation)(batch(3000))
    flags = torch.tensor(resampled, dtype=torch.float64)
    assert len(flags) > 500 and abs(flags.mean() - share) < 0.05
    with pytest.raises(ValueError, match="interpolation must be one of"):
        ra.auto_augment_transform(policy, interpolation="nearest")
