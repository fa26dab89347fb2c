"""torchrun with 2 CPU processes (gloo) against 1 process with the same global batch and seed."""
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
    assert double.returncode == 0, double.stderr[-2000:]
    assert "2 process(es)" in double.stdout
    one, two = read_metrics_csv(tmp_path / "one" / "metrics.csv"), read_metrics_csv(tmp_path / "two" / "metrics.csv")
    assert abs(one[0]["loss"] - two[0]["loss"]) < 1e-3, (one[0]["loss"], two[0]["loss"])
    assert abs(one[0]["test_loss"] - two[0]["test_loss"]) < 1e-3
