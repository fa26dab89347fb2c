"""MixConv2d under torch.func transforms and forward-mode AD, both impls, training and inference.

The fast CPU training path (a custom autograd.Function, ``MixedDepthwiseConv``) has no ``jvp`` and no
``setup_context``, and the inference path caches the fused kernel by the weights' storage; neither may
leak into ``torch.func.grad`` / ``vmap`` / ``jvp`` / ``hessian``, ``torch.autograd.forward_ad`` or
model ensembling (``vmap`` over stacked weights). The oracle is a per-group ``F.conv2d`` with weights
copied out of the layer, differentiated by ordinary autograd.
"""
import copy

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call, grad, hessian, jvp, stack_module_state, vmap

from mobileconv.layers import IMPLS, MixConv2d

from .oracles import conv_same

CASES = {
    "equal_s1": dict(channels=7, kernel_sizes=[5, 3, 7]),
    "exponential_s2": dict(channels=8, kernel_sizes=[3, 5, 7], stride=2, split="exponential"),
    "tf_s2": dict(channels=6, kernel_sizes=[3, 5, 7], stride=2, padding="tf"),
}


def _layer(case, impl, dtype=torch.float32):
    torch.manual_seed(0)
    return MixConv2d(impl=impl, **CASES[case]).to(dtype).train()


def _oracle(layer, weights, x):
    """The mixed depthwise conv as per-group plain convs with the given ``(c_t, 1, k_t, k_t)`` weights."""
    splits = [w.shape[0] for w in weights]
    xs = torch.split(x, splits, 1)
    return torch.cat([conv_same(xi, w, layer.stride, groups=xi.shape[1], tf=layer.padding == "tf")
                      for xi, w in zip(xs, weights)], 1)


def _weights(layer):
    return [layer[i].weight.detach().clone() for i in range(len(layer))]


def _x(channels, n=3, h=9, w=8, dtype=torch.float32, seed=1):
    return torch.randn(n, channels, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("impl", IMPLS)
def test_func_grad_of_the_weights(case, impl):
    m = _layer(case, impl)
    x = _x(m.channels)
    params = {n: p.detach() for n, p in m.named_parameters()}
    got = grad(lambda p: functional_call(m, p, (x,)).square().sum())(params)
    ws = [w.requires_grad_(True) for w in _weights(m)]
    _oracle(m, ws, x).square().sum().backward()
    for i, w in enumerate(ws):
        torch.testing.assert_close(got[f"{i}.weight"], w.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("impl", IMPLS)
def test_per_sample_gradients_with_vmap_of_grad(case, impl):
    m = _layer(case, impl)
    x = _x(m.channels)
    params = {n: p.detach() for n, p in m.named_parameters()}

    def loss(p, xi):
        return functional_call(m, p, (xi[None],)).square().sum()

    got = vmap(grad(loss), in_dims=(None, 0))(params, x)
    for n in range(x.shape[0]):
        ws = [w.requires_grad_(True) for w in _weights(m)]
        _oracle(m, ws, x[n:n + 1]).square().sum().backward()
        for i, w in enumerate(ws):
            torch.testing.assert_close(got[f"{i}.weight"][n], w.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("api", ["torch.func.jvp", "forward_ad"])
def test_forward_mode_derivative_in_the_input(case, impl, api):
    """The conv is linear in ``x``: its directional derivative along ``t`` is the conv of ``t``."""
    m = _layer(case, impl)
    x, t = _x(m.channels), _x(m.channels, seed=2)
    if api == "torch.func.jvp":
        y, tangent = jvp(m, (x,), (t,))
    else:
        with fwAD.dual_level():
            y, tangent = fwAD.unpack_dual(m(fwAD.make_dual(x, t)))
    weights = _weights(m)
    torch.testing.assert_close(y, _oracle(m, weights, x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tangent, _oracle(m, weights, t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_forward_mode_derivative_in_the_weights(impl):
    m = _layer("tf_s2", impl)
    x = _x(m.channels)
    names = [n for n, _ in m.named_parameters()]
    primals = tuple(p.detach() for _, p in m.named_parameters())
    tangents = tuple(torch.randn_like(p) for p in primals)
    _, tangent = jvp(lambda *ps: functional_call(m, dict(zip(names, ps)), (x,)), primals, tangents)
    torch.testing.assert_close(tangent, _oracle(m, list(tangents), x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_func_hessian_of_the_weights(impl):
    m = _layer("equal_s1", impl, torch.float64)
    x = _x(m.channels, n=1, h=4, w=5, dtype=torch.float64)
    names = [n for n, _ in m.named_parameters()]
    primals = tuple(p.detach() for _, p in m.named_parameters())
    got = hessian(lambda *ps: functional_call(m, dict(zip(names, ps)), (x,)).square().sum(),
                  argnums=tuple(range(len(primals))))(*primals)
    expected = torch.autograd.functional.hessian(lambda *ws: _oracle(m, list(ws), x).square().sum(), primals)
    for i in range(len(primals)):
        for j in range(len(primals)):
            torch.testing.assert_close(got[i][j], expected[i][j], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("grad_enabled", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("impl", IMPLS)
def test_ensemble_with_vmap_over_stacked_weights(case, impl, grad_enabled):
    """``torch.func``'s model-ensembling recipe, in inference (where the fast path caches its kernel)."""
    models = [_layer(case, impl).eval() for _ in range(3)]
    for s, model in enumerate(models):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(s)))
    x = _x(models[0].channels)
    models[0](x)  # a cached kernel from an earlier plain call must not get in the way
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    with torch.set_grad_enabled(grad_enabled):
        got = vmap(lambda p, b: functional_call(base, (p, b), (x,)))(params, buffers)
    for s, model in enumerate(models):
        torch.testing.assert_close(got[s], _oracle(model, _weights(model), x), rtol=1e-5, atol=1e-5)
    # and plain calls still follow the layer's own weights afterwards
    with torch.no_grad():
        torch.testing.assert_close(models[1](x), _oracle(models[1], _weights(models[1]), x), rtol=1e-5, atol=1e-5)


def test_custom_function_only_outside_transforms(monkeypatch):
    """Plain CPU training keeps the per-group weight gradient (the custom Function runs); a forward-AD
    level or a torch.func transform falls back to plain autograd of the fused conv."""
    from mobileconv.layers import depthwise_grad

    calls = []
    original = depthwise_grad.MixedDepthwiseConv.apply
    monkeypatch.setattr(depthwise_grad.MixedDepthwiseConv, "apply", lambda *a: calls.append(1) or original(*a))
    m = _layer("equal_s1", "fast")
    x = _x(m.channels)
    m(x).sum().backward()
    assert calls == [1]
    with fwAD.dual_level():
        fwAD.unpack_dual(m(fwAD.make_dual(x, torch.ones_like(x))))
    grad(lambda xx: m(xx).sum())(x)
    assert calls == [1]
