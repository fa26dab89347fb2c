"""summarize() on hand-built modules: MACs against formulas and FlopCounterMode, params, memory."""
import csv
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mobileconv.layers import ConvNormAct, GroupedConv2d, MixConv2d, SqueezeExcite, XSepConv2d
from mobileconv.profile import summarize, summary_csv

from .oracles import flop_counter_macs, new_output_bytes


class TinyMixNet(nn.Module):
    """Every mobileconv operator once, an SE, a linear head and a parameter used in forward itself."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvNormAct(3, 16, 3, 2, act_layer="hswish")
        self.conv_pw = GroupedConv2d(16, 48, [1, 1])
        self.conv_dw = MixConv2d(48, (3, 5, 7), 2)
        self.se = SqueezeExcite(48, 12)
        self.xsep = XSepConv2d(48, 5, padding="right_top")
        self.xsep_down = XSepConv2d(48, 7, 2)
        self.classifier = nn.Linear(48, 10)
        self.proj = nn.Parameter(torch.randn(10, 6))  # applied with F.linear in forward: "own ops"

    def forward(self, x):
        x = self.xsep_down(self.xsep(self.se(self.conv_dw(self.conv_pw(self.stem(x))))))
        return F.linear(self.classifier(x.mean((2, 3))), self.proj.t())


def test_mixconv_is_counted_as_the_paper_defines_it_not_as_the_padded_fused_kernel():
    conv = MixConv2d(144, (3, 5, 7))  # impl="fast": one depthwise conv with 7x7 zero-padded kernels
    h = w = 28
    s = summarize(conv, input_size=(144, h, w))
    assert s.macs == (48 * 3 ** 2 + 48 * 5 ** 2 + 48 * 7 ** 2) * h * w  # MixConv paper, Eq. 2
    with torch.no_grad(), FlopCounterMode(display=False) as fast:
        conv(torch.zeros(1, 144, h, w))
    assert fast.get_total_flops() // 2 == 144 * 7 ** 2 * h * w  # what a naive count of the fast path says
    assert conv.impl == "fast"  # summarize restored the implementation
    assert [r.type for r in s.layers] == ["MixConv2d k=3,5,7 splits=48,48,48"]


def test_xsepconv_counts_the_2x2_conv_as_2x2():
    c, k, h, w = 32, 5, 20, 20
    s = summarize(XSepConv2d(c, k, padding="left_bottom"), input_size=(c, h, w))
    assert s.macs == c * (2 * 2 + k + k) * h * w  # XSepConv paper: 4 + 2K weights per channel
    s2 = summarize(XSepConv2d(c, k, 2), input_size=(c, h, w))
    # 2x2 at full size, 1xK strides horizontally, Kx1 vertically
    assert s2.macs == c * (4 * h * w + k * h * (w // 2) + k * (h // 2) * (w // 2))


def test_uneven_grouped_conv_counts_each_group():
    conv = GroupedConv2d(21, 34, [1, 3])  # splits 11+10 -> 17+17
    s = summarize(conv, input_size=(21, 9, 9))
    assert s.macs == (11 * 17 * 1 + 10 * 17 * 9) * 9 * 9
    assert s.params == 11 * 17 + 10 * 17 * 9


@pytest.mark.parametrize("size", [(3, 64, 64), (3, 37, 50)])
def test_totals_match_flop_counter_and_the_parameter_count(size):
    model = TinyMixNet()
    s = summarize(model, input_size=size)
    assert s.params == sum(p.numel() for p in model.parameters())
    assert sum(r.params for r in s.layers) == s.params
    assert sum(r.macs for r in s.layers) == s.macs
    assert s.macs == flop_counter_macs(model, torch.zeros(1, *size))


def test_rows_are_the_layers_with_operators_as_one_row_and_own_ops_kept():
    model = TinyMixNet()
    s = summarize(model, input_size=(3, 32, 32))
    rows = {r.name: r for r in s.layers}
    assert rows["conv_dw"].type == "MixConv2d k=3,5,7 splits=16,16,16 s2"
    assert rows["xsep"].type == "XSepConv2d k=5 padding=right_top"
    assert rows["xsep_down"].type == "XSepConv2d k=7 padding=symmetric s2"
    assert rows["conv_pw"].type == "GroupedConv2d k=1,1 16->48 splits=24,24"
    assert rows["stem.conv"].type == "Conv2d 3x3 s2 3->16"
    assert not any(name.startswith(("conv_dw.", "xsep.")) for name in rows)  # operator internals are not rows
    # the root's F.linear with its own parameter: 10 x 6 MACs and 60 params
    assert rows[""].macs == 10 * 6 and rows[""].params == 60 and rows[""].type == "TinyMixNet (own ops)"
    assert rows["xsep"].params == sum(p.numel() for p in model.xsep.parameters())
    assert rows["classifier"].output_shape == [1, 10]
    assert rows["conv_dw"].output_shape == [1, 48, 8, 8]
    order = [r.name for r in s.layers]
    assert order.index("stem.conv") < order.index("conv_dw") < order.index("se.conv_reduce") < order.index("xsep")


def test_activation_memory_is_the_bytes_of_the_layer_outputs():
    model = TinyMixNet()
    x = torch.zeros(2, 3, 40, 40)
    s = summarize(model, input_size=(3, 40, 40), batch_size=2)
    assert s.activation_bytes == sum(r.activation_bytes for r in s.layers)
    assert s.activation_bytes == new_output_bytes(model, x, layer_types=(MixConv2d, GroupedConv2d, XSepConv2d))
    rows = {r.name: r for r in s.layers}
    assert rows["conv_dw"].activation_bytes == 2 * 48 * 10 * 10 * 4  # float32
    assert rows["stem.bn"].activation_bytes == 2 * 16 * 20 * 20 * 4
    assert rows["stem.act"].activation_bytes == 0  # Hardswish(inplace=True) writes into the BN output


def test_in_place_and_pass_through_layers_add_no_memory():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(inplace=True), nn.ReLU(), nn.Identity(), nn.Dropout(0.5),
                          nn.Flatten(1))
    s = summarize(model, input_size=(3, 5, 5))
    assert [r.activation_bytes for r in s.layers] == [400, 0, 400, 0, 0, 0]
    assert s.activation_bytes == new_output_bytes(model, torch.zeros(1, 3, 5, 5)) == 800


def test_batch_size_scales_macs_and_memory_and_shows_in_shapes():
    model = TinyMixNet()
    one = summarize(model, input_size=(3, 32, 32))
    four = summarize(model, input_size=(3, 32, 32), batch_size=4)
    assert four.macs == flop_counter_macs(model, torch.zeros(4, 3, 32, 32)) == 4 * one.macs
    assert four.activation_bytes == 4 * one.activation_bytes
    assert all(r.output_shape[0] == 4 for r in four.layers if r.output_shape)


class Twice(nn.Module):
    """One conv called twice: a shared layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)

    def forward(self, x):
        return self.conv(torch.relu(self.conv(x)))


def test_shared_module_is_one_row_with_all_its_calls():
    model = Twice()
    s = summarize(model, input_size=(8, 10, 10))
    (row,) = s.layers
    assert row.calls == 2 and row.macs == 2 * 8 * 8 * 9 * 100 and row.params == 8 * 8 * 9
    assert row.activation_bytes == 2 * 8 * 100 * 4


def test_transposed_conv_and_batched_matmul_match_flop_counter():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose2d(6, 4, 3, stride=2, groups=2)
            self.mix = nn.Linear(9, 5)

        def forward(self, x):
            y = self.up(x)  # (1, 4, 9, 9)
            return self.mix(y) @ torch.ones(5, 3)  # Linear on a 4-D tensor, then a matmul in forward

    model = Odd()
    s = summarize(model, input_size=(6, 4, 4))
    assert s.macs == flop_counter_macs(model, torch.zeros(1, 6, 4, 4))
    assert {r.name: r.macs for r in s.layers}["up"] == 6 * 4 * 4 * (4 // 2) * 9


def test_model_settings_are_restored_even_when_forward_fails():
    model = TinyMixNet().train()
    with pytest.raises(ValueError, match=r"cannot run on an input of size \[3, 2, 2\]"):
        summarize(nn.Sequential(nn.Conv2d(3, 4, 5)), input_size=(3, 2, 2))
    with pytest.raises(ValueError, match=r"5, 32, 32"):
        summarize(model, input_size=(5, 32, 32))  # wrong channel count: the operator's own message
    assert model.training and all(m.training for m in model.modules())
    assert model.conv_dw.impl == "fast" and model.xsep.impl == "fast"
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("input_size", [(3, 0, 32), (3, -1, 32), (), "224", (3, 32.0, 32), 224, (3, True, 4)])
def test_bad_input_size_is_refused(input_size):
    with pytest.raises(ValueError, match=r"input_size must be a sequence of positive integers.*got"):
        summarize(nn.Conv2d(3, 3, 1), input_size=input_size)


@pytest.mark.parametrize("batch_size", [0, -2, 1.5])
def test_bad_batch_size_is_refused(batch_size):
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer, got"):
        summarize(nn.Conv2d(3, 3, 1), input_size=(3, 8, 8), batch_size=batch_size)


def test_to_dict_is_json_ready():
    import json

    s = summarize(TinyMixNet(), input_size=(3, 32, 32))
    d = json.loads(json.dumps(s.to_dict()))
    assert d["params"] == s.params and d["macs"] == s.macs and d["input_size"] == [3, 32, 32]
    assert set(d["layers"][0]) >= {"name", "type", "output_shape", "params", "macs", "activation_bytes"}


def test_summary_csv_counts_the_calls_of_a_shared_layer():
    calls = []
    model = Twice()
    model.conv.register_forward_hook(lambda *args: calls.append(1))  # the oracle: forward hooks seen
    (row,) = csv.DictReader(io.StringIO(summary_csv(summarize(model, input_size=(8, 10, 10)))))
    assert int(row["calls"]) == len(calls) == 2 and int(row["macs"]) == 2 * 8 * 8 * 9 * 100


def test_input_too_large_for_memory_is_a_value_error():
    # 3 x 10^7 x 10^7 float32 = 1.2 PB, beyond any address space
    with pytest.raises(ValueError, match=r"cannot run on an input of size \[3, 10000000, 10000000\] \(batch 1\)"):
        summarize(nn.Conv2d(3, 4, 3), input_size=(3, 10**7, 10**7))
