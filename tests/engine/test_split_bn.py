"""--split-bn: timm's split batch norm for AugMix. The oracle is batch normalisation written out per split (biased
variance for the output, unbiased for the running statistics, PyTorch's momentum); a trained run's weights files
are the plain model's, which `create_model` and `mobileconv eval` load."""
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from mobileconv import create_model
from mobileconv.cli import main
from mobileconv.engine import trainer
from mobileconv.engine.config import TrainConfig
from mobileconv.engine.distributed import DistEnv
from mobileconv.layers.split_batchnorm import SplitBatchNorm2d, convert_split_bn, without_aux_bn

from .helpers import MODEL, failed_train

QUICK = ["--model", MODEL, "--data", "synthetic", "--img-size", "16", "--max-train-samples", "32",
         "--max-val-samples", "16", "--batch-size", "16", "--quiet"]


def normalised_by_hand(x, weight, bias, eps):
    mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
    return (x - mean) / (var + eps).sqrt() * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def test_each_split_is_normalised_by_its_own_batch_norm_and_only_the_clean_one_is_evaluated():
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(4, momentum=0.25)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 2), plain.bias.uniform_(-1, 1)
        plain.running_mean.uniform_(-1, 1), plain.running_var.uniform_(0.5, 2)
    split = convert_split_bn(nn.Sequential(plain), 3)[0]
    assert isinstance(split, SplitBatchNorm2d) and len(split.aux_bn) == 2
    for bn in (split, *split.aux_bn):  # every batch norm starts from the plain one's weights and statistics
        for name, value in plain.state_dict().items():
            assert torch.equal(bn.state_dict()[name], value)
    before = plain.running_mean.clone(), plain.running_var.clone()
    x = torch.randn(3 * 5, 4, 6, 6) * torch.tensor([1.0, 2.0, 3.0]).repeat_interleave(5).view(-1, 1, 1, 1)
    out = split(x)
    for i, part in enumerate(x.split(5)):
        expected = normalised_by_hand(part, plain.weight, plain.bias, plain.eps)
        torch.testing.assert_close(out[5 * i:5 * (i + 1)], expected)
        bn = split if i == 0 else split.aux_bn[i - 1]
        torch.testing.assert_close(bn.running_mean, 0.75 * before[0] + 0.25 * part.mean((0, 2, 3)))
        torch.testing.assert_close(bn.running_var, 0.75 * before[1] + 0.25 * part.var((0, 2, 3), unbiased=True))
    split.eval()
    expected = (x - split.running_mean.view(1, -1, 1, 1)) / (split.running_var.view(1, -1, 1, 1) + split.eps).sqrt()
    torch.testing.assert_close(split(x), expected * split.weight.view(1, -1, 1, 1) + split.bias.view(1, -1, 1, 1))


def test_a_converted_model_evaluates_as_the_plain_one_and_saves_the_plain_ones_keys():
    model = create_model("mixnet_s", num_classes=7).eval()
    converted = convert_split_bn(create_model("mixnet_s", num_classes=7), 2).eval()
    converted.load_state_dict({**model.state_dict(), **{k: v for k, v in converted.state_dict().items()
                                                         if ".aux_bn." in k}})
    assert sum(isinstance(m, SplitBatchNorm2d) for m in converted.modules()) == sum(
        isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(converted(x), model(x))
    assert list(without_aux_bn(converted.state_dict())) == list(model.state_dict())


def test_a_batch_that_does_not_split_is_refused():
    with pytest.raises(ValueError, match="a batch of 5 images does not split into 2 equal splits"):
        SplitBatchNorm2d(3)(torch.zeros(5, 3, 2, 2))
    with pytest.raises(ValueError, match="num_splits must be >= 2"):
        SplitBatchNorm2d(3, num_splits=1)


def test_a_split_run_saves_plain_weights_that_eval_reads_and_resumes_with_its_own(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*QUICK, "--aug-splits", "3", "--split-bn", "--jsd-loss", "--aa", "augmix-m3-w3", "--ema"]
    assert main(["train", *args, "--epochs", "1", "--out", str(out)]) == 0
    weights = load_file(out / "last.safetensors")
    assert not any(".aux_bn." in k for k in weights)
    assert set(weights) == set(create_model(MODEL, num_classes=10).state_dict())
    state = torch.load(out / "state.pt", weights_only=True)
    assert any(".aux_bn." in k for k in state["model"])  # resuming needs the auxiliary batch norms
    for checkpoint in ("last.safetensors", "state.pt"):
        capsys.readouterr()
        assert main(["eval", "--checkpoint", str(out / checkpoint), "--format", "json"]) == 0
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0
    assert "no --split-bn" in failed_train(["--resume", str(out), "--epochs", "3", "--no-split-bn"], capsys)


def test_split_bn_without_splits_and_with_synchronised_batch_norm_are_refused(tmp_path, capsys):
    message = "--split-bn (set on the command line) gives the augmented splits of --aug-splits batch norms"
    assert message in failed_train([*QUICK, "--split-bn", "--out", str(tmp_path / "run")], capsys)
    info = type("Info", (), {"num_classes": 10})()
    config = TrainConfig(model=MODEL, aug_splits=2, split_bn=True, img_size=16)
    with pytest.raises(ValueError, match="--split-bn keeps batch norms per split.*add --no-sync-bn"):
        trainer.prepare_model(config, info, DistEnv(rank=0, world_size=2))
