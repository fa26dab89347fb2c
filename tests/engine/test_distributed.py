"""torchrun with 2 CPU processes (gloo) against 1 process with the same global batch and seed."""
import subprocess
import sys

import pytest

from mobileconv.engine import distributed
from mobileconv.engine.metrics import read_metrics_csv

from .helpers import TINY, run_cli

# No augmentation and no dropout: the only randomness left is the (seed, epoch) data order, shared by all.
# 6 steps at a constant lr of 0.02 move the weights enough that unsynchronised batch norm (--no-sync-bn)
# changes the epoch loss by about 1e-2, while the synchronised runs agree to about 1e-5.
ARGS = ["train", *TINY, "--max-train-samples", "96", "--epochs", "1", "--no-aug", "--drop", "0", "--deterministic",
        "--seed", "3", "--warmup-epochs", "0", "--lr", "0.02", "--min-lr", "0.02"]


def test_two_processes_match_one_process(tmp_path):
    single = run_cli([*ARGS, "--out", str(tmp_path / "one")])
    assert single.returncode == 0, single.stderr
    torchrun = ["--standalone", "--nproc_per_node", "2", "-m", "mobileconv"]
    double = run_cli([*torchrun, *ARGS, "--out", str(tmp_path / "two")], module=("-m", "torch.distributed.run"))
    assert double.returncode == 0, _ranks_output(double.stderr)
    assert "2 process(es)" in double.stdout
    one, two = read_metrics_csv(tmp_path / "one" / "metrics.csv"), read_metrics_csv(tmp_path / "two" / "metrics.csv")
    assert abs(one[0]["loss"] - two[0]["loss"]) < 1e-3, (one[0]["loss"], two[0]["loss"])
    assert abs(one[0]["test_loss"] - two[0]["test_loss"]) < 1e-3


def _ranks_output(stderr: str) -> str:
    """What the ranks printed before torchrun's own report of their failure (which would crowd it out)."""
    return stderr.split("failed (exitcode")[0][-4000:]


# A process that exits through exit_process, having joined a gloo group or not. A torchrun worker
# aborts only when a gloo thread loses a scheduling race with the interpreter's finalisation (a few
# runs in a hundred on a loaded 2-core machine), so these check the exit itself: status, output flushed,
# and finalisation (here: an atexit handler) skipped exactly when a gloo group was joined.
EXIT_SCRIPT = """
import atexit, sys
from mobileconv.engine import distributed
atexit.register(lambda: print("finalised", flush=True))
distributed._joined_gloo = sys.argv[1] == "gloo"
print("unflushed output", end="")
sys.stderr.write("unflushed error")
distributed.exit_process(3)
print("not reached")
"""


@pytest.mark.parametrize("joined", ["gloo", "none"])
def test_exit_process_skips_finalisation_after_gloo(joined):
    result = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, joined], capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    assert result.stdout.startswith("unflushed output") and "not reached" not in result.stdout
    assert result.stderr == "unflushed error"
    assert ("finalised" in result.stdout) == (joined == "none")


def test_init_distributed_records_a_gloo_group(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed, "_joined_gloo", False)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", calls.append)
    monkeypatch.setenv("WORLD_SIZE", "1")
    distributed.init_distributed("cpu")
    assert calls == [] and not distributed._joined_gloo
    monkeypatch.setenv("WORLD_SIZE", "2")
    env = distributed.init_distributed("cpu")
    assert calls == ["gloo"] and distributed._joined_gloo and env.world_size == 2
