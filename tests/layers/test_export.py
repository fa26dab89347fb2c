"""Every operator, both impls: torch.jit.script and ONNX (opset 17) + onnxruntime match eager PyTorch."""
import pytest
import torch

from mobileconv.layers import (ConvNormAct, DepthwiseSeparableConv2d, GroupedConv2d, MixConv2d,
                               SpatialSeparableConv2d, SqueezeExcite, XSepConv2d)

from .oracles import onnx_roundtrip, randomize_bn

# torch.jit.script and the TorchScript-based ONNX exporter are deprecated in torch >= 2.9, still supported
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# name -> (factory taking impl, input channels); inputs are odd-sized so stride 2 / TF SAME paths are exercised
OPERATORS = {
    "conv_norm_act": (lambda impl: ConvNormAct(4, 8, 3, 2, act_layer="hswish"), 4),
    "conv_norm_act_tf": (lambda impl: ConvNormAct(4, 8, 3, 2, norm_layer=None, padding="tf"), 4),
    "grouped_even": (lambda impl: GroupedConv2d(8, 12, [1, 1], impl=impl), 8),
    "grouped_uneven": (lambda impl: GroupedConv2d(7, 5, [3, 5], 2, impl=impl), 7),
    "depthwise_separable": (lambda impl: DepthwiseSeparableConv2d(4, 8, 3, 2), 4),
    "spatial_separable": (lambda impl: SpatialSeparableConv2d(4, 6, 5, 2), 4),
    "mixconv": (lambda impl: MixConv2d(10, [3, 5, 7], 2, impl=impl), 10),
    "mixconv_tf": (lambda impl: MixConv2d(9, [3, 5, 7], 2, padding="tf", impl=impl), 9),
    "mixconv_dilated_exp": (lambda impl: MixConv2d(8, [3, 5, 7], split="exponential", dilated=True, impl=impl), 8),
    "xsepconv_symmetric": (lambda impl: XSepConv2d(8, 5, impl=impl), 8),
    "xsepconv_left_top_s2": (lambda impl: XSepConv2d(8, 5, 2, padding="left_top", act_layer="hswish", impl=impl), 8),
    "squeeze_excite": (lambda impl: SqueezeExcite(8, 2, "swish", "sigmoid"), 8),
}
IMPL_OPERATORS = {"grouped_even", "grouped_uneven", "mixconv", "mixconv_tf", "mixconv_dilated_exp",
                  "xsepconv_symmetric", "xsepconv_left_top_s2"}
CASES = [(name, impl) for name in sorted(OPERATORS) for impl in (("fast", "reference") if name in IMPL_OPERATORS
                                                                   else ("fast",))]


def _module_and_input(name, impl):
    factory, channels = OPERATORS[name]
    torch.manual_seed(0)
    m = factory(impl)
    randomize_bn(m)
    return m.eval(), torch.randn(1, channels, 11, 10)


@pytest.mark.parametrize("name, impl", CASES)
def test_torchscript(name, impl):
    m, x = _module_and_input(name, impl)
    scripted = torch.jit.script(m)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), m(x), rtol=1e-5, atol=1e-5)
        # the scripted module is not specialised to the example size
        x2 = torch.randn(2, x.shape[1], 7, 8)
        torch.testing.assert_close(scripted(x2), m(x2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, impl", CASES)
def test_onnx_matches_pytorch(name, impl):
    m, x = _module_and_input(name, impl)
    with torch.no_grad():
        expected = m(x)
    torch.testing.assert_close(onnx_roundtrip(m, x), expected, rtol=1e-5, atol=1e-5)

