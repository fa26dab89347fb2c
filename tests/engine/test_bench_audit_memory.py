"""The CPU peak-memory figure of `mobileconv bench` against allocation patterns whose peak is known by hand."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mobileconv.engine import bench

MIB = 2**20


def test_peak_memory_counts_the_intermediate_a_composite_op_frees_inside_itself():
    # cross_entropy = log_softmax (a 256 x 4096 float tensor: 4 MiB) then nll_loss, and frees the log-probs
    # before it returns: 4 MiB are live at once. Summing each op's net usage at its start read ~0.
    x, y = torch.randn(256, 4096), torch.zeros(256, dtype=torch.long)
    peak = bench.peak_memory_mb(lambda batch: F.cross_entropy(*batch), (x, y), "cpu")
    assert 4.0 <= peak < 4.01, peak


def test_peak_memory_of_a_training_step_sees_the_previous_gradients_freed():
    # One SGD step of a bias-free 1024 x 1024 linear layer on one sample: zero_grad(set_to_none=True) first frees
    # the previous step's 4 MiB weight gradient, backward then makes a new one; nothing else is larger than a few
    # KiB. Above what was live before the call the step needs well under 1 MiB (CUDA's max_memory_allocated
    # reads the same); dropping the free of the old gradient read 4 MiB.
    torch.manual_seed(0)
    net = nn.Linear(1024, 1024, bias=False)
    step = bench.make_train_step(net, bench.BenchConfig(mode="train"))
    batch = (torch.randn(1, 1024), torch.tensor([3]))
    for _ in range(2):  # momentum buffer and gradient exist, as after bench's warm-up and timed rounds
        step(batch)
    assert net.weight.grad is not None
    peak = bench.peak_memory_mb(step, batch, "cpu")
    assert 0 < peak < 0.5, peak
