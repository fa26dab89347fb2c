"""--head-init-scale / --head-init-bias (timm's): the classifier of a new run, scaled and its bias set, and left as it
was trained when a run is resumed."""
import math

import torch

from mobileconv.engine import trainer
from mobileconv.engine.config import TrainConfig
from mobileconv.engine.distributed import DistEnv

from .helpers import MODEL

INFO = type("Info", (), {"num_classes": 10})()


def classifier(**options):
    torch.manual_seed(0)
    model, _ = trainer.prepare_model(TrainConfig(model=MODEL, img_size=16, **options), INFO, DistEnv())
    return model.get_classifier()


def test_the_classifier_starts_scaled_and_with_the_given_bias():
    plain = classifier()
    scaled = classifier(head_init_scale=0.1)
    torch.testing.assert_close(scaled.weight, plain.weight * 0.1)
    torch.testing.assert_close(scaled.bias, plain.bias * 0.1)
    bias = -math.log(9)  # a sigmoid of 1/10 for each class, as one might start --bce-loss
    both = classifier(head_init_scale=0.5, head_init_bias=bias)
    torch.testing.assert_close(both.weight, plain.weight * 0.5)
    assert torch.equal(both.bias, torch.full_like(plain.bias, bias))


def test_a_resumed_run_keeps_its_trained_classifier():
    torch.manual_seed(0)
    trained, _ = trainer.prepare_model(TrainConfig(model=MODEL, img_size=16), INFO, DistEnv())
    with torch.no_grad():
        trained.get_classifier().bias.fill_(3.0)
    state = {"model": trained.state_dict()}
    config = TrainConfig(model=MODEL, img_size=16, head_init_scale=0.1, head_init_bias=-2.0)
    resumed, _ = trainer.prepare_model(config, INFO, DistEnv(), state, "state.pt")
    assert torch.equal(resumed.get_classifier().bias, torch.full((10,), 3.0))
    torch.testing.assert_close(resumed.get_classifier().weight, trained.get_classifier().weight)
