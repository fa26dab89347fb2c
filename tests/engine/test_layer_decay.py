"""--layer-decay (timm's layer-wise learning-rate decay): the layers numbered as timm numbers them, each stepping at
the schedule's rate times D ** (layers after it)."""
import pytest
import torch

import mobileconv
from mobileconv.cli import main
from mobileconv.engine import checkpoint as ckpt
from mobileconv.engine.metrics import read_metrics_csv
from mobileconv.engine.optim import create_optimizer, create_scheduler, layer_ids

from .helpers import MODEL, ONE_EPOCH, failed_train, scheduled_lrs


def expected_layers(model) -> dict[str, int]:
    """The layers from the model's structure: the stem, each block of each stage, then the head conv when it has a
    BN (timm's EfficientNet head), then everything else."""
    layers = {f"{name}.{p}": 0 for name in ("conv_stem", "bn1") for p, _ in getattr(model, name).named_parameters()}
    blocks = [block for stage in model.blocks for block in stage]
    for k, (i, j) in enumerate((i, j) for i, stage in enumerate(model.blocks) for j in range(len(stage))):
        layers.update({f"blocks.{i}.{j}.{p}": 1 + k for p, _ in model.blocks[i][j].named_parameters()})
    head = len(blocks) + 1
    if isinstance(model.bn2, torch.nn.BatchNorm2d):
        layers.update({f"{name}.{p}": head for name in ("conv_head", "bn2")
                       for p, _ in getattr(model, name).named_parameters()})
        head += 1
    return {name: layers.get(name, head) for name, _ in model.named_parameters()}


@pytest.mark.parametrize("name, blocks, layers", [
    ("mixnet_s", 16, 19),  # MixNet-S's 1 + 2 + 4 + 3 + 3 + 3 blocks, its stem, head conv (with BN) and classifier
    ("mobilenetv3_large_100", 16, 18),  # 15 bottlenecks + the 1x1 conv to 960, the stem, the head and classifier
])
def test_the_layers_are_numbered_as_timm_numbers_them(name, blocks, layers):
    model = mobileconv.create_model(name)
    ids = layer_ids(model)
    assert sum(len(stage) for stage in model.blocks) == blocks
    assert max(ids.values()) + 1 == layers
    assert ids == expected_layers(model)
    assert ids["conv_stem.weight"] == 0 and ids["classifier.weight"] == layers - 1
    assert ids["conv_head.weight"] == layers - (2 if name.startswith("mixnet") else 1)


def test_each_layer_steps_at_its_scaled_rate():
    torch.manual_seed(0)
    model = mobileconv.create_model("mixnet_s_cifar", num_classes=10)
    optimizer = create_optimizer(model, "sgd", lr=0.1, weight_decay=0.0, momentum=0.0, layer_decay=0.5)
    model(torch.randn(2, 3, 32, 32)).logsumexp(1).sum().backward()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer.step()
    layers = expected_layers(model)
    last = max(layers.values())
    for name, p in model.named_parameters():
        rate = 0.1 * 0.5 ** (last - layers[name])
        torch.testing.assert_close(p.detach(), before[name] - rate * p.grad, rtol=0, atol=1e-7, msg=name)


def test_the_schedule_scales_every_layer_alike():
    model = mobileconv.create_model("mobilenetv3_small_100_cifar", num_classes=10)
    optimizer = create_optimizer(model, "sgd", lr=0.1, weight_decay=0.0, layer_decay=0.8)
    scheduler = create_scheduler(optimizer, 3, 4, 1.0, 0.1, 0.001)
    scales = [group["lr_scale"] for group in optimizer.param_groups]
    assert min(scales) == pytest.approx(0.8 ** (max(layer_ids(model).values()))) and max(scales) == 1.0
    expected, _ = scheduled_lrs(3, 4, 1.0, 0.1, 0.001)
    for lr in expected:
        assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([lr * s for s in scales])
        optimizer.step()
        scheduler.step()


def test_a_run_reports_the_schedules_rate_and_resumes_with_a_new_decay_only(tmp_path, capsys):
    plain, decayed = tmp_path / "plain", tmp_path / "decayed"
    assert main(["train", *ONE_EPOCH, "--min-lr", "0.01", "--out", str(plain)]) == 0
    assert main(["train", *ONE_EPOCH, "--min-lr", "0.01", "--layer-decay", "0.5", "--out", str(decayed)]) == 0
    lr = read_metrics_csv(decayed / "metrics.csv")[0]["lr"]
    assert lr > 0 and lr == read_metrics_csv(plain / "metrics.csv")[0]["lr"]
    last = max(expected_layers(mobileconv.create_model(MODEL)).values())
    groups = ckpt.load_state(decayed / ckpt.STATE_FILE)["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([lr * g["lr_scale"] for g in groups])
    assert sorted({g["lr_scale"] for g in groups}) == pytest.approx([0.5 ** k for k in range(last, -1, -1)])

    err = failed_train(["--resume", str(plain), "--epochs", "2", "--layer-decay", "0.5"], capsys)
    assert "the run trained with no --layer-decay, not --layer-decay 0.5" in err
    assert main(["train", "--resume", str(decayed), "--epochs", "2", "--layer-decay", "0.9"]) == 0
    groups = ckpt.load_state(decayed / ckpt.STATE_FILE)["optimizer"]["param_groups"]
    assert min(g["lr_scale"] for g in groups) == pytest.approx(0.9 ** last)
    lr = read_metrics_csv(decayed / "metrics.csv")[1]["lr"]
    assert lr > 0 and [g["lr"] for g in groups] == pytest.approx([lr * g["lr_scale"] for g in groups])


@pytest.mark.parametrize("value", ["0", "1.5", "-0.5"])
def test_a_decay_outside_0_1_is_refused(value, capsys):
    err = failed_train([*ONE_EPOCH, "--layer-decay", value], capsys)
    assert f"--layer-decay must be in (0, 1] (1: every layer at the same rate), got {float(value)!r}" in err
