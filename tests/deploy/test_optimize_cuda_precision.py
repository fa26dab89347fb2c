"""optimize_for_inference verifies CUDA models in float32 proper: cuDNN's default TF32 rounding
(about 1e-3 of the output scale) is ten times the verification's tolerance."""
import pytest
import torch

from mobileconv.deploy.optimize import VERIFY_RTOL, ieee_float32


@pytest.fixture
def tf32_on():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def flags():
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


def test_tf32_is_off_inside_and_restored_after_on_cuda(tf32_on):
    with ieee_float32(torch.device("cuda")):
        assert flags() == (False, False)
    assert flags() == (True, True)
    with pytest.raises(KeyError), ieee_float32(torch.device("cuda", 0)):
        raise KeyError  # restored on the way out of an error too
    assert flags() == (True, True)


def test_cpu_leaves_the_flags_alone(tf32_on):
    with ieee_float32(torch.device("cpu")):
        assert flags() == (True, True)


def test_tf32_rounding_exceeds_the_tolerance():
    """Why: a 10-bit mantissa (TF32) rounds each input of a product by up to 2**-11 of its value."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 256, generator=g), torch.randn(256, 64, generator=g)

    def tf32(t):  # round to nearest with 10 mantissa bits
        bits = t.view(torch.int32)
        return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)

    exact = a.double() @ b.double()
    err = ((tf32(a).double() @ tf32(b).double()) - exact).abs().max() / exact.abs().max()
    assert err > VERIFY_RTOL
