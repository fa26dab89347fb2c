"""CLI audit: a rich table to a closed pipe, close-match hints for unknown model names, and an ``eval --out``
through a broken symbolic link."""
import os
import subprocess
import sys

import pytest

from mobileconv.cli import main

MODEL = "mobilenetv3_small_100_cifar"


@pytest.mark.parametrize("argv", [["summary", MODEL], ["models", "--filter", MODEL]])
def test_table_to_a_closed_pipe_exits_0_quietly(argv):
    # rich's Console ended such a run with SystemExit(1); main() treats a reader that left as success
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "mobileconv", *argv], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_bench_unknown_model_names_the_close_ones(capsys):
    assert main(["bench", MODEL, "mixnet_sx", "no_such_net"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "unknown model(s) mixnet_sx (did you mean mixnet_s" in err
    assert "no_such_net (`mobileconv models` lists them)" in err


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_eval_predict_unknown_model_names_the_close_ones(command, capsys, tmp_path):
    argv = [command, *(["x.png"] if command == "predict" else []), "--checkpoint", str(tmp_path / "none.safetensors"),
            "--model", "mixnet_sx"]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "expected a registered model name, got 'mixnet_sx'; did you mean mixnet_s" in err


@pytest.mark.parametrize("below", ["", "sub"])
def test_eval_out_through_a_broken_link_is_refused_before_evaluating(below, capsys, tmp_path, monkeypatch):
    import mobileconv.engine.inference as inference

    def no_evaluation(*args):
        raise AssertionError("evaluated although --out cannot be created")

    monkeypatch.setattr(inference, "evaluate_checkpoint", no_evaluation)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "missing" / "folder")
    out = link / below if below else link
    assert main(["eval", "--checkpoint", str(tmp_path / "none.safetensors"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"mobileconv eval: error: --out {out}: cannot write there ({link} is a symbolic link to a " \
                  f"missing path)\n"
    assert not (tmp_path / "missing").exists()
