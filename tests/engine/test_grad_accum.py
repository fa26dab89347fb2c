"""--grad-accum-steps: a step's batch as micro-batches, one after another, gradients summed. The oracle is the
whole batch's gradient from plain autograd, applied by a hand-written SGD step."""
import copy

import pytest
import torch
from torch import nn

from mobileconv.data import BatchTransform
from mobileconv.engine.distributed import DistEnv
from mobileconv.engine.loop import StepSettings, train_one_epoch

from .helpers import TINY, failed_train, run_cli

LR = 0.5


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=g), torch.arange(16) % 5


def model():
    torch.manual_seed(1)  # no batch norm: the micro-batches' gradients add up to the whole batch's exactly
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def one_step(net, accum, criterion):
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    seen = []
    net.register_forward_pre_hook(lambda m, args: seen.append(len(args[0])))
    transform = BatchTransform(8, (0, 0, 0), (1, 1, 1))
    result = train_one_epoch(net, [batch()], optimizer, scheduler, criterion, transform, DistEnv(),
                             epoch=1, settings=StepSettings(grad_accum_steps=accum))
    return seen, result


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_micro_batches_take_the_whole_batchs_step(smoothing):
    criterion = nn.CrossEntropyLoss(label_smoothing=smoothing)
    expected = model()
    images, targets = batch()
    loss = criterion(expected(images.float() / 255), targets)
    grads = torch.autograd.grad(loss, list(expected.parameters()))
    with torch.no_grad():
        for p, g in zip(expected.parameters(), grads):
            p -= LR * g
    net = model()
    seen, result = one_step(net, 3, criterion)
    assert seen == [6, 5, 5]  # torch.tensor_split: the first micro-batch takes the remainder
    assert abs(result["loss"] - loss.item()) < 1e-6  # the step's loss is the whole batch's mean
    for got, want in zip(net.parameters(), expected.parameters()):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    whole = model()
    assert one_step(whole, 1, criterion)[0] == [16]
    for got, want in zip(whole.parameters(), expected.parameters()):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_more_micro_batches_than_images_is_refused(capsys):
    line = failed_train([*TINY, "--grad-accum-steps", "17"], capsys)
    assert line.rstrip().endswith("--grad-accum-steps 17 is more micro-batches than the 16 images of each step "
                         "(--batch-size 16): at most one micro-batch per image"), line
    assert "--grad-accum-steps must be >= 1" in failed_train([*TINY, "--grad-accum-steps", "0"], capsys)
    with pytest.raises(ValueError, match="grad_accum_steps must be an integer >= 1"):
        StepSettings(grad_accum_steps=0)


def test_a_run_with_micro_batches_records_them(tmp_path):
    out = tmp_path / "run"
    done = run_cli(["train", *TINY, "--epochs", "1", "--grad-accum-steps", "4", "--out", str(out)])
    assert done.returncode == 0, done.stderr
    assert "grad_accum_steps: 4" in (out / "config.yaml").read_text()


def _rank(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        net = nn.parallel.DistributedDataParallel(model())
        optimizer = torch.optim.SGD(net.parameters(), lr=LR)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        images, targets = batch()
        shard = [(images[rank * 8:(rank + 1) * 8], targets[rank * 8:(rank + 1) * 8])]  # as ShardedBatchSampler cuts
        env = DistEnv(rank=rank, world_size=2)
        train_one_epoch(net, shard, optimizer, scheduler, nn.CrossEntropyLoss(), BatchTransform(8, (0, 0, 0), (1, 1, 1)),
                        env, epoch=1, settings=StepSettings(grad_accum_steps=2))
        torch.save([p.detach() for p in net.module.parameters()], f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_processes_exchange_the_summed_gradient_once(tmp_path):
    """2 processes x 2 micro-batches of 4 images take the step of the whole batch of 16 (DistributedDataParallel
    averages the processes' gradients; each process's micro-batches sum to its own mean loss's gradient)."""
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(str(tmp_path / "store"), str(tmp_path / "params")), nprocs=2, join=True)
    expected = model()
    images, targets = batch()
    grads = torch.autograd.grad(nn.CrossEntropyLoss()(expected(images.float() / 255), targets),
                                list(expected.parameters()))
    for rank in range(2):
        got = torch.load(f"{tmp_path / 'params'}.{rank}", weights_only=True)
        for p, want, g in zip(got, expected.parameters(), grads):
            torch.testing.assert_close(p, want.detach() - LR * g, atol=1e-6, rtol=1e-5)
