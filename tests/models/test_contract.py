"""The model contract, for every registered model, on small inputs.

ImageNet forms run at 64 px, the 32x32 ("cifar") forms at 16 px; each also at an odd size.
"""
import math

import pytest
import torch

import mobileconv

NAMES = mobileconv.list_models()


def is_cifar(name):
    return name.endswith("_cifar")


def sizes(name):
    """(regular size, odd (H, W), smallest accepted side, total stride of the four feature levels)."""
    if is_cifar(name):
        return 16, (13, 19), 8, (1, 2, 4, 8)
    return 64, (97, 113), 32, (4, 8, 16, 32)


@pytest.fixture(scope="module", params=NAMES)
def built(request):
    torch.manual_seed(0)
    return request.param, mobileconv.create_model(request.param, num_classes=7)


def test_forward_backward_reaches_every_parameter(built):
    name, model = built
    size = sizes(name)[0]
    model.train()
    model.zero_grad()
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.startswith("classifier"))


def test_contract_shapes(built):
    name, model = built
    size, odd, _, _ = sizes(name)
    model.eval()
    for h, w in ((size, size), odd):
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            feats = model.forward_features(x)
            pre = model.forward_head(feats, pre_logits=True)
            logits = model.forward_head(feats)
            full = model(x)
        assert feats.dim() == 4 and feats.shape[0] == 1
        assert pre.shape == (1, model.num_features)
        assert logits.shape == (1, model.num_classes) == (1, 7)
        torch.testing.assert_close(full, logits)
        # the classifier is a plain linear map of the pre-logits vector
        torch.testing.assert_close(logits, pre @ model.classifier.weight.T + model.classifier.bias)


def test_pretrained_cfg_and_attributes(built):
    name, model = built
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == ((3, 32, 32) if is_cifar(name) else (3, 224, 224))
    for key in ("paper_top1", "paper_macs", "paper_params"):
        assert key in cfg
    assert model.in_chans == 3 and model.num_classes == 7


def test_reset_classifier(built):
    name, model = built
    size = sizes(name)[0]
    head = model.classifier
    try:
        model.reset_classifier(3)
        assert model.eval()(torch.randn(1, 3, size, size)).shape == (1, 3)
        model.reset_classifier(0)
        assert model(torch.randn(1, 3, size, size)).shape == (1, model.num_features)
    finally:
        model.classifier, model.num_classes = head, 7


def test_bad_input_is_a_clear_error(built):
    name, model = built
    size, _, min_size, _ = sizes(name)
    with pytest.raises(ValueError, match=rf"{name} expects input of shape \(N, 3, H, W\) with H, W >= {min_size}"):
        model(torch.randn(1, 4, size, size))
    with pytest.raises(ValueError, match=rf"H, W >= {min_size}, got \(1, 3, {min_size - 1}, {size}\)"):
        model(torch.randn(1, 3, min_size - 1, size))
    with pytest.raises(ValueError, match="expects input of shape"):
        model(torch.randn(3, size, size))
    assert model.eval()(torch.randn(1, 3, min_size, min_size)).shape == (1, 7)


@pytest.mark.parametrize("name", NAMES)
def test_features_only_strides(name):
    size, odd, _, reductions = sizes(name)
    model = mobileconv.create_model(name, features_only=True, in_chans=1).eval()
    assert model.reductions == list(reductions)
    for h, w in ((size, size), odd):
        with torch.no_grad():
            feats = model(torch.randn(2, 1, h, w))
        assert len(feats) == 4
        for f, c, r in zip(feats, model.channels, reductions):
            assert f.shape == (2, c, math.ceil(h / r), math.ceil(w / r))
        # timm's keys: code written for timm reads feature_info[i]["num_chs"] / ["reduction"] / ["module"]
        for f, info in zip(feats, model.feature_info):
            assert info["num_chs"] == f.shape[1] and math.ceil(h / info["reduction"]) == f.shape[2]
            assert isinstance(model.get_submodule(info["module"]), torch.nn.Module)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        model(torch.randn(1, 3, size, size))



@pytest.mark.parametrize("name", NAMES)
def test_pretrained_cfg_names_the_stem_conv_and_the_head(name):
    """timm's first_conv / classifier keys: the conv the image goes into, and the Linear that makes the logits."""
    size = sizes(name)[0]
    model = mobileconv.create_model(name, in_chans=1, num_classes=7).eval()
    first = model.get_submodule(model.pretrained_cfg["first_conv"])
    head = model.get_submodule(model.pretrained_cfg["classifier"])
    seen = {}
    first.register_forward_pre_hook(lambda m, args: seen.setdefault("first", args[0]))
    head.register_forward_hook(lambda m, args, out: seen.setdefault("head", out))
    x = torch.randn(1, 1, size, size)
    with torch.no_grad():
        logits = model(x)
    assert seen["first"] is x and isinstance(first, torch.nn.Conv2d) and first.in_channels == 1
    assert isinstance(head, torch.nn.Linear) and torch.equal(seen["head"], logits)
    backbone = mobileconv.create_model(name, features_only=True)
    assert "classifier" not in backbone.pretrained_cfg
    assert isinstance(backbone.get_submodule(backbone.pretrained_cfg["first_conv"]), torch.nn.Conv2d)
