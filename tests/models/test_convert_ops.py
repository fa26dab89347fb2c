"""mixify / xsepify on a registered model and on a hand-written one: counts by formula, function, training."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mobileconv
from mobileconv.layers import MixConv2d, XSepConv2d, xsep_padding_schedule
from mobileconv.models.convert_ops import ConvWithBias


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def depthwise_convs(model):
    """(name, channels, kernel, stride) of every plain depthwise nn.Conv2d, read with plain PyTorch attributes."""
    return [(n, m.in_channels, m.kernel_size[0], m.stride[0]) for n, m in model.named_modules()
            if type(m) is nn.Conv2d and m.groups == m.in_channels == m.out_channels and m.groups > 1]


def mix_weights(channels, kernel_sizes):
    """MixConv weights by the paper's rule: equal split, remainder to the first group, sum c_i * k_i^2."""
    g = len(kernel_sizes)
    splits = [channels // g] * g
    splits[0] += channels - sum(splits)
    return sum(c * k * k for c, k in zip(splits, kernel_sizes))


def xsep_params(channels, k, bns=3):
    """XSepConv per channel: 2x2 + 1xK + Kx1 weights (4 + 2K) and three BNs (2 parameters each), or two
    where the host's BN follows it."""
    return channels * (4 + 2 * k) + bns * 2 * channels


class TinyNet(nn.Module):
    """A user's own model: depthwise convs as plain nn.Conv2d (one with a bias), and a dense conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.dw5 = nn.Conv2d(12, 12, 5, padding=2, groups=12)  # bias=True (nn.Conv2d default)
        self.act = nn.ReLU()
        self.down = nn.Sequential(nn.Conv2d(12, 12, 3, stride=2, padding=1, groups=12, bias=False), nn.BatchNorm2d(12))
        self.dw7 = nn.Conv2d(12, 12, 7, padding=3, groups=12, bias=False)
        self.valid = nn.Conv2d(12, 12, 3, padding=0, groups=12, bias=False)  # not "same": left alone
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        x = self.dw7(self.down(self.act(self.dw5(self.stem(x)))))
        return self.head(self.valid(x).mean((2, 3)))


def test_mixify_mobilenetv2_counts_and_preserves_function():
    torch.manual_seed(0)
    model = mobileconv.create_model("mobilenetv2_100").eval()
    convs = depthwise_convs(model)
    assert len(convs) == 17 and all(k == 3 for _, _, k, _ in convs)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    expected = n_params(model) + sum(mix_weights(c, (3, 5, 7)) - c * k * k for _, c, k, _ in convs)
    assert mobileconv.mixify(model, (3, 5, 7)) is model
    assert n_params(model) == expected
    mixed = {n: m for n, m in model.named_modules() if isinstance(m, MixConv2d)}
    assert sorted(mixed) == sorted(n for n, *_ in convs)
    for n, c, _, s in convs:
        assert mixed[n].channels == c and mixed[n].stride == s
    # every new kernel (3, 5, 7) >= the original 3x3: the zero-padded copies compute the same function
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)
    model.train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_mixify_hand_written_model():
    torch.manual_seed(0)
    model = TinyNet()
    dw5 = model.dw5.weight.detach().clone()
    bias = model.dw5.bias.detach().clone()
    before = n_params(model)
    mobileconv.mixify(model, (3, 5, 7))
    assert isinstance(model.dw5, ConvWithBias) and isinstance(model.dw5.conv, MixConv2d)
    assert isinstance(model.down[0], MixConv2d) and model.down[0].stride == 2
    assert isinstance(model.dw7, MixConv2d)
    assert type(model.valid) is nn.Conv2d and type(model.stem) is nn.Conv2d
    assert n_params(model) == before + sum(mix_weights(12, (3, 5, 7)) - 12 * k * k for k in (5, 3, 7))
    # weights: centre crop (3 < 5), copy (5), zero padding (7 > 5) of the original channels
    g0, g1, g2 = model.dw5.conv
    torch.testing.assert_close(g0.weight, dw5[0:4, :, 1:4, 1:4])
    torch.testing.assert_close(g1.weight, dw5[4:8])
    torch.testing.assert_close(g2.weight[:, :, 1:6, 1:6], dw5[8:12])
    assert g2.weight[:, :, 0].abs().sum() == 0 and g2.weight[:, :, :, -1].abs().sum() == 0
    torch.testing.assert_close(model.dw5.bias, bias)
    out = model(torch.randn(2, 3, 20, 20))
    assert out.shape == (2, 4)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_mixify_a_bare_depthwise_conv_and_exact_equivalence():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6, bias=False)
    x = torch.randn(1, 6, 15, 15)
    mixed = mobileconv.mixify(conv, (3, 5))
    assert isinstance(mixed, MixConv2d)
    torch.testing.assert_close(mixed(x), conv(x))


def test_xsepify_mobilenetv2_counts_and_trains():
    model = mobileconv.create_model("mobilenetv2_100")
    convs = depthwise_convs(model)
    before = n_params(model)
    assert n_params(mobileconv.xsepify(model, min_kernel=5)) == before  # V2 has 3x3 kernels only
    replaced = [(n, c, k) for n, c, k, s in convs if s == 1]
    expected = before + sum(xsep_params(c, k, bns=2) - c * k * k for _, c, k in replaced)  # bn2 follows each
    mobileconv.xsepify(model, min_kernel=3)
    assert n_params(model) == expected
    xseps = [(n, m) for n, m in model.named_modules() if isinstance(m, XSepConv2d)]
    assert [n for n, _ in xseps] == [n for n, *_ in replaced]
    assert [m.padding for _, m in xseps] == xsep_padding_schedule(len(replaced))
    stride2 = [n for n, _, _, s in convs if s == 2]
    assert all(type(model.get_submodule(n)) is nn.Conv2d for n in stride2)
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_xsepify_hand_written_model():
    model = TinyNet()
    before = n_params(model)
    mobileconv.xsepify(model, min_kernel=5)
    # dw5 (stride 1, K=5, with bias) and dw7 (K=7) become XSep; the stride-2 3x3 and the "valid" conv stay
    assert isinstance(model.dw5, ConvWithBias) and isinstance(model.dw5.conv, XSepConv2d)
    assert isinstance(model.dw7, XSepConv2d) and type(model.down[0]) is nn.Conv2d
    assert [model.dw5.conv.padding, model.dw7.padding] == xsep_padding_schedule(2)
    assert n_params(model) == before + xsep_params(12, 5) - 12 * 25 + xsep_params(12, 7) - 12 * 49
    for bn in (model.dw7.bn1, model.dw7.bn2, model.dw7.bn3):  # inner BNs start as identity
        assert torch.equal(bn.weight, torch.ones(12)) and torch.equal(bn.bias, torch.zeros(12))
    out = model(torch.randn(2, 3, 20, 20))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_xsepify_mobilenetv3_small_equals_the_registered_xsep_model():
    converted = mobileconv.xsepify(mobileconv.create_model("mobilenetv3_small_100"))
    registered = mobileconv.create_model("xsep_mobilenetv3_small_100")
    assert n_params(converted) == n_params(registered)
    assert {k: v.shape for k, v in converted.state_dict().items()} == \
        {k: v.shape for k, v in registered.state_dict().items()}
    # the paper's rule: stride-1 depthwise convs with K >= 5 become XSep, the stride-2 ones stay depthwise
    plain = depthwise_convs(mobileconv.create_model("mobilenetv3_small_100"))
    xsep = {n: m for n, m in registered.named_modules() if isinstance(m, XSepConv2d)}
    assert sorted(xsep) == sorted(n for n, c, k, s in plain if s == 1 and k >= 5)
    assert len(xsep) == 6
    assert [m.padding for m in xsep.values()] == xsep_padding_schedule(6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="kernel_sizes"):
        mobileconv.mixify(TinyNet(), (3, 4))
    with pytest.raises(ValueError, match="min_kernel must be an integer >= 2"):
        mobileconv.xsepify(TinyNet(), min_kernel=0)


def frozen_float64_model():
    """Two depthwise convs in float64: one frozen (weight and bias), one trainable; 8 channels, K = 5."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 5, padding=2, groups=8), nn.ReLU(),
                          nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False)).double()
    with torch.no_grad():  # float64 values, not float32 ones cast up: rounding through float32 would show
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, dtype=torch.float64))
    model[0].requires_grad_(False)
    return model


def test_mixify_float64_is_exact_and_keeps_requires_grad():
    model = frozen_float64_model()
    weight, bias = model[0].weight.clone(), model[0].bias.clone()
    x = torch.randn(2, 8, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
    mobileconv.mixify(model, (5, 7))
    frozen, trainable = model[0], model[2]
    assert isinstance(frozen, ConvWithBias) and isinstance(trainable, MixConv2d)
    # copied, not rounded through float32: 5x5 bit for bit, 7x7 = the 5x5 with a zero border
    g5, g7 = frozen.conv
    assert g5.weight.dtype == g7.weight.dtype == frozen.bias.dtype == torch.float64
    assert torch.equal(g5.weight, weight[:4]) and torch.equal(g7.weight[..., 1:6, 1:6], weight[4:])
    assert torch.equal(frozen.bias, bias)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=1e-12)
    assert [p.requires_grad for p in frozen.parameters()] == [False, False, False]
    assert all(p.requires_grad for p in trainable.parameters())


def test_xsepify_float64_keeps_dtype_bias_and_requires_grad():
    model = frozen_float64_model()
    bias = model[0].bias.clone()
    mobileconv.xsepify(model)
    frozen, trainable = model[0], model[2]
    assert isinstance(frozen, ConvWithBias) and isinstance(frozen.conv, XSepConv2d)
    assert isinstance(trainable, XSepConv2d)
    assert {t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()} == {torch.float64}
    assert torch.equal(frozen.bias, bias)
    assert not any(p.requires_grad for p in frozen.parameters())
    assert all(p.requires_grad for p in trainable.parameters())
    model(torch.randn(2, 8, 16, 16, dtype=torch.float64)).sum().backward()
    assert all(p.grad is not None for p in trainable.parameters())


def test_xsepify_leaves_convs_with_fewer_than_4_channels_alone():
    # one conv gets the schedule's "symmetric" padding (four channel groups), so a 3-channel conv is
    # left alone, as mixify leaves a conv with fewer channels than kernel sizes
    small = nn.Sequential(nn.Conv2d(3, 3, 5, padding=2, groups=3))
    assert mobileconv.xsepify(small) is small and type(small[0]) is nn.Conv2d
    conv = nn.Conv2d(3, 3, 5, padding=2, groups=3)
    assert mobileconv.xsepify(conv) is conv
    model = nn.Sequential(nn.Conv2d(3, 3, 5, padding=2, groups=3), nn.Conv2d(3, 12, 1),
                          *[nn.Conv2d(12, 12, k, padding=k // 2, groups=12, bias=False) for k in (5, 7, 5)])
    mobileconv.xsepify(model)
    assert type(model[0]) is nn.Conv2d
    assert [model[i].padding for i in (2, 3, 4)] == xsep_padding_schedule(3)  # the last one "symmetric"
    assert model(torch.randn(1, 3, 9, 9)).shape == (1, 12, 9, 9)


def test_xsepify_bad_activation_is_an_error_even_when_nothing_qualifies():
    model = nn.Sequential(nn.Conv2d(3, 8, 1))  # no depthwise conv at all
    with pytest.raises(ValueError, match=r"act_layer must be one of .*got unknown activation 'bogus'"):
        mobileconv.xsepify(model, act_layer="bogus")


def test_padding_same_depthwise_convs_are_converted():
    # padding="same" with an odd kernel and stride 1 is symmetric (k - 1) // 2 padding
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding="same", groups=8, bias=False), nn.ReLU(),
                          nn.Conv2d(8, 8, 5, padding="same", groups=8)).double()
    reference = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.ReLU(),
                              nn.Conv2d(8, 8, 5, padding=2, groups=8)).double()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(2, 8, 11, 12, dtype=torch.float64)
    with torch.no_grad():
        before = reference(x)
    mobileconv.mixify(model, (5, 7))  # both kernels >= the originals: the function is kept
    assert isinstance(model[0], MixConv2d) and isinstance(model[2], ConvWithBias)
    assert isinstance(model[2].conv, MixConv2d)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=1e-12)

    model = nn.Sequential(nn.Conv2d(8, 8, 5, padding="same", groups=8, bias=False))
    mobileconv.xsepify(model)
    assert isinstance(model[0], XSepConv2d) and model[0].kernel_size == 5
    assert model(torch.randn(2, 8, 11, 12)).shape == (2, 8, 11, 12)


def test_bare_padding_same_depthwise_conv_is_converted():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, 3, padding="same", groups=6, bias=False)
    x = torch.randn(1, 6, 9, 10)
    mixed = mobileconv.mixify(conv, (3, 5))
    assert isinstance(mixed, MixConv2d)
    torch.testing.assert_close(mixed(x), F.conv2d(x, conv.weight, None, 1, 1, 1, 6))
    assert isinstance(mobileconv.xsepify(nn.Conv2d(6, 6, 5, padding="same", groups=6), min_kernel=5), ConvWithBias)


@pytest.mark.parametrize("conv", [
    nn.Conv2d(8, 8, 5, padding="same", dilation=2, groups=8),  # dilated: MixConv / XSepConv have no dilation
    nn.Conv2d(8, 8, 5, padding=2, groups=8, padding_mode="reflect"),  # not zero padding
    nn.Conv2d(8, 8, 5, padding="same", groups=8, padding_mode="circular"),
    nn.Conv2d(8, 8, 5, padding="valid", groups=8),
], ids=["same_dilated", "reflect", "same_circular", "valid"])
def test_convs_that_are_not_zero_same_padded_are_left_alone(conv):
    model = nn.Sequential(conv)
    assert mobileconv.mixify(model, (5, 7)) is model and model[0] is conv
    assert mobileconv.xsepify(model) is model and model[0] is conv
    assert mobileconv.mixify(conv, (5, 7)) is conv and mobileconv.xsepify(conv) is conv


def test_xsepify_leaves_the_last_bn_to_a_bn_that_already_follows():
    # two BNs in a row: in training the second normalises the first one's scale and shift away
    model = nn.Sequential(nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False), nn.ReLU())
    mobileconv.xsepify(model)
    assert isinstance(model[0].bn3, nn.Identity)  # model[1] is its last BN
    assert isinstance(model[3].bn3, nn.BatchNorm2d)  # nothing normalises its output otherwise
    forced = mobileconv.xsepify(nn.Sequential(nn.Conv2d(8, 8, 5, padding=2, groups=8), nn.BatchNorm2d(8)),
                                last_norm=True)
    assert isinstance(forced[0].conv.bn3, nn.BatchNorm2d)
    with pytest.raises(ValueError, match="last_norm must be True, False or None"):
        mobileconv.xsepify(nn.Sequential(), last_norm="auto")


def test_registered_xsep_model_trains_every_bn():
    # the defect: XSepConv's own last BN followed by the block's bn2 got gradients ~1e-9
    torch.manual_seed(0)
    model = mobileconv.create_model("xsep_mobilenetv3_small_100_cifar").train()
    model(torch.randn(8, 3, 32, 32)).square().mean().backward()
    for name, module in model.named_modules():
        if isinstance(module, XSepConv2d):
            bn = model.get_submodule(name.rpartition(".")[0]).bn2  # the block's BN after the XSepConv
            assert isinstance(module.bn3, nn.Identity)
            assert bn.weight.grad.abs().max() > 1e-6 and module.bn2.weight.grad.abs().max() > 1e-6


@pytest.mark.parametrize("convert", [mobileconv.mixify, mobileconv.xsepify])
@pytest.mark.parametrize("model", ["mixnet_s", None, {"conv": 1}])
def test_something_else_than_a_module_is_refused_by_name(convert, model):
    with pytest.raises(ValueError, match=f"model must be a torch.nn.Module, got {type(model).__name__}"):
        convert(model)
