"""`mobileconv summary` and `mobileconv models` through mobileconv.cli.main, checked against oracles."""
import csv
import io
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch
from torch import nn

import mobileconv
from mobileconv.cli import build_parser, main
from mobileconv.profile import plot_top1_vs_macs

from .oracles import flop_counter_macs

README = Path(__file__).resolve().parents[2] / "README.md"


def run(capsys, *argv):
    try:
        rc = main(list(argv))
    except SystemExit as e:  # argparse refused an option (its usage, then one error line)
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_summary_json_matches_parameter_count_and_flop_counter(capsys):
    rc, out, _ = run(capsys, "summary", "mixnet_s", "--input-size", "64", "--format", "json")
    assert rc == 0
    report = json.loads(out)
    model = mobileconv.create_model("mixnet_s")
    assert report["model"] == "mixnet_s" and report["input_size"] == [3, 64, 64]
    assert report["params"] == sum(p.numel() for p in model.parameters())
    assert report["macs"] == flop_counter_macs(model, torch.zeros(1, 3, 64, 64))
    assert sum(layer["macs"] for layer in report["layers"]) == report["macs"]
    first = report["layers"][0]
    assert first == {**first, "name": "conv_stem", "type": "Conv2d 3x3 s2 3->16", "output_shape": [1, 16, 32, 32],
                     "params": 16 * 3 * 9, "macs": 16 * 3 * 9 * 32 * 32}


def test_summary_table_shows_mixconv_kernels_and_totals(capsys):
    rc, out, _ = run(capsys, "summary", "mixnet_s", "--input-size", "64")
    assert rc == 0
    assert re.search(r"blocks\.2\.0\.conv_dw\s.*MixConv2d k=3,5,7 splits=48,48,48 s2", out)
    params = sum(p.numel() for p in mobileconv.create_model("mixnet_s").parameters())
    assert re.search(rf"Total\s.*{params:,}", out)


def test_summary_csv_shows_xsep_padding_and_adds_up(capsys):
    rc, out, _ = run(capsys, "summary", "xsep_mobilenetv3_small_100", "--input-size", "64", "--format", "csv")
    assert rc == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    model = mobileconv.create_model("xsep_mobilenetv3_small_100")
    assert sum(int(r["macs"]) for r in rows) == flop_counter_macs(model, torch.zeros(1, 3, 64, 64))
    assert sum(int(r["params"]) for r in rows) == sum(p.numel() for p in model.parameters())
    xsep = [r["type"] for r in rows if r["type"].startswith("XSepConv2d")]
    n = sum(isinstance(m, mobileconv.layers.XSepConv2d) for m in model.modules())
    assert len(xsep) == n > 0
    assert all(re.fullmatch(r"XSepConv2d k=\d+ padding=(right|left)_(top|bottom)|XSepConv2d k=\d+ padding=symmetric",
                            t) for t in xsep)


def test_width_mult_is_passed_to_the_model(capsys):
    rc, out, _ = run(capsys, "summary", "mobilenetv2_100", "--width-mult", "0.5", "--input-size", "64",
                     "--format", "json")
    assert rc == 0
    model = mobileconv.create_model("mobilenetv2_100", width_mult=0.5)
    assert json.loads(out)["params"] == sum(p.numel() for p in model.parameters())
    assert json.loads(out)["params"] < sum(p.numel() for p in mobileconv.create_model("mobilenetv2_100").parameters())
    assert json.loads(out)["width_mult"] == 0.5  # the report says which model it describes
    rc, out, _ = run(capsys, "summary", "mobilenetv2_100", "--width-mult", "0.5", "--input-size", "64")
    assert rc == 0 and "mobilenetv2_100 (width_mult=0.5)" in out


def test_model_without_width_mult_gives_a_clear_error(capsys, monkeypatch):
    from mobileconv.models import _registry

    def plain_net(num_classes=1000, in_chans=3):
        model = nn.Sequential(nn.Conv2d(in_chans, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(8, num_classes))
        model.pretrained_cfg = {"input_size": (in_chans, 32, 32)}
        return model

    monkeypatch.setitem(_registry._MODELS, "plain_test_net", plain_net)
    rc, out, err = run(capsys, "summary", "plain_test_net", "--width-mult", "0.5")
    assert rc == 2 and out == ""
    assert err == "mobileconv summary: error: model 'plain_test_net' does not take a width multiplier (width_mult)\n"
    rc, out, _ = run(capsys, "summary", "plain_test_net", "--format", "json")  # without it the model profiles
    assert rc == 0 and json.loads(out)["macs"] == 8 * 3 * 9 * 30 * 30 + 8 * 1000


@pytest.mark.parametrize("argv, message", [
    (["summary", "mixnet_z"], r"unknown model 'mixnet_z'; did you mean mixnet_s"),
    (["summary", "not_a_model"], r"unknown model 'not_a_model'"),
    (["summary", "mixnet_s", "--input-size", "0"], r"argument --input-size: expected a positive integer, got '0'"),
    (["summary", "mixnet_s", "--input-size", "-8"], r"argument --input-size: expected a positive integer, got '-8'"),
    (["summary", "mixnet_s", "--input-size", "16"], r"input size 16 is too small for mixnet_s: it needs at least 32"),
    (["summary", "mixnet_s_cifar", "--input-size", "4"], r"too small for mixnet_s_cifar: it needs at least 8"),
    (["summary", "mixnet_s", "--width-mult", "0"], r"argument --width-mult: expected a positive finite number, got '0'"),
    (["summary", "mixnet_s", "--width-mult", "inf"], r"argument --width-mult: expected a positive finite number, got 'inf'"),
    (["summary", "mixnet_s", "--width-mult", "nan"], r"argument --width-mult: expected a positive finite number, got 'nan'"),
    (["summary", "mixnet_s", "--batch-size", "0"], r"argument --batch-size: expected a positive integer, got '0'"),
    (["summary", "mixnet_s", "--batch-size", "-1"], r"argument --batch-size: expected a positive integer, got '-1'"),
    (["models", "--filter", "resnet*"], r"no registered model matches 'resnet\*'"),
    (["models", "--plot", "zoo.jpg"], r"plot file must end in .png, got 'zoo.jpg'"),
    (["models", "--plot", "no/such/dir/zoo.png"], r"plot folder 'no/such/dir' does not exist"),
    # sizes beyond any address space (1.2-1.7 PB): the allocation fails at once, a one-line error
    (["summary", "mixnet_s_cifar", "--batch-size", "100000000000"],
     r"cannot run on an input of size \[3, 32, 32\] \(batch 100000000000\): .*can't allocate memory"),
    (["summary", "mixnet_s_cifar", "--input-size", "10000000"],
     r"cannot run on an input of size \[3, 10000000, 10000000\] \(batch 1\): .*can't allocate memory"),
    (["summary", "mixnet_s", "--width-mult", "1e12"],
     r"cannot build mixnet_s with width multiplier 1e\+12: .*can't allocate memory"),
])
def test_bad_arguments_give_one_line_and_exit_code_2(capsys, argv, message):
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and out == ""
    if err.startswith("usage:"):  # an option's type refused it: argparse's usage, then the error
        err = err[err.index(f"mobileconv {argv[0]}: error: "):]
    assert err.count("\n") == 1 and err.startswith(f"mobileconv {argv[0]}: error: ")
    assert re.search(message, err)


def test_unknown_model_from_the_shell_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "mobileconv", "summary", "no_such_net"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("mobileconv summary: error: unknown model 'no_such_net'")
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_models_json_counts_each_model_at_its_default_resolution(capsys):
    rc, out, _ = run(capsys, "models", "--filter", "mobilenetv3_small_1*", "--format", "json")
    assert rc == 0
    records = json.loads(out)
    assert [r["name"] for r in records] == mobileconv.list_models("mobilenetv3_small_1*")
    for r in records:
        model = mobileconv.create_model(r["name"])
        cfg = model.pretrained_cfg
        assert r["input_size"] == list(cfg["input_size"])
        assert r["params"] == sum(p.numel() for p in model.parameters())
        assert r["macs"] == flop_counter_macs(model, torch.zeros(1, *cfg["input_size"]))
        assert r["paper_top1"] == cfg["paper_top1"]


def test_models_table_and_plot(capsys, tmp_path):
    plot = tmp_path / "zoo.png"
    rc, out, err = run(capsys, "models", "--filter", "*mixnet_s*", "--plot", str(plot))
    assert rc == 0
    names = mobileconv.list_models("*mixnet_s*")
    with_top1 = [n for n in names if mobileconv.create_model(n).pretrained_cfg.get("paper_top1") is not None]
    assert all(re.search(rf"^. {n}\s", out, re.M) for n in names)
    assert f"plotted {len(with_top1)} models" in err and 0 < len(with_top1) < len(names)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(plot).shape
    assert height > 300 and width > 500
    assert [p.name for p in tmp_path.iterdir()] == ["zoo.png"]  # no temporary file left behind


def test_plot_leaves_out_models_without_top1_and_splits_datasets(tmp_path):
    records = [dict(name="a", macs=2e8, paper_top1=75.0), dict(name="b", macs=3e8, paper_top1=None),
               dict(name="c", macs=2e7, paper_top1=93.0, paper_dataset="cifar10")]
    assert plot_top1_vs_macs(records, tmp_path / "p.png") == ["a", "c"]
    one_panel = plot_top1_vs_macs(records[:2], tmp_path / "q.png")
    assert one_panel == ["a"]
    assert matplotlib.image.imread(tmp_path / "p.png").shape[1] > matplotlib.image.imread(tmp_path / "q.png").shape[1]
    with pytest.raises(ValueError, match="none of the selected models has a published top-1"):
        plot_top1_vs_macs(records[1:2], tmp_path / "r.png")
    assert not (tmp_path / "r.png").exists()


def test_readme_commands_parse():
    text = README.read_text()
    section = text[text.index("<!-- section:profile -->"):text.index("<!-- /section:profile -->")]
    commands = re.findall(r"^mobileconv ((?:summary|models)\b.*)$", section, re.M)
    assert len(commands) >= 5
    parser = build_parser()
    for command in commands:  # argparse exits (SystemExit) on an option the parser does not know
        args = parser.parse_args(shlex.split(command))
        assert args.func is not None


def test_plot_labels_do_not_collide_or_leave_the_axes():
    from mobileconv.profile.report import _label_offsets

    # mobilenetv3_large_100 sits just below and beside mixnet_s; mixnet_l is at the right edge
    offsets = _label_offsets([(217.0, 75.2), (239.0, 75.8), (555.0, 78.9), (41.0, 50.6)])
    assert offsets[217.0, 75.2][2] == "right" and offsets[217.0, 75.2][0] < 0  # label to the left of its point
    assert offsets[239.0, 75.8][2] == "left" and offsets[239.0, 75.8][0] > 0
    assert offsets[555.0, 78.9][2] == "right"  # would run off the right edge otherwise
    assert offsets[41.0, 50.6][2] == "left"
    assert _label_offsets([(1.0, 2.0)]) == {(1.0, 2.0): (4, 4, "left")}  # a single point: no zero division


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs procfs, a folder nobody can create files in")
def test_plot_into_an_unwritable_folder_is_refused_before_profiling(capsys, monkeypatch):
    import mobileconv.profile as profile

    def must_not_profile(*args, **kwargs):
        raise AssertionError("profiled before checking the plot path")

    monkeypatch.setattr(profile, "profile_models", must_not_profile)
    rc, out, err = run(capsys, "models", "--plot", "/proc/zoo.png")
    assert rc == 2 and out == ""
    assert err.startswith("mobileconv models: error: cannot write the plot '/proc/zoo.png': folder '/proc' is not "
                          "writable (")
    assert err.count("\n") == 1


def test_summary_csv_has_the_json_layer_keys_including_calls(capsys):
    rc, out, _ = run(capsys, "summary", "mixnet_s_cifar", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    rc_json, out_json, _ = run(capsys, "summary", "mixnet_s_cifar", "--format", "json")
    layers = json.loads(out_json)["layers"]
    assert rc == rc_json == 0 and list(rows[0]) == list(layers[0])
    assert [int(r["calls"]) for r in rows] == [layer["calls"] for layer in layers]
