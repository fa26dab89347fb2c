"""drop_rate / features_only given in a form create_model cannot use are refused with a ValueError naming them.

Before, ``drop_rate="a"`` failed in ``float()`` with "could not convert string to float" (no argument
named) and ``drop_rate="0.5"`` was accepted, unlike ``drop_path_rate`` and ``width_mult``.
"""
import re

import pytest
import torch

import mobileconv


@pytest.mark.parametrize("drop_rate", ["a", "0.5", True, [0.1]])
def test_non_numeric_drop_rate_is_named(drop_rate):
    with pytest.raises(ValueError, match=r"drop_rate must be in \[0, 1\), got " + re.escape(repr(drop_rate))):
        mobileconv.create_model("mobilenetv1_025", drop_rate=drop_rate)


def test_numeric_drop_rates_still_work():
    assert mobileconv.create_model("mobilenetv1_025", drop_rate=0).drop_rate == 0.0
    model = mobileconv.create_model("mobilenetv1_025", drop_rate=0.5).train()
    assert model.drop_rate == 0.5
    # oracle: inverted dropout at p = 0.5 (F.dropout with the same seed) before the linear classifier
    torch.manual_seed(0)
    feats = model.forward_head(model.forward_features(torch.randn(2, 3, 32, 32)), pre_logits=True)
    torch.manual_seed(1)
    expected = model.classifier(torch.nn.functional.dropout(feats, 0.5, True))
    torch.manual_seed(1)
    torch.testing.assert_close(model.forward_head(feats.reshape(2, -1, 1, 1)), expected)


@pytest.mark.parametrize("features_only", ["no", 0, None])
def test_features_only_must_be_a_bool(features_only):
    # before, "no" (truthy) silently returned a FeatureListNet and None a classifier
    with pytest.raises(ValueError, match=r"features_only must be True or False, got " + re.escape(repr(features_only))):
        mobileconv.create_model("mobilenetv1_025", features_only=features_only)
