"""--dist-bn reduce (timm's): without synchronised batch norm, the running statistics after an epoch are the
average of every process's. Oracle: the statistics each process had, averaged here."""
import json

import pytest

from .helpers import ONE_EPOCH, TINY, failed_train, run_cli

TORCHRUN = ("-m", "torch.distributed.run")

SCRIPT = """
import json, sys
import torch
from torch import nn
from mobileconv.engine import exit_process
from mobileconv.engine.distributed import average_running_stats, cleanup_distributed, init_distributed

env = init_distributed("cpu")
model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4))
torch.manual_seed(env.rank)
model(torch.randn(8, 3, 5, 5) * (env.rank + 1) + env.rank)  # each process its own running statistics
before = {k: v.tolist() for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))}
weight = model[0].weight.clone()
average_running_stats(model)
after = {k: v.tolist() for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))}
json.dump({"before": before, "after": after, "weight_kept": bool(torch.equal(weight, model[0].weight))},
          open(sys.argv[1] + f".{env.rank}", "w"))
cleanup_distributed()
exit_process(0)
"""


def test_the_running_statistics_become_the_processes_average(tmp_path):
    (tmp_path / "script.py").write_text(SCRIPT)
    result = run_cli(["--standalone", "--nproc_per_node", "2", str(tmp_path / "script.py"), str(tmp_path / "out")],
                     module=TORCHRUN)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"out.{rank}").read_text()) for rank in (0, 1)]
    assert ranks[0]["before"] != ranks[1]["before"] and all(r["weight_kept"] for r in ranks)
    for key, first in ranks[0]["before"].items():
        expected = [(a + b) / 2 for a, b in zip(first, ranks[1]["before"][key])]
        for rank in ranks:
            assert rank["after"][key] == pytest.approx(expected, rel=1e-6), key


def test_a_run_without_sync_bn_reduces(tmp_path):
    out = tmp_path / "run"
    result = run_cli(["--standalone", "--nproc_per_node", "2", "-m", "mobileconv", "train", *TINY, "--epochs", "1",
                      "--no-sync-bn", "--dist-bn", "reduce", "--ema", "--out", str(out)], module=TORCHRUN)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dist_bn: reduce\n" in (out / "config.yaml").read_text()


def test_it_is_refused_with_sync_bn(tmp_path, capsys):
    err = failed_train([*ONE_EPOCH, "--dist-bn", "reduce", "--out", str(tmp_path / "run")], capsys)
    assert ("--dist-bn reduce (set on the command line) gathers the processes' own batch-norm statistics, and "
            "--sync-bn keeps one set: add --no-sync-bn, or leave --dist-bn out") in err
