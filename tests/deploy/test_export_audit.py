"""Regressions found auditing the README's export section: .pt2 batch bounds, the reported tolerance."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from mobileconv.cli import main
from mobileconv.deploy.export import export_model

from ._export_helpers import TOL, eager, rel_err, seeded_randn, small_model

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def test_exported_program_with_a_batch_of_one_is_dynamic(tmp_path):
    """--batch-size 1 (the usual deployment batch) failed: torch.export specialises a size-1 dimension."""
    model = small_model()
    path = tmp_path / "b1.pt2"
    result = export_model(model, path, "exported-program", input_size=8, batch_size=1)
    assert [c.batch_size for c in result.checks] == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["b1.pt2"]
    program = torch.export.load(str(path)).module()
    for batch in (1, 2, 7):
        x = seeded_randn(batch, 3, 8, 8, seed=batch)
        with torch.no_grad():
            assert rel_err(eager(model, x), program(x)) <= TOL


def test_exported_program_batch_is_not_capped(tmp_path):
    """The dynamic batch of a .pt2 stopped at 4096: an export with --batch-size 4096 failed its own check."""
    model = small_model()
    path = tmp_path / "big.pt2"
    result = export_model(model, path, "exported-program", input_size=4, batch_size=4096)
    assert [c.batch_size for c in result.checks] == [4096, 4097]
    program = torch.export.load(str(path)).module()
    x = seeded_randn(5000, 3, 4, 4)
    with torch.no_grad():
        assert rel_err(eager(model, x), program(x)) <= TOL


@pytest.mark.parametrize(("tolerance", "shown"), [(1e-4, "1e-04"), (1.5e-4, "0.00015"), (2.5e-3, "0.0025")])
def test_summary_reports_the_tolerance_that_was_applied(tolerance, shown, tmp_path):
    """The summary printed 1.5e-4 as "1e-04" (and 2.5e-3 as "2e-03"): not the tolerance that was applied."""
    result = export_model(small_model(), tmp_path / "m.onnx", "onnx", input_size=8, tolerance=tolerance)
    printed = re.findall(r"\(tolerance ([^,]+),", result.summary())
    assert printed == [shown, shown]
    assert all(float(p) == tolerance for p in printed)


@pytest.mark.parametrize("options, message", [
    (["--out", "m.pt", "--opset", "18"], "--opset 18 applies only to ONNX, not to --format torchscript"),
    (["--out", "m.pt2", "--opset", "17"], "--opset 17 applies only to ONNX, not to --format exported-program"),
])
def test_options_that_do_not_apply_to_the_format_are_refused(tmp_path, capsys, monkeypatch, options, message):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "mobilenetv3_small_100_cifar", *options]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
