"""Deterministic sharding: order from (seed, epoch) only; N shards together are the 1-process batches."""
import pytest

from mobileconv.data import ShardedBatchSampler


def batches(n, batch, world=1, rank=0, epoch=0, seed=0, shuffle=True, drop_last=True):
    s = ShardedBatchSampler(n, batch, shuffle=shuffle, seed=seed, rank=rank, world_size=world, drop_last=drop_last)
    s.set_epoch(epoch)
    return list(s)


def test_order_depends_on_seed_and_epoch_only():
    assert batches(50, 8, epoch=3) == batches(50, 8, epoch=3)
    assert batches(50, 8, epoch=3) != batches(50, 8, epoch=4)
    assert batches(50, 8, seed=1) != batches(50, 8, seed=2)
    flat = [i for b in batches(50, 8) for i in b]
    assert len(flat) == 48 == len(set(flat))  # 6 full batches, the last 2 samples dropped


@pytest.mark.parametrize("world", [2, 4])
def test_shards_together_are_the_single_process_batches(world):
    single = batches(70, 8, epoch=5)
    shards = [batches(70, 8, world=world, rank=r, epoch=5) for r in range(world)]
    assert all(len(s) == len(single) for s in shards)
    for step, global_batch in enumerate(single):
        assert [i for s in shards for i in s[step]] == global_batch
        assert {len(s[step]) for s in shards} == {8 // world}


def test_eval_sharding_covers_every_sample_once():
    shards = [batches(23, 8, world=2, rank=r, shuffle=False, drop_last=False) for r in range(2)]
    assert sorted(i for s in shards for b in s for i in b) == list(range(23))


def test_bad_batch_sizes_are_explained():
    with pytest.raises(ValueError, match="--batch-size 6 must be a positive multiple of the 4 processes"):
        ShardedBatchSampler(100, 6, shuffle=True, world_size=4)
    with pytest.raises(ValueError, match="--batch-size 64 is larger than the 10 training samples"):
        ShardedBatchSampler(10, 64, shuffle=True)
