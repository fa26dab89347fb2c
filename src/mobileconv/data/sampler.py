"""Deterministic batch sharding: the data order is a function of ``(seed, epoch)`` only.

``--batch-size`` is the *global* batch. Every process draws the same permutation, cuts it into
global batches and keeps its own contiguous slice of each, so N processes see together exactly
the samples one process sees in each step, and a resumed run replays the same order.

With ``repeats`` (timm's ``--aug-repeats``), each image of the permutation comes ``repeats`` times in a row,
so the copies of an image train in the same step under their own augmentations (Hoffer et al. 2020, "Augment
your batch"; DeiT's and timm's ``RepeatAugSampler``).
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class ShardedBatchSampler:
    """Batches of indices for one process of ``world_size``.

    Args:
        num_samples: dataset length.
        batch_size: the global batch (divisible by ``world_size``).
        shuffle: permute with ``numpy.random.default_rng([seed, epoch])``; else keep the order.
        seed: run seed.
        rank, world_size: this process and the number of processes.
        drop_last: drop the last incomplete global batch (training), else keep it and shard it
            as evenly as possible (evaluation; shards may then differ in size by one).
        keyed: yield ``(epoch, index)`` pairs instead of indices, for a dataset whose random crops
            are drawn per epoch and image (:meth:`.datasets.ImageFolderDataset.with_random_crop`); with
            ``repeats``, ``(epoch, index, copy)``, ``copy`` counting an image's repeats from 0.
        repeats: each image of the permutation ``repeats`` times in a row; an epoch keeps ``num_samples``
            draws, so it covers ``1 / repeats`` of the images (timm's ``RepeatAugSampler`` keeps the length
            too). Shuffled training only.
    """

    def __init__(self, num_samples: int, batch_size: int, *, shuffle: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = True, keyed: bool = False, repeats: int = 1) -> None:
        if repeats < 1 or (repeats > 1 and not shuffle):
            raise ValueError(f"repeats must be >= 1, and 1 without shuffling, got {repeats}")
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(f"--batch-size {batch_size} must be a positive multiple of the {world_size} processes")
        if drop_last and num_samples < batch_size:
            raise ValueError(f"--batch-size {batch_size} is larger than the {num_samples} training samples")
        self.num_samples, self.batch_size, self.shuffle, self.seed = num_samples, batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.keyed, self.repeats = keyed, repeats
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> np.ndarray:
        """The global sample order of the current epoch."""
        if not self.shuffle:
            return np.arange(self.num_samples)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        return np.repeat(order, self.repeats)[:self.num_samples]

    def __len__(self) -> int:
        """Batches this process yields: a last global batch of fewer samples than processes leaves some out."""
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + (1 if rest and not self.drop_last and self.rank < rest else 0)

    def __iter__(self) -> Iterator[list[int] | list[tuple[int, int]]]:
        order = self.order()
        stop = self.num_samples - self.num_samples % self.batch_size if self.drop_last else self.num_samples
        for start in range(0, stop, self.batch_size):
            positions = np.array_split(np.arange(start, min(start + self.batch_size, stop)), self.world_size)
            shard = positions[self.rank]
            if not len(shard):  # empty exactly when rank >= the samples left in the last batch
                continue
            indices = order[shard].tolist()
            if not self.keyed:
                yield indices
            elif self.repeats == 1:
                yield [(self.epoch, i) for i in indices]
            else:  # position p holds copy p % repeats of its image
                yield [(self.epoch, i, p % self.repeats) for i, p in zip(indices, shard.tolist())]
