"""Synchronised batch norm on CPU (gloo) under mixed precision, and one data-parallel SGD step against one process.

``DistributedBatchNorm2d`` (the CPU stand-in for ``nn.SyncBatchNorm``, on by default under torchrun) computed its
statistics in the input's dtype: under ``--amp`` (bfloat16 autocast on CPU) the first training step failed with
"expected dtype float for `end` but got dtype c10::BFloat16" when updating the float32 running statistics, so
``torchrun ... train --amp`` could not train at all.

It now gathers each process's count, mean and sum of squared deviations and combines them (parallel Welford):
uneven shards and a process with no images check the count weighting, a bfloat16 model the buffers' dtype.

Oracles: ``nn.BatchNorm2d`` in one process over the whole global batch (PyTorch's own batch norm, which keeps
float32 statistics under autocast), and ``mobileconv train --amp`` in one process with the same global batch.
"""
import pytest
import torch
from torch import nn

from mobileconv.engine.metrics import read_metrics_csv

from .helpers import REPO, TINY, run_cli

TORCHRUN = ("-m", "torch.distributed.run")
TWO = ["--standalone", "--nproc_per_node", "2"]

# Two processes, each with its half of the global batch: forward under autocast (or not), backward, one SGD
# step through DistributedDataParallel; rank 0 saves what it saw.
STEP_SCRIPT = """
import sys
import torch
import torch.distributed as dist
from torch import nn
from mobileconv.engine import exit_process
from mobileconv.engine.distributed import cleanup_distributed, convert_sync_batchnorm, init_distributed
from tests.engine.test_audit_s12_distributed import CASES, batch, make_net

env = init_distributed("cpu")
results = {}
for case, (amp, sizes, dtype) in CASES.items():
    net = convert_sync_batchnorm(make_net().to(dtype), env.device)
    ddp = nn.parallel.DistributedDataParallel(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    whole = batch().to(dtype)
    x = (whole.split(sizes) if sizes else whole.chunk(env.world_size))[env.rank]
    try:  # (both processes fail alike, after the same collectives)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = ddp(x)
    except RuntimeError as e:
        results[case] = {"error": str(e)}
        continue
    # the global batch's mean square: DDP averages the processes' gradients, so each process scales its sum
    (out.float().square().sum() * env.world_size / (len(whole) * out.shape[1:].numel())).backward()
    optimizer.step()
    gathered = [None] * env.world_size
    dist.all_gather_object(gathered, out.detach())
    results[case] = {"out": torch.cat(gathered), "state": net.state_dict(),
                     "grads": {name: p.grad for name, p in net.named_parameters()}}
if env.is_main:
    torch.save(results, sys.argv[1])
cleanup_distributed()
exit_process(0)
"""

# case -> (autocast to bfloat16, the two processes' shard sizes (None: halves), the model's dtype)
CASES = {"float32": (False, None, torch.float32), "amp": (True, None, torch.float32),
         "uneven": (False, [3, 5], torch.float32), "one_empty": (False, [0, 8], torch.float32),
         "bfloat16_model": (False, None, torch.bfloat16)}


def make_net() -> nn.Module:
    """Conv / BN (cumulative-average momentum) / ReLU / conv / BN, the same weights in every process."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6, momentum=None), nn.ReLU(), nn.Conv2d(6, 4, 1),
                         nn.BatchNorm2d(4))


def batch() -> torch.Tensor:
    return torch.randn(8, 3, 7, 7, generator=torch.Generator().manual_seed(1)) * 3 + 1


def one_process_step(amp: bool, dtype: torch.dtype) -> dict:
    net = make_net().to(dtype)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = net(batch().to(dtype))
    out.float().square().mean().backward()
    optimizer.step()
    return {"out": out.detach(), "state": net.state_dict(), "grads": {n: p.grad for n, p in net.named_parameters()}}


@pytest.fixture(scope="module")
def two_process_steps(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("step")
    (tmp / "step.py").write_text(STEP_SCRIPT)
    result = run_cli([*TWO, str(tmp / "step.py"), str(tmp / "out.pt")], module=TORCHRUN, timeout=120,
                     env_extra={"PYTHONPATH": str(REPO)})  # the script imports make_net and batch from here
    assert result.returncode == 0, result.stderr.split("failed (exitcode")[0][-3000:]
    return torch.load(tmp / "out.pt")


@pytest.mark.parametrize("case, tol", [("float32", 1e-5), ("amp", 2e-2), ("uneven", 1e-5), ("one_empty", 1e-5),
                                       ("bfloat16_model", 3e-2)])
def test_sync_bn_step_matches_one_process_with_the_whole_batch(two_process_steps, case, tol):
    """Uneven shards check the count weighting of the combined statistics, an empty shard a process with none."""
    amp, _, dtype = CASES[case]
    got, want = two_process_steps[case], one_process_step(amp, dtype)
    assert "error" not in got, got
    assert got["out"].dtype == want["out"].dtype == (torch.bfloat16 if amp else dtype)
    torch.testing.assert_close(got["out"].float(), want["out"].float(), atol=tol * 4, rtol=tol)
    for name, value in want["state"].items():  # running statistics (float32 under autocast too), stepped weights
        assert got["state"][name].dtype == value.dtype, name
        torch.testing.assert_close(got["state"][name].float(), value.float(), atol=tol, rtol=tol, msg=name)
    # DDP's average of the processes' gradients (a conv bias before a BN has a gradient of 0: rounding noise only)
    scale = max(grad.abs().max().item() for grad in want["grads"].values())
    for name, grad in want["grads"].items():
        torch.testing.assert_close(got["grads"][name].float(), grad.float(), atol=tol * scale, rtol=tol, msg=name)


ARGS = ["train", *TINY, "--epochs", "1", "--no-aug", "--drop", "0", "--seed", "3", "--warmup-epochs", "0", "--lr",
        "0.02", "--min-lr", "0.02", "--amp"]


def test_torchrun_amp_trains_and_matches_one_process(tmp_path):
    """``torchrun ... train --amp`` (synchronised BN is the default) crashed at its first step."""
    double = run_cli([*TWO, "-m", "mobileconv", *ARGS, "--out", str(tmp_path / "two")], module=TORCHRUN)
    assert double.returncode == 0, double.stderr.split("failed (exitcode")[0][-3000:]
    single = run_cli([*ARGS, "--out", str(tmp_path / "one")])
    assert single.returncode == 0, single.stderr[-3000:]
    one, two = read_metrics_csv(tmp_path / "one" / "metrics.csv"), read_metrics_csv(tmp_path / "two" / "metrics.csv")
    assert abs(one[0]["loss"] - two[0]["loss"]) < 2e-3, (one[0]["loss"], two[0]["loss"])
    assert abs(one[0]["test_loss"] - two[0]["test_loss"]) < 2e-3, (one[0]["test_loss"], two[0]["test_loss"])
