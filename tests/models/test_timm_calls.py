"""The timm calls users bring with them: pretrained=False, get_classifier, reset_classifier(n, "avg"),
default_cfg, list_models over several patterns, NumPy integers; and what mixify's bias wrapper keeps."""
import numpy as np
import pytest
import torch
from torch import nn

import mobileconv
from mobileconv.layers import GroupedConv2d


def test_pretrained_false_builds_fresh_weights_as_none_does():
    torch.manual_seed(0)
    a = mobileconv.create_model("mobilenetv3_small_100", pretrained=False)
    torch.manual_seed(0)
    b = mobileconv.create_model("mobilenetv3_small_100")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="does not download weights"):
        mobileconv.create_model("mobilenetv3_small_100", pretrained=True)
    with pytest.raises(ValueError, match="use_ema=True needs a checkpoint"):
        mobileconv.create_model("mobilenetv3_small_100", pretrained=False, use_ema=True)


def test_classifier_methods_and_default_cfg():
    model = mobileconv.create_model("mixnet_s", num_classes=7).eval()
    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (1536, 7)
    model.reset_classifier(3, "avg")
    assert model.get_classifier().out_features == 3 and model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), nn.Identity) and model(torch.randn(1, 3, 32, 32)).shape == (1, 1536)
    with pytest.raises(ValueError, match="global_pool must be 'avg'"):
        model.reset_classifier(3, "max")
    assert model.default_cfg is model.pretrained_cfg and model.default_cfg["input_size"] == (3, 224, 224)
    scripted = torch.jit.script(model)  # the property is left out of the script
    torch.testing.assert_close(scripted(torch.ones(1, 3, 32, 32)), model(torch.ones(1, 3, 32, 32)))


def test_list_models_takes_several_patterns():
    both = mobileconv.list_models(["mixnet_s", "mobilenetv1_*"])
    assert both == sorted({"mixnet_s"} | set(mobileconv.list_models("mobilenetv1_*")))
    assert "mixnet_s" in both and len(both) > 2
    assert mobileconv.list_models(["mixnet_s", "mixnet_s"]) == ["mixnet_s"]
    with pytest.raises(ValueError, match="pattern must be a string or a list of strings"):
        mobileconv.list_models([3])


def test_numpy_integers_are_taken_as_nn_conv2d_takes_them():
    model = mobileconv.create_model("mobilenetv3_small_100", num_classes=np.int64(10), in_chans=np.int64(1)).eval()
    assert (model.num_classes, model.in_chans) == (10, 1) and type(model.num_classes) is int
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    model.reset_classifier(np.int32(4))
    assert model.get_classifier().out_features == 4
    converted = mobileconv.mixify(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)), np.int64(5))
    assert converted[0].kernel_sizes == [5]
    converted = mobileconv.mixify(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)), np.array([3, 5]))
    assert converted[0].kernel_sizes == [3, 5] and all(type(k) is int for k in converted[0].kernel_sizes)
    xsep = mobileconv.xsepify(nn.Sequential(nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False)), min_kernel=np.int64(5))
    assert type(xsep[0]).__name__ == "XSepConv2d"


@pytest.mark.parametrize("convert", [lambda m: mobileconv.mixify(m, (3, 5)), lambda m: mobileconv.xsepify(m)])
@pytest.mark.parametrize("train", [True, False])
def test_the_bias_wrapper_takes_the_replaced_convs_mode(convert, train):
    model = nn.Sequential(nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=True), nn.BatchNorm2d(8)).train(train)
    convert(model)
    assert type(model[0]).__name__ == "ConvWithBias"
    assert {m.training for m in model.modules()} == {train}


def test_grouped_conv_prints_its_stride_and_both_splits():
    assert "k=1,1 splits=9,9 stride=2" in repr(GroupedConv2d(18, 18, [1, 1], stride=2))
    assert "k=1,1 splits=4,3->3,2 stride=1" in repr(GroupedConv2d(7, 5, [1, 1]))
