"""Distributed training (gloo, 2 CPU processes): the place of a process in its group, and the run folder.

* ``fit`` in a process group the caller set up (``torch.distributed.init_process_group`` with an
  ``init_method``, no torchrun variables) took WORLD_SIZE / RANK from the environment (absent: 1 / 0) while
  its reductions ran over the group: every process trained alone on the whole data as "the main process",
  the reported training loss was the sum over processes (twice the true one), both wrote the run folder, and
  ``fit`` then destroyed the caller's group.
* An inconsistent torchrun environment (RANK >= WORLD_SIZE) waited for the rendezvous until its timeout
  (30 minutes), and ``RANK=1`` left over in a single process trained without writing anything.
* Without ``--out`` each process picked its own ``runs/train-<date>-<time>``: processes that cross a second
  boundary disagreed on the run folder (named in the error that ends a diverged run).

Oracles: plain PyTorch cross-entropy of the saved weights over the whole training set (one global batch,
batch-norm in training mode); the group's own size; the condition ``0 <= RANK < WORLD_SIZE``; rank 0's folder.
"""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mobileconv.data import build_datasets, limit_samples
from mobileconv.engine import distributed
from mobileconv.engine.checkpoint import load_weights
from mobileconv.engine.metrics import read_metrics_csv
from mobileconv.models import create_model

from .helpers import MODEL, TINY, failed_train

TORCHRUN_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
                      "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two(script: str, tmp_path, env_of_rank) -> list[tuple[int, str, str]]:
    """``python script RANK PORT TMP`` twice, side by side: ``(exit code, stdout, stderr)`` of each."""
    (tmp_path / "worker.py").write_text(script)
    port = str(free_port())
    base = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    base.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    workers = [subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(rank), port, str(tmp_path)],
                                cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**base, **env_of_rank(rank, port)})
               for rank in range(2)]
    try:
        return [(worker.wait(timeout=120), *worker.communicate()) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


# A script of one's own: the caller sets up the group (no torchrun variables), then trains with fit.
OWN_GROUP_SCRIPT = """
import json, os, sys
import torch
import torch.distributed as dist
from mobileconv.engine import TrainConfig, fit

rank, port, tmp = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
config = TrainConfig(model="MODEL", data="synthetic", img_size=16, max_train_samples=64, max_val_samples=32,
                     batch_size=64, epochs=1, quiet=True, out=os.path.join(tmp, "run"), aug=False, drop=0.0,
                     warmup_epochs=0, lr=1e-8, min_lr=1e-8, smoothing=0.0, seed=5)
summary = fit(config)
alive = dist.is_initialized()
total = torch.ones(1)
if alive:
    dist.all_reduce(total)
json.dump({"world_size": summary["world_size"], "alive": alive, "total": total.item()},
          open(os.path.join(tmp, f"rank{rank}.json"), "w"))
if alive:
    dist.destroy_process_group()
sys.stdout.flush(), sys.stderr.flush()
os._exit(0)  # (gloo's threads and the interpreter's finalisation: see mobileconv.engine.exit_process)
""".replace("MODEL", MODEL)


def test_fit_in_a_process_group_set_up_by_the_caller(tmp_path):
    results = run_two(OWN_GROUP_SCRIPT, tmp_path, lambda rank, port: {})
    assert [code for code, _, _ in results] == [0, 0], [err[-3000:] for _, _, err in results]
    (_, out0, _), (_, out1, _) = results
    assert "2 process(es)" in out0 and out1 == ""  # only the main process reports (and writes)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        # the caller's group: its size, and still there for the caller after fit
        assert got == {"world_size": 2, "alive": True, "total": 2.0}, (rank, got)

    # lr 1e-8: the saved weights are those of the one step, on one global batch = the whole training set
    weights, meta = load_weights(tmp_path / "run" / "last.safetensors")
    model = create_model(MODEL, num_classes=10, drop_rate=0.0)  # --drop 0: no dropout in training mode
    model.load_state_dict(weights)
    train_set, _, _ = build_datasets("synthetic", 16)
    train_set = limit_samples(train_set, 64)
    mean, std = (torch.tensor(meta[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        logits = model.train()((train_set.images.float() / 255 - mean) / std)
    expected = F.cross_entropy(logits, train_set.labels).item()
    reported = read_metrics_csv(tmp_path / "run" / "metrics.csv")[0]["loss"]
    assert reported == pytest.approx(expected, rel=1e-4)  # was twice as much (the sum over the 2 processes)


@pytest.mark.parametrize("world_size, rank", [("2", "2"), ("2", "-1"), ("1", "1"), ("two", "0")])
def test_an_inconsistent_torchrun_environment_is_refused(tmp_path, capsys, monkeypatch, world_size, rank):
    def no_rendezvous(*args, **kwargs):  # the rendezvous would wait (30 minutes) for processes that never come
        raise AssertionError("init_process_group called")

    monkeypatch.setattr(distributed.dist, "init_process_group", no_rendezvous)
    monkeypatch.setenv("WORLD_SIZE", world_size)
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    out = tmp_path / "run"
    err = failed_train([*TINY, "--epochs", "1", "--out", str(out)], capsys)
    assert ("WORLD_SIZE" if world_size == "two" else f"RANK={rank}") in err
    assert not out.exists()


# Two torchrun workers without --out whose clocks read different seconds: they must agree on the run folder.
DEFAULT_OUT_SCRIPT = """
import sys, time
rank = int(sys.argv[1])
time.strftime = lambda fmt, *args: f"runs/train-rank{rank}"  # the processes straddle a second boundary
from mobileconv.engine import TrainConfig, exit_process
from mobileconv.engine.distributed import cleanup_distributed, init_distributed
from mobileconv.engine.trainer import setup_run

env = init_distributed("cpu")
config = TrainConfig(model="MODEL", data="synthetic", img_size=16, max_train_samples=32, max_val_samples=8,
                     batch_size=16, epochs=1, quiet=True)
run = setup_run(config.validate(), env, None)
print(run.out, run.config.out, flush=True)
cleanup_distributed()
exit_process(0)
""".replace("MODEL", MODEL)


def test_processes_agree_on_the_default_run_folder(tmp_path):
    def torchrun_env(rank, port):
        return {"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port}

    results = run_two(DEFAULT_OUT_SCRIPT, tmp_path, torchrun_env)
    assert [code for code, _, _ in results] == [0, 0], [err[-3000:] for _, _, err in results]
    main_folder = os.path.join("runs", "train-rank0")
    assert [out.split() for _, out, _ in results] == [[main_folder, main_folder]] * 2
