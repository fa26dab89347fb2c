"""ShardedBatchSampler against a hand-written sharding of the (seed, epoch) permutation, for 1-4 processes."""
import itertools

import numpy as np
import pytest

from mobileconv.data import ShardedBatchSampler


def oracle(n, batch, world, rank, *, shuffle, seed, epoch, drop_last):
    """Rank's batches: contiguous slices of each global batch, the first `len % world` slices one sample longer."""
    order = list(np.random.default_rng([seed, epoch]).permutation(n)) if shuffle else list(range(n))
    if drop_last:
        order = order[:n // batch * batch]
    out = []
    for start in range(0, len(order), batch):
        global_batch = order[start:start + batch]
        base, extra = divmod(len(global_batch), world)
        sizes = [base + 1] * extra + [base] * (world - extra)
        begin = sum(sizes[:rank])
        shard = global_batch[begin:begin + sizes[rank]]
        if shard:
            out.append([int(i) for i in shard])
    return out


CASES = [(n, world, world * mult, drop_last, shuffle)
         for n, world, mult, drop_last, shuffle in itertools.product((1, 5, 13, 24, 37), (1, 2, 3, 4), (1, 3),
                                                                     (True, False), (True, False))
         if not (drop_last and n < world * mult)]


@pytest.mark.parametrize("n, world, batch, drop_last, shuffle", CASES)
def test_shards_match_oracle_and_cover_the_dataset(n, world, batch, drop_last, shuffle):
    for epoch in (0, 1, 7):
        seen = []
        for rank in range(world):
            sampler = ShardedBatchSampler(n, batch, shuffle=shuffle, seed=11, rank=rank, world_size=world,
                                          drop_last=drop_last)
            sampler.set_epoch(epoch)
            got = list(sampler)
            assert got == oracle(n, batch, world, rank, shuffle=shuffle, seed=11, epoch=epoch, drop_last=drop_last)
            assert len(sampler) == len(got)  # what DataLoader and the progress bar count
            seen += [i for b in got for i in b]
        assert len(seen) == len(set(seen))  # disjoint shards
        assert len(seen) == (n // batch * batch if drop_last else n)
        assert set(seen) <= set(range(n))


def test_epochs_reshuffle_and_every_rank_agrees_on_the_order():
    orders = []
    for epoch in range(3):
        per_rank = []
        for rank in range(3):
            s = ShardedBatchSampler(30, 6, shuffle=True, seed=5, rank=rank, world_size=3)
            s.set_epoch(epoch)
            per_rank.append(list(s))
        # interleaving the ranks' shards step by step gives one permutation of the 30 samples
        order = [i for step in zip(*per_rank) for shard in step for i in shard]
        assert sorted(order) == list(range(30))
        orders.append(order)
    assert orders[0] != orders[1] != orders[2]


def test_last_eval_batch_smaller_than_the_process_count():
    """5 samples, batch 4, 4 processes: the second global batch has one sample, for rank 0 only."""
    lengths = [len(ShardedBatchSampler(5, 4, shuffle=False, rank=r, world_size=4, drop_last=False)) for r in range(4)]
    assert lengths == [2, 1, 1, 1]
    assert list(ShardedBatchSampler(5, 4, shuffle=False, rank=0, world_size=4, drop_last=False)) == [[0], [4]]
    assert list(ShardedBatchSampler(5, 4, shuffle=False, rank=3, world_size=4, drop_last=False)) == [[3]]
