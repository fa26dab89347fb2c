"""`--compile` without a C++ compiler: one line and exit code 2 before any work, not a traceback."""
import pytest

from mobileconv.cli import main

MESSAGE = "--compile needs a C++ compiler"


@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    """A PATH on which no g++ / c++ / clang++ can be found."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))


def test_bench_compile_without_compiler(no_compiler, capsys):
    rc = main(["bench", "mobilenetv3_small_100_cifar", "--compile", "--batch-size", "1", "--rounds", "1",
               "--iters", "1", "--warmup", "1", "--no-memory"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith(f"mobileconv bench: error: {MESSAGE}"), err
    assert "leave out --compile" in err


def test_train_compile_without_compiler_leaves_no_run_folder(no_compiler, capsys, tmp_path):
    out = tmp_path / "run"
    rc = main(["train", "--compile", "--data", "synthetic", "--epochs", "1", "--max-train-samples", "64",
               "--device", "cpu", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith(f"mobileconv train: error: {MESSAGE}"), err
    assert not out.exists()  # it used to write config.yaml, then fail in the first step


def test_without_compile_the_compiler_is_not_asked_for(no_compiler, capsys):
    rc = main(["summary", "mobilenetv3_small_100_cifar", "--format", "csv"])
    assert rc == 0
    assert MESSAGE not in capsys.readouterr().err


def test_train_compile_from_a_config_file_without_compiler(no_compiler, capsys, tmp_path):
    # the command line's own check does not see options that come from --config (or a resumed run)
    (tmp_path / "c.yaml").write_text("compile: true\n")
    out = tmp_path / "run"
    rc = main(["train", "--config", str(tmp_path / "c.yaml"), "--data", "synthetic", "--epochs", "1",
               "--max-train-samples", "64", "--device", "cpu", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith(f"mobileconv train: error: {MESSAGE}"), err
    assert "leave out --compile" in err
    assert not out.exists()
