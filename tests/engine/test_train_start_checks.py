"""Checks made before training (learning-rate range, momentum, torchrun), and --overwrite with a failing run.

A previous run is replaced only by the new run's first checkpoint; the run-folder checks that only the
main process makes stop every process of a torchrun job with the same one-line error.
"""
import hashlib
import os
import shutil
import socket
import subprocess
import sys

import pytest

from mobileconv.cli import main
from mobileconv.engine import distributed, trainer

from .helpers import REPO, TINY, failed_train


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    return out


def snapshot(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("options, message", [
    (["--lr", "0.01", "--min-lr", "0.5"], "--min-lr 0.5 is above the peak learning rate --lr 0.01; "),
    (["--opt", "adamw", "--min-lr", "0.01"], "--min-lr 0.01 is above the peak learning rate --lr 0.002 (the adamw "
                                             "default)"),
    (["--momentum", "1"], "--momentum must be in [0, 1)"),
    (["--momentum", "1.5"], "--momentum must be in [0, 1)"),
    (["--threads", str(os.cpu_count() * 64)], "--threads must be from 1 to "),  # oracle: beyond any CPU count
])
def test_options_outside_their_range_are_refused_up_front(tmp_path, capsys, monkeypatch, options, message):
    monkeypatch.setattr(trainer, "train_epochs", lambda run: pytest.fail("training started"))
    err = failed_train([*TINY, *options, "--out", str(tmp_path / "run")], capsys)
    assert message in err
    assert not (tmp_path / "run").exists()


def test_min_lr_equal_to_lr_is_a_constant_schedule(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--lr", "0.02", "--min-lr", "0.02", "--warmup-epochs", "0",
                 "--out", str(out)]) == 0
    assert "lr,img/s" in (out / "metrics.csv").read_text()
    assert (out / "metrics.csv").read_text().splitlines()[1].split(",")[4] == "0.02"


def test_overwrite_that_fails_in_its_first_epoch_keeps_the_previous_run(finished_run, tmp_path, capsys, monkeypatch):
    build = trainer.build_model

    def poisoned(*args, **kwargs):  # NaN logits from the first training step on
        model = build(*args, **kwargs)
        model.register_forward_hook(lambda module, inputs, output: output * float("nan") if module.training else output)
        return model

    monkeypatch.setattr(trainer, "build_model", poisoned)
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = snapshot(out)
    capsys.readouterr()
    assert main(["train", *TINY, "--epochs", "2", "--lr", "0.05", "--overwrite", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert snapshot(out) == before
    assert "loss is nan at epoch 1, step 1" in err and f"the previous run in {out} is kept" in err


def test_overwrite_replaces_the_previous_run_at_its_first_checkpoint(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "summary.json").write_text("{}")  # the new run writes its own at the end
    assert main(["train", *TINY, "--epochs", "1", "--lr", "0.05", "--overwrite", "--out", str(out)]) == 0
    assert "lr: 0.05" in (out / "config.yaml").read_text()
    assert '"epochs": 1' in (out / "summary.json").read_text()


def test_on_main_raises_the_main_process_error_everywhere_in_one_process():
    main_env = distributed.DistEnv(rank=0, world_size=1)
    assert distributed.on_main(main_env, lambda: 3, 0) == 3
    with pytest.raises(ValueError, match="^boom$"):
        distributed.on_main(main_env, lambda: (_ for _ in ()).throw(ValueError("boom")), 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_workers(command: list[str]) -> list[tuple[int, str]]:
    """The two workers torchrun would start, started by hand so that neither is killed before it reports:
    ``(exit code, stderr)`` of each."""
    group = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(command, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, **group, "RANK": str(rank), "LOCAL_RANK": str(rank)})
               for rank in range(2)]
    results = [(worker.wait(timeout=120), worker.stderr.read()) for worker in workers]
    for worker in workers:
        worker.stdout.close(), worker.stderr.close()
    return results


def test_two_processes_refuse_an_existing_run_with_the_same_line_and_no_traceback(finished_run, tmp_path):
    """The two workers torchrun would start, started by hand so that neither is killed before it reports."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = snapshot(out)
    command = [sys.executable, "-m", "mobileconv", "train", *TINY, "--epochs", "1", "--out", str(out)]
    results = run_two_workers(command)
    for code, err in results:
        assert code == 2 and err.count("\n") == 1, err[-3000:]
        assert err.startswith(f"mobileconv train: error: --out {out} already holds a run")
    assert snapshot(out) == before


def test_a_process_that_fails_mid_run_stops_the_others_with_one_line(tmp_path):
    """One worker meets an undecodable image in its share of a batch; the other must not print a gloo traceback."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("a", "b"):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for i in range(8):
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                    tmp_path / "data" / split / name / f"{i}.png")
    bad = tmp_path / "data" / "train" / "a" / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    command = [sys.executable, "-m", "mobileconv", "train", "--model", "mobilenetv3_small_100_cifar", "--data",
               str(tmp_path / "data"), "--img-size", "16", "--batch-size", "8", "--epochs", "1", "--quiet",
               "--out", str(tmp_path / "run")]
    results = run_two_workers(command)
    errors = sorted(err for _, err in results)
    assert [code for code, _ in results] == [2, 2], errors
    assert all(err.count("\n") == 1 and "Traceback" not in err for err in errors), errors
    assert any(f"cannot decode image {bad}" in err for err in errors), errors
    assert any("another process of this job exited (its error is reported above)" in err for err in errors), errors
