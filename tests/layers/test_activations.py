"""Activations and make_divisible against the formulas of SPEC.md, written with plain torch ops."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mobileconv.layers import create_act, get_act, make_divisible


def _relu6(x):
    return torch.clamp(x, 0.0, 6.0)


def _sigmoid(x):
    return 1.0 / (1.0 + torch.exp(-x))


FORMULAS = {
    "relu": lambda x: torch.maximum(x, torch.zeros_like(x)),
    "relu6": _relu6,
    "swish": lambda x: x * _sigmoid(x),             # Ramachandran et al. 2017
    "hswish": lambda x: x * _relu6(x + 3.0) / 6.0,  # MobileNetV3, Eq. in Sec. 5.2
    "hsigmoid": lambda x: _relu6(x + 3.0) / 6.0,
    "sigmoid": _sigmoid,
}

# dense grid plus the kinks of relu / relu6 / h-swish / h-sigmoid
X = torch.cat([torch.linspace(-10, 10, 2001, dtype=torch.float64), torch.tensor([-3.0, 0.0, 3.0, 6.0]).double()])


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_activation_matches_formula(name):
    act = get_act(name)()
    torch.testing.assert_close(act(X), FORMULAS[name](X), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_create_act_inplace_matches_formula(name):
    x = X.clone()
    expected = FORMULAS[name](X)
    torch.testing.assert_close(create_act(name, inplace=True)(x), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("alias, name", [("HSwish", "hswish"), ("hard-swish", "hswish"), ("hard_sigmoid", "hsigmoid"),
                                         ("silu", "swish"), ("ReLU6", "relu6")])
def test_aliases(alias, name):
    torch.testing.assert_close(get_act(alias)()(X), FORMULAS[name](X), rtol=0, atol=1e-12)


def test_none_and_classes_pass_through():
    assert get_act(None) is None
    assert get_act(nn.GELU) is nn.GELU
    assert isinstance(create_act(None), nn.Identity)


def _spec_make_divisible(v: float) -> int:
    """SPEC.md: max(8, int(v + 4) // 8 * 8), plus 8 if that is below 0.9 * v."""
    r = max(8, int(v + 4) // 8 * 8)
    return r + 8 if r < 0.9 * v else r


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=0.5, max_value=5000, allow_nan=False))
def test_make_divisible_formula(v):
    r = make_divisible(v)
    assert r == _spec_make_divisible(v)
    assert r % 8 == 0 and r >= 8 and r >= 0.9 * v


@pytest.mark.parametrize("v, expected", [
    (72 / 4, 24),    # MobileNetV3-Large SE of the 72-wide block: torchvision / timm use 24
    (120 / 4, 32),   # ... 120-wide block: 32
    (16 * 0.75, 16),  # mobilenetv3_large_075 stem stays 16
    (24 * 1.3, 32),  # MixNet-L stem: MixNet-M's 24 x 1.3 becomes 32 (SPEC.md)
])
def test_make_divisible_reference_values(v, expected):
    assert make_divisible(v) == expected
