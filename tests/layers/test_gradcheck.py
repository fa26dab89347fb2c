"""torch.autograd.gradcheck (float64, finite differences) through MixConv2d and XSepConv2d, both impls,
with respect to the input and every weight.

Most cases use gradcheck's fast mode (it compares random projections u^T J v of the analytical and
numerical Jacobians, which catches a wrong gradient with probability 1); one case per operator runs
the full Jacobian comparison."""
import pytest
import torch
from torch.func import functional_call

from mobileconv.layers import IMPLS, MixConv2d, XSepConv2d


def _gradcheck(module, x, fast_mode=True):
    module = module.double()
    names = [n for n, _ in module.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in module.named_parameters())

    def f(inp, *ps):
        return functional_call(module, dict(zip(names, ps)), (inp,))

    x = x.double().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=fast_mode)


def _x(c, h, w):
    return torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kw", [
    dict(kernel_sizes=[3, 5], stride=1),
    dict(kernel_sizes=[1, 3, 5], stride=2, padding="tf"),
    dict(kernel_sizes=[3, 5, 7], stride=2, split="exponential"),
    dict(kernel_sizes=[3, 5], stride=1, dilated=True),
], ids=["equal", "tf_s2", "exponential_s2", "dilated"])
def test_mixconv_gradcheck(impl, kw):
    _gradcheck(MixConv2d(4, impl=impl, **kw), _x(4, 4, 5))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("padding, stride", [("symmetric", 1), ("right_bottom", 2)])
def test_xsepconv_gradcheck(impl, padding, stride):
    # swish keeps the function smooth for finite differences; BN in train mode (batch statistics)
    m = XSepConv2d(4, 3, stride, padding=padding, act_layer="swish", impl=impl).train()
    _gradcheck(m, _x(4, 3, 4))


@pytest.mark.parametrize("impl", IMPLS)
def test_mixconv_full_jacobian(impl):
    _gradcheck(MixConv2d(3, [1, 3, 5], 2, padding="tf", impl=impl), _x(3, 4, 5)[:1], fast_mode=False)


@pytest.mark.parametrize("impl", IMPLS)
def test_xsepconv_full_jacobian(impl):
    m = XSepConv2d(4, 3, 2, padding="symmetric", act_layer="swish", impl=impl).eval()  # BN as an affine map
    _gradcheck(m, _x(4, 3, 3)[:1], fast_mode=False)
