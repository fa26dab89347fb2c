"""--aug-repeats: each image N times in a row in the data order (timm's RepeatAugSampler), the copies under
augmentations of their own; the epoch keeps its length, and any number of processes sees the same batches."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from mobileconv.data import RandomResizedCrop, ShardedBatchSampler, build_datasets
from mobileconv.engine import trainer
from mobileconv.engine.config import TrainConfig
from mobileconv.engine.distributed import DistEnv

from ..engine.helpers import TINY, failed_train


def batches(sampler, epoch=3):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_each_image_comes_repeats_times_in_a_row_and_the_epoch_keeps_its_length():
    plain = ShardedBatchSampler(20, 6, shuffle=True, seed=4)
    repeated = ShardedBatchSampler(20, 6, shuffle=True, seed=4, repeats=3)
    assert len(repeated) == len(plain) == 3  # 18 of the 20 draws in full global batches
    order = [i for batch in batches(repeated) for i in batch]
    runs = [order[k:k + 3] for k in range(0, 18, 3)]
    assert all(len(set(run)) == 1 for run in runs)  # three copies of one image in a row, inside one batch
    images = [run[0] for run in runs]
    assert len(set(images)) == 6  # 18 draws: 6 images, not 18
    first = [i for batch in batches(plain) for i in batch]  # the images come in the epoch's permutation order
    assert images == first[:6]
    assert batches(repeated, 4) != batches(repeated, 3)  # another epoch, other images


@pytest.mark.parametrize("world_size", [2, 3])
def test_processes_together_see_the_batches_of_one_process(world_size):
    one = batches(ShardedBatchSampler(25, 6, shuffle=True, seed=1, repeats=2))
    shards = [batches(ShardedBatchSampler(25, 6, shuffle=True, seed=1, repeats=2, rank=r, world_size=world_size))
              for r in range(world_size)]
    assert [sum((shard[b] for shard in shards), []) for b in range(len(one))] == one


def test_keyed_draws_number_the_copies():
    keyed = batches(ShardedBatchSampler(9, 9, shuffle=True, seed=2, keyed=True, repeats=3))
    plain = batches(ShardedBatchSampler(9, 9, shuffle=True, seed=2, repeats=3))
    assert keyed == [[(3, i, p % 3) for p, i in enumerate(batch)] for batch in plain]


def test_bad_repeats_are_refused():
    with pytest.raises(ValueError, match="repeats must be >= 1, and 1 without shuffling, got 2"):
        ShardedBatchSampler(9, 3, shuffle=False, repeats=2)
    with pytest.raises(ValueError, match="got 0"):
        ShardedBatchSampler(9, 3, shuffle=True, repeats=0)


def test_the_copies_of_an_image_are_cropped_apart_and_the_first_as_without_repeats(tmp_path):
    for split in ("train", "val"):
        for i in range(4):
            (tmp_path / split / "a").mkdir(parents=True, exist_ok=True)
            array = np.random.default_rng(i).integers(0, 256, (40, 60, 3), dtype=np.uint8)
            Image.fromarray(array).save(tmp_path / split / "a" / f"{i}.png")
    train, _, _ = build_datasets(str(tmp_path), 12)
    train = train.with_random_crop(RandomResizedCrop(12, scale=(0.1, 0.5), seed=5))
    sampler = ShardedBatchSampler(len(train), 4, shuffle=True, seed=5, keyed=True, repeats=2)
    sampler.set_epoch(1)
    keys = next(iter(sampler))
    images, _ = next(iter(DataLoader(train, batch_sampler=sampler)))
    assert keys[0][1] == keys[1][1] and keys[2][1] == keys[3][1]  # two images, two copies each
    assert not torch.equal(images[0], images[1]) and not torch.equal(images[2], images[3])
    for image, (epoch, index, copy) in zip(images, keys):
        assert torch.equal(image, train[epoch, index, copy][0])
        if copy == 0:  # the crop the image gets without --aug-repeats
            assert torch.equal(image, train[epoch, index][0])
    crop = RandomResizedCrop(12, seed=5)
    assert crop.draw(60, 40, 1, 2, 0) == crop.draw(60, 40, 1, 2) != crop.draw(60, 40, 1, 2, 1)


def test_a_training_run_loads_its_images_repeated():
    data = TensorDataset(torch.arange(30), torch.zeros(30, dtype=torch.long))
    loader, _ = trainer.make_loaders(TrainConfig(batch_size=8, aug_repeats=4, seed=3), data, data, DistEnv())
    loader.batch_sampler.set_epoch(2)
    seen = [x.tolist() for x, _ in loader]
    assert len(seen) == 3 and all(len(set(batch)) == 2 and batch[:4] == batch[:1] * 4 for batch in seen)
    once, _ = trainer.make_loaders(TrainConfig(batch_size=8, aug_repeats=1, seed=3), data, data, DistEnv())
    once.batch_sampler.set_epoch(2)
    assert len({i for x, _ in once for i in x.tolist()}) == 24  # 1 (and 0) mean each image once


@pytest.mark.parametrize("argv, message", [
    (["--aug-repeats", "3", "--no-aug"], "--aug-repeats 3 (set on the command line) is an augmentation: leave it out"),
    (["--aug-repeats", "-1"], "--aug-repeats must be >= 0"),
])
def test_bad_values_are_refused(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert message in failed_train([*TINY, *argv, "--out", str(out)], capsys)
    assert not out.exists()
