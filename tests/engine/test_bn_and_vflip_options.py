"""--bn-momentum / --bn-eps (timm's) set every batch norm of the trained model; --vflip flips images upside down
with its probability."""
import pytest
import torch
from torch import nn

from mobileconv.data import BatchTransform
from mobileconv.engine import trainer
from mobileconv.engine.config import TrainConfig
from mobileconv.engine.distributed import DistEnv

from .helpers import TINY, failed_train


def norms(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_every_batch_norm_takes_the_options():
    info = type("Info", (), {"num_classes": 10})()
    config = TrainConfig(model="mixnet_s_cifar", img_size=32, bn_momentum=0.01, bn_eps=1e-3)
    model, _ = trainer.prepare_model(config, info, DistEnv())
    assert len(norms(model)) > 40
    assert {(m.momentum, m.eps) for m in norms(model)} == {(0.01, 1e-3)}
    plain, _ = trainer.prepare_model(TrainConfig(model="mixnet_s_cifar", img_size=32), info, DistEnv())
    assert {(m.momentum, m.eps) for m in norms(plain)} == {(0.1, 1e-5)}  # the model's own: PyTorch's defaults
    # the running mean moves by momentum x (batch mean - running mean): 0.01 of the way on a batch of ones
    bn = norms(model)[0]
    bn.train()(torch.ones(4, bn.num_features, 2, 2))
    torch.testing.assert_close(bn.running_mean, torch.full_like(bn.running_mean, 0.01))


@pytest.mark.parametrize("argv, message", [
    (["--bn-momentum", "0.99"], None),  # TF's decay, accepted: it is a valid PyTorch momentum, if a strange one
    (["--bn-momentum", "0"], "--bn-momentum must be in (0, 1]"),
    (["--bn-eps", "0"], "--bn-eps must be a finite number > 0"),
    (["--vflip", "2"], "--vflip must be a probability in [0, 1]"),
    (["--no-aug", "--vflip", "0.5"], "--vflip 0.5 (set on the command line) is an augmentation: leave it out with "
                                     "--no-aug"),
])
def test_bad_values_are_refused(argv, message, capsys, tmp_path):
    if message is None:
        from mobileconv.cli import build_parser
        from mobileconv.cli.train import train_config_from_args

        assert train_config_from_args(build_parser().parse_args(["train", *argv])).bn_momentum == 0.99
        return
    assert message in failed_train([*TINY, *argv, "--out", str(tmp_path / "run")], capsys)


def test_vflip_flips_upside_down_with_its_probability():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (400, 3, 4, 4), dtype=torch.uint8)
    out = BatchTransform(4, (0, 0, 0), (1, 1, 1), train=True, vflip=0.3)(images)
    plain, flipped = images.float() / 255, images.float().flip(-2) / 255
    same = (out == plain).flatten(1).all(1)
    upside_down = (out == flipped).flatten(1).all(1)
    assert bool((same | upside_down).all())
    assert abs(upside_down.float().mean().item() - 0.3) < 0.07
