"""Every MixNet / MobileNetV3 block against the tables in ``../shared/SPEC.md`` (the oracle).

Parameter counts cannot see some table errors: in a repeated block (``in == out``) swapping the
grouped expand and project convs (``a1.1_p1`` vs ``a1_p1.1``), or reordering equal-sized MixConv
groups, keeps params and MACs. MixNet-M / -L have no reference checkpoint either, so this reads
the official block strings and MobileNetV3 layer rows from SPEC.md with its own decoder and checks
each built block's kernels (in group order), channel splits, grouped 1x1 convs, widths, strides,
SE width / activation / gate and activations.
"""
import re

import pytest
from torch import nn

import mobileconv
from mobileconv.layers import GroupedConv2d, MixConv2d

from ..conftest import REPO


def _spec() -> str:
    spec = REPO.parent / "shared" / "SPEC.md"
    if not spec.is_file():
        pytest.fail(f"{spec} not found (../shared must sit beside the clone)")
    return spec.read_text()


def make_divisible(v: float) -> int:
    """SPEC.md, Operators: ``max(8, int(v + 4) // 8 * 8)``, plus 8 if that is below ``0.9 * v``."""
    r = max(8, int(v + 4) // 8 * 8)
    return r + 8 if r < 0.9 * v else r


def equal_split(c: int, g: int) -> list[int]:
    return [c // g + c % g] + [c // g] * (g - 1)


def dw_kernels_and_stride(conv: nn.Module) -> tuple[list[int], int, list[int]]:
    if isinstance(conv, MixConv2d):
        return list(conv.kernel_sizes), conv.stride, list(conv.splits)
    assert isinstance(conv, nn.Conv2d) and conv.groups == conv.in_channels == conv.out_channels
    return [conv.kernel_size[0]], conv.stride[0], [conv.in_channels]


def pw_groups(conv: nn.Module, cin: int, cout: int) -> int:
    """Number of groups of a 1x1 conv, checking its widths and MixNet's split (remainder first)."""
    if isinstance(conv, GroupedConv2d):
        g = len(conv)
        assert [c.in_channels for c in conv] == equal_split(cin, g)
        assert [c.out_channels for c in conv] == equal_split(cout, g)
        assert all(c.kernel_size == (1, 1) for c in conv)
        return g
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.groups == 1
    assert (conv.in_channels, conv.out_channels) == (cin, cout)
    return 1


def blocks(model):
    return [b for stage in model.blocks for b in stage]


# --- MixNet ----------------------------------------------------------------------------------------

def mixnet_spec(title: str) -> tuple[int, float, list[str]]:
    """(stem, dropout, block strings) of 'MixNet-S' / 'MixNet-M' in SPEC.md."""
    m = re.search(rf"^{title} \(stem (\d+), dropout ([\d.]+)\):\n```\n(.*?)```", _spec(), re.S | re.M)
    assert m, f"{title} table not found in SPEC.md"
    return int(m[1]), float(m[2]), m[3].split()


def decode(block: str) -> dict:
    f = {"sw": False, "se": 0.0}
    for part in block.split("_"):
        if part == "sw":
            f["sw"] = True
        elif part.startswith("se"):
            f["se"] = float(part[2:])
        else:
            f[part[0]] = part[1:]
    return dict(r=int(f["r"]), k=[int(k) for k in f["k"].split(".")], a=f["a"].count("1"), p=f["p"].count("1"),
                s=int(f["s"][0]), e=float(f["e"]), i=int(f["i"]), o=int(f["o"]), se=f["se"], sw=f["sw"])


@pytest.mark.parametrize("name, title, mult", [
    ("mixnet_s", "MixNet-S", 1.0), ("mixnet_m", "MixNet-M", 1.0), ("mixnet_l", "MixNet-M", 1.3),
    ("tf_mixnet_m", "MixNet-M", 1.0), ("tf_mixnet_l", "MixNet-M", 1.3),
])
def test_mixnet_blocks_follow_the_official_block_strings(name, title, mult):
    stem, dropout, strings = mixnet_spec(title)
    model = mobileconv.create_model(name)
    width = make_divisible(stem * mult)
    assert model.conv_stem.out_channels == width and isinstance(model.act1, nn.ReLU)
    built = blocks(model)
    rows = [(decode(s), j) for s in strings for j in range(decode(s)["r"])]
    assert len(built) == len(rows)
    for n, (b, (row, j)) in enumerate(zip(built, rows)):
        where = f"{name} block {n}: {row}"
        cin, cout = width, make_divisible(row["o"] * mult)
        stride = row["s"] if j == 0 else 1
        act = nn.SiLU if row["sw"] else nn.ReLU
        kernels, dw_stride, splits = dw_kernels_and_stride(b.conv_dw)
        assert kernels == row["k"] and dw_stride == stride, where
        mid = cin if row["e"] == 1 else make_divisible(cin * row["e"])
        assert splits == equal_split(mid, len(row["k"])), where
        if row["e"] == 1:  # dw -> BN -> ReLU -> pw -> BN (+ skip)
            assert pw_groups(b.conv_pw, cin, cout) == 1 and isinstance(b.act2, nn.Identity), where
        else:
            assert pw_groups(b.conv_pw, cin, mid) == row["a"], where
            assert pw_groups(b.conv_pwl, mid, cout) == row["p"], where
            assert isinstance(b.act2, act), where
        assert isinstance(b.act1, act), where
        if row["se"]:
            assert b.se.conv_reduce.out_channels == max(1, int(cin * row["se"])), where  # of the block's input
            assert isinstance(b.se.act1, act) and isinstance(b.se.gate, nn.Sigmoid), where
        else:
            assert isinstance(b.se, nn.Identity), where
        assert b.use_skip == (stride == 1 and cin == cout), where
        width = cout
    assert (model.conv_head.in_channels, model.conv_head.out_channels) == (width, 1536)
    assert isinstance(model.bn2, nn.BatchNorm2d) and isinstance(model.act2, nn.ReLU)
    assert model.drop_rate == dropout


# --- MobileNetV3 -----------------------------------------------------------------------------------

def mbv3_spec(title: str) -> list[tuple]:
    """Rows ``(k, exp, out, se, act, stride)`` of 'Large' / 'Small' in SPEC.md, repeats unrolled."""
    m = re.search(rf"^{title}: stem 3x3 -> 16 HS s2; (.*?); 1x1 -> (\d+) HS\.", _spec(), re.S | re.M)
    assert m, f"MobileNetV3-{title} table not found in SPEC.md"
    rows = []
    for k, exp, out, se, act, s, r in re.findall(r"\((\d+),(\d+),(\d+),(SE|-),(RE|HS),(\d)\)(?:x(\d))?", m[1]):
        rows += [(int(k), int(exp), int(out), se == "SE", act, int(s) if i == 0 else 1) for i in range(int(r or 1))]
    return rows, int(m[2])


@pytest.mark.parametrize("name, title, head", [("mobilenetv3_large_100", "Large", 1280),
                                               ("mobilenetv3_small_100", "Small", 1024)])
def test_mobilenetv3_blocks_follow_the_paper_tables(name, title, head):
    rows, last = mbv3_spec(title)
    model = mobileconv.create_model(name)
    assert model.conv_stem.out_channels == 16 and model.conv_stem.stride == (2, 2)
    assert isinstance(model.act1, nn.Hardswish)
    *built, last_conv = blocks(model)
    assert len(built) == len(rows)
    cin = 16
    for n, (b, (k, exp, out, se, act, stride)) in enumerate(zip(built, rows)):
        where = f"{name} block {n}"
        act_cls = nn.Hardswish if act == "HS" else nn.ReLU
        kernels, dw_stride, _ = dw_kernels_and_stride(b.conv_dw)
        assert (kernels, dw_stride, b.out_channels) == ([k], stride, out), where
        assert b.conv_dw.in_channels == exp, where  # the depthwise conv runs at the expanded width
        if exp != cin:
            assert pw_groups(b.conv_pw, cin, exp) == 1 and isinstance(b.act2, act_cls), where
        assert isinstance(b.act1, act_cls), where
        if se:  # make_divisible(C_exp / 4), ReLU, hard-sigmoid
            assert b.se.conv_reduce.out_channels == make_divisible(exp / 4), where
            assert isinstance(b.se.act1, nn.ReLU) and isinstance(b.se.gate, nn.Hardsigmoid), where
        else:
            assert isinstance(b.se, nn.Identity), where
        assert b.use_skip == (stride == 1 and cin == out), where
        cin = out
    assert (last_conv.conv.kernel_size, last_conv.conv.out_channels) == ((1, 1), last)
    assert isinstance(last_conv.bn1, nn.BatchNorm2d) and isinstance(last_conv.act1, nn.Hardswish)
    # pool -> 1x1 conv with bias, no BN, h-swish -> dropout -> classifier
    assert (model.conv_head.in_channels, model.conv_head.out_channels) == (last, head)
    assert model.conv_head.bias is not None and isinstance(model.bn2, nn.Identity)
    assert isinstance(model.act2, nn.Hardswish) and model.classifier.in_features == head
    assert model.drop_rate == 0.2
