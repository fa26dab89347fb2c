"""Image folders' training crops: torchvision's RandomResizedCrop on the whole decoded image, drawn per
(seed, epoch, image), so that workers, processes and resumed runs see the same crops."""
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mobileconv.data import BatchTransform, RandomResizedCrop, ShardedBatchSampler, build_datasets
from mobileconv.engine import trainer
from mobileconv.engine.config import TrainConfig


def draws(crop, width, height, n=2000, epoch=0):
    return [crop.draw(width, height, epoch, i) for i in range(n)]


def test_crops_follow_the_area_and_aspect_ranges_and_fit_the_image():
    crop = RandomResizedCrop(16, scale=(0.1, 0.2), ratio=(0.5, 2.0), seed=3)
    width, height = 1000, 800  # every draw fits: no retries, so the areas are uniform in the range
    boxes = [box for box, _ in draws(crop, width, height)]
    share = np.array([w * h / (width * height) for _, _, w, h in boxes])
    log_aspect = np.array([math.log(w / h) for _, _, w, h in boxes])
    assert share.min() > 0.098 and share.max() < 0.202
    assert abs(share.mean() - 0.15) < 0.003 and abs(np.median(share) - 0.15) < 0.005
    assert log_aspect.min() > math.log(0.5) - 0.01 and log_aspect.max() < math.log(2.0) + 0.01
    assert abs(log_aspect.mean()) < 0.03  # log-uniform: symmetric around 1
    assert all(0 <= left and left + w <= width and 0 <= top and top + h <= height for left, top, w, h in boxes)
    # the position is uniform over where the crop fits: offsets spread from one side to the other
    offsets = np.array([left / (width - w) for left, _, w, _ in boxes])
    assert abs(offsets.mean() - 0.5) < 0.03 and offsets.min() < 0.01 and offsets.max() > 0.99


def test_a_crop_that_never_fits_falls_back_to_torchvisions_centre_crop():
    # a 1000 x 10 strip: 90% of its area at an aspect ratio of at most 4/3 is far taller than 10 px
    crop = RandomResizedCrop(16, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3))
    h = 10
    w = round(h * 4 / 3)  # torchvision: the whole height, the widest allowed ratio, centred
    assert {crop.draw(1000, 10, 0, i)[0] for i in range(20)} == {((1000 - w) // 2, 0, w, h)}
    assert {crop.draw(10, 1000, 0, i)[0] for i in range(20)} == {(0, (1000 - 13) // 2, 10, round(10 / 0.75))}
    # the whole image when its own ratio is in the range; else the range's nearest end
    assert RandomResizedCrop(16, scale=(1.0, 1.0), ratio=(1.0, 200.0)).draw(1000, 10, 0, 0)[0] == (0, 0, 1000, 10)
    assert RandomResizedCrop(16, scale=(1.0, 1.0), ratio=(0.5, 0.5)).draw(100, 100, 0, 0)[0] == (25, 0, 50, 100)


def test_draws_depend_on_seed_epoch_and_image_only():
    crop = RandomResizedCrop(16, seed=7)
    assert crop.draw(640, 480, 2, 5) == crop.draw(640, 480, 2, 5) == RandomResizedCrop(16, seed=7).draw(640, 480, 2, 5)
    others = [crop.draw(640, 480, 3, 5), crop.draw(640, 480, 2, 6), RandomResizedCrop(16, seed=8).draw(640, 480, 2, 5)]
    assert all(other[0] != crop.draw(640, 480, 2, 5)[0] for other in others)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "random"])
def test_interpolation_is_fixed_or_picked_per_image(interpolation):
    picked = [mode for _, mode in draws(RandomResizedCrop(16, interpolation=interpolation), 64, 64, n=400)]
    if interpolation != "random":
        assert set(picked) == {interpolation}
    else:
        assert 160 < picked.count("bicubic") < 240 and set(picked) == {"bilinear", "bicubic"}


@pytest.mark.parametrize("kwargs, message", [
    ({"interpolation": "nearest"}, "interpolation must be one of random, bilinear, bicubic"),
    ({"scale": (0.5, 0.2)}, "scale must be two numbers 0 < MIN <= MAX <= 1"),
    ({"ratio": (0.0, 1.0)}, "ratio must be two finite numbers 0 < MIN <= MAX"),
])
def test_bad_crop_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RandomResizedCrop(16, **kwargs)


def striped_tree(root, width=120, height=40):
    """One wide training image: green in its 10 leftmost columns, blue in the 10 rightmost, a gradient between."""
    array = np.zeros((height, width, 3), np.uint8)
    array[:, :, 0] = np.linspace(0, 255, width, dtype=np.uint8)[None]
    array[:, :10] = (0, 255, 0)
    array[:, -10:] = (0, 0, 255)
    for split in ("train", "val"):
        (root / split / "a").mkdir(parents=True)
        Image.fromarray(array).save(root / split / "a" / "0.png")
    return array


def test_training_crops_come_from_the_whole_image_at_its_own_resolution(tmp_path):
    array = striped_tree(tmp_path)
    train, _, _ = build_datasets(str(tmp_path), 16)
    centre, _ = train[0]  # without a random crop: the centre square, which never reaches the green or blue edges
    assert not (centre[1] > 200).any() and not (centre[2] > 200).any()
    crop = RandomResizedCrop(16, scale=(0.08, 1.0), seed=1)
    cropping = train.with_random_crop(crop)
    assert train.random_crop is None  # a copy: the test split's dataset keeps its centre crops
    seen_left = seen_right = False
    for epoch in range(40):
        image, label = cropping[epoch, 0]
        (left, top, w, h), mode = crop.draw(120, 40, epoch, 0)
        resample = Image.Resampling.BICUBIC if mode == "bicubic" else Image.Resampling.BILINEAR
        expected = Image.fromarray(array).crop((left, top, left + w, top + h)).resize((16, 16), resample)
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), np.asarray(expected))
        seen_left |= bool((image[1] > 200).any())
        seen_right |= bool((image[2] > 200).any())
        assert int(label) == 0 and image.shape == (3, 16, 16) and image.dtype == torch.uint8
    assert seen_left and seen_right
    assert torch.equal(cropping[0][0], cropping[0, 0][0])  # a plain index is epoch 0's crop


def test_crops_are_the_same_with_any_number_of_workers(tmp_path):
    for split in ("train", "val"):
        for i in range(6):
            (tmp_path / split / "a").mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(i)
            array = rng.integers(0, 256, (30 + i, 50, 3), dtype=np.uint8)
            Image.fromarray(array).save(tmp_path / split / "a" / f"{i}.png")
    train, _, _ = build_datasets(str(tmp_path), 12)
    train = train.with_random_crop(RandomResizedCrop(12, seed=5))

    def batches(workers, epoch):
        sampler = ShardedBatchSampler(len(train), 3, shuffle=True, seed=5, keyed=True)
        sampler.set_epoch(epoch)
        return [images for images, _ in DataLoader(train, batch_sampler=sampler, num_workers=workers)]

    in_process = batches(0, 1)
    assert all(torch.equal(a, b) for a, b in zip(in_process, batches(2, 1)))
    assert not all(torch.equal(a, b) for a, b in zip(in_process, batches(0, 2)))


def test_keyed_sampler_yields_epoch_and_index():
    sampler = ShardedBatchSampler(6, 3, shuffle=True, seed=1, keyed=True)
    plain = ShardedBatchSampler(6, 3, shuffle=True, seed=1)
    sampler.set_epoch(4), plain.set_epoch(4)
    assert list(sampler) == [[(4, i) for i in batch] for batch in plain]


def test_image_folder_training_defaults_to_timms_crop():
    info = type("Info", (), {"name": "x", "hflip": 0.5, "color_jitter": 0.4, "scale": (0.08, 1.0)})()
    resolved = trainer.resolve_config(TrainConfig(data="synthetic"), info, 32)
    assert resolved.scale == (0.08, 1.0) and resolved.train_interpolation == "random"
    # recorded either way, so that a run's config.yaml serves as --config with --no-aug too
    assert trainer.resolve_config(TrainConfig(aug=False), info, 32).validate().train_interpolation == "random"
    assert build_datasets("digits", 16)[2].scale == (0.5, 1.0)


def test_the_batch_transform_crops_only_what_the_dataset_did_not(tmp_path):
    striped_tree(tmp_path)
    train, _, info = build_datasets(str(tmp_path), 16)
    config = trainer.resolve_config(TrainConfig(data=str(tmp_path), img_size=16), info, 16)
    assert trainer.crops_whole_images(config, train)
    assert not trainer.crops_whole_images(trainer.resolve_config(TrainConfig(aug=False), info, 16), train)
    assert not trainer.crops_whole_images(config, build_datasets("digits", 16)[0])
    assert len(trainer.make_transform(config, info, train=True, cropped=True).crops) == 0
    assert len(trainer.make_transform(config, info, train=True).crops) == 2  # random: bilinear and bicubic


def test_batch_transform_resamples_as_asked():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 16, 16).mul(255).to(torch.uint8)
    outputs = {}
    for mode in ("bilinear", "bicubic", "random"):
        transform = BatchTransform(8, (0, 0, 0), (1, 1, 1), train=True, scale=(0.5, 1.0), interpolation=mode)
        torch.manual_seed(1)
        outputs[mode] = transform(x)
    assert outputs["random"].shape == (64, 3, 8, 8)
    assert not torch.equal(outputs["bilinear"], outputs["bicubic"])
    with pytest.raises(ValueError, match="interpolation must be one of random, bilinear, bicubic"):
        BatchTransform(8, (0, 0, 0), (1, 1, 1), train=True, scale=(0.5, 1.0), interpolation="area")


def test_a_recorded_config_serves_as_config_with_no_aug(tmp_path):
    from mobileconv.cli import build_parser
    from mobileconv.cli.train import train_config_from_args
    from mobileconv.engine.config import dump_yaml

    info = type("Info", (), {"name": "digits", "hflip": 0.0, "color_jitter": 0.0, "scale": (0.5, 1.0)})()
    recorded = trainer.resolve_config(TrainConfig(), info, 16)
    (tmp_path / "config.yaml").write_text(dump_yaml(recorded))
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "config.yaml"), "--no-aug"])
    config = train_config_from_args(args)
    assert not config.aug and config.train_interpolation == "random"
