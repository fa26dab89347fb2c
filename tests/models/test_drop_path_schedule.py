"""Stochastic depth rates per block follow EfficientNet's / timm's schedule: ``rate * i / n``.

timm's ``EfficientNetBuilder._make_block`` (and the TF EfficientNet reference) give block ``i`` of
the ``n`` blocks of the network ``drop_path_rate * i / n``: the first block 0, the last one
``rate * (n - 1) / n``, never the full rate. The oracle is that formula over the blocks in order.
"""
from __future__ import annotations

import pytest

import mobileconv
from mobileconv.models._blocks import DropPath


@pytest.mark.parametrize("name", ["mixnet_s", "mobilenetv3_large_100", "mobilenetv2_100"])
def test_drop_path_rates_follow_timm_schedule(name):
    rate = 0.2
    model = mobileconv.create_model(name, drop_path_rate=rate)
    blocks = [block for stage in model.blocks for block in stage]
    n = len(blocks)
    checked = 0
    for i, block in enumerate(blocks):
        drop = getattr(block, "drop_path", None)
        if isinstance(drop, DropPath):
            assert drop.rate == pytest.approx(rate * i / n), f"block {i} of {n}"
            checked += 1
    assert checked >= n // 2  # most blocks have a skip connection, so this checked the schedule
    assert all(getattr(b, "drop_path", None) is None or not isinstance(b.drop_path, DropPath)
               or b.drop_path.rate < rate for b in blocks)
