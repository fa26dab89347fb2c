"""The count tables in the family modules' docstrings state what the models really are.

Each row ``| name | params | MACs | ...`` is checked against the built model: the parameter count
exactly, the MACs (``torch.utils.flop_counter`` total / 2, batch 1, at the model's default input
size, MixConv / grouped convs in their one-conv-per-group form) to the 0.1M the table prints.
"""
from __future__ import annotations

import re

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import mobileconv
from mobileconv.layers import set_layer_impl
from mobileconv.models import mixnet, mobilenetv1, mobilenetv2, mobilenetv3

ROW = re.compile(r"^\| (\w+) \| ([\d,]+)[^|]*\| ([\d.]+)M", re.MULTILINE)
ROWS = [(module.__name__.rsplit(".", 1)[-1], name, int(params.replace(",", "")), float(macs))
        for module in (mobilenetv1, mobilenetv2, mobilenetv3, mixnet)
        for name, params, macs in ROW.findall(module.__doc__)]


def test_every_family_table_was_read():
    assert {family for family, *_ in ROWS} == {"mobilenetv1", "mobilenetv2", "mobilenetv3", "mixnet"}
    assert len(ROWS) == 4 + 2 + 5 + 3


@pytest.mark.parametrize("family, name, params, macs", ROWS, ids=[row[1] for row in ROWS])
def test_docstring_row_matches_model(family, name, params, macs):
    model = set_layer_impl(mobileconv.create_model(name).eval(), "reference")
    assert sum(p.numel() for p in model.parameters()) == params
    size = model.pretrained_cfg["input_size"][-1]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    assert round(counter.get_total_flops() / 2 / 1e6, 1) == macs, f"{family}.py docstring, {name}"
