"""A run trained on a folder given as a relative --data path can be resumed from another working directory,
with or without --data naming the same folder by its absolute path."""
import os

import numpy as np
import yaml
from PIL import Image

from mobileconv.cli import main

from .helpers import MODEL

ARGS = ["--model", MODEL, "--img-size", "16", "--batch-size", "8", "--max-val-samples", "4", "--quiet",
        "--warmup-epochs", "0"]


def make_image_folder(root):
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 2)):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / split / name / f"{i}.png")


def test_run_on_a_relative_data_path_resumes_from_another_directory(tmp_path, monkeypatch):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    make_image_folder(work / "images")
    elsewhere.mkdir()
    out = tmp_path / "run"
    monkeypatch.chdir(work)
    assert main(["train", *ARGS, "--data", "images", "--epochs", "1", "--out", str(out)]) == 0
    absolute = os.path.realpath(work / "images")
    assert yaml.safe_load((out / "config.yaml").read_text())["data"] == absolute

    monkeypatch.chdir(elsewhere)  # the relative path "images" names nothing here
    assert main(["train", "--resume", str(out), "--epochs", "2", "--quiet"]) == 0
    assert main(["train", "--resume", str(out), "--epochs", "3", "--data", absolute, "--quiet"]) == 0
    rows = (out / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["epoch", "1", "2", "3"]


def test_run_that_saved_a_relative_data_path_still_resumes_from_its_directory(tmp_path, monkeypatch):
    """Run folders written before --data was saved as an absolute path."""
    import torch

    work = tmp_path / "work"
    make_image_folder(work / "images")
    out = tmp_path / "run"
    monkeypatch.chdir(work)
    assert main(["train", *ARGS, "--data", "images", "--epochs", "1", "--out", str(out)]) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    (out / "config.yaml").write_text(yaml.safe_dump({**config, "data": "images"}))
    state = torch.load(out / "state.pt", weights_only=True)
    state["config"]["data"] = "images"
    torch.save(state, out / "state.pt")
    assert main(["train", "--resume", str(out), "--epochs", "2", "--quiet"]) == 0
    assert main(["train", "--resume", str(out), "--epochs", "3", "--data", "images", "--quiet"]) == 0
    assert [r.split(",")[0] for r in (out / "metrics.csv").read_text().splitlines()] == ["epoch", "1", "2", "3"]
