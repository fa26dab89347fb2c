"""The python examples of README.md's `layers` section run, so the docs cannot drift from the code."""
import re
from pathlib import Path

import pytest

import mobileconv.layers

README = Path(__file__).resolve().parents[2] / "README.md"


def _section(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- section:{name} -->(.*?)<!-- /section:{name} -->", text, re.S)
    assert match, f"README.md has no section {name!r}"
    return match.group(1)


SECTION = _section("layers")
BLOCKS = re.findall(r"```python\n(.*?)```", SECTION, re.S)


def test_every_operator_is_documented_with_an_example():
    code = "\n".join(BLOCKS)
    for name in ["get_act", "make_divisible", "ConvNormAct", "GroupedConv2d", "DepthwiseSeparableConv2d",
                 "SpatialSeparableConv2d", "MixConv2d", "XSepConv2d", "xsep_padding_schedule", "SqueezeExcite",
                 "set_layer_impl", "create_conv2d"]:
        assert name in mobileconv.layers.__all__, name
        assert re.search(rf"\b{name}\(", code), f"no README example calls {name}"
    assert 'impl="fast"' in SECTION and 'impl="reference"' in SECTION


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    exec(compile(BLOCKS[index], f"README.md[layers][{index}]", "exec"), {"__name__": "__readme__"})
