"""Gradient checkpointing (timm's set_grad_checkpointing / --grad-checkpointing): the same gradients and drop-path
draws as the plain model, one running-statistics update per step, and far fewer tensors kept for the backward pass."""
import copy

import pytest
import torch

import mobileconv
from mobileconv.cli import main
from mobileconv.engine import checkpoint as ckpt

from ..engine.helpers import ONE_EPOCH


def pair(name="mixnet_s_cifar", **kwargs):
    torch.manual_seed(0)
    plain = mobileconv.create_model(name, num_classes=10, **kwargs).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing()
    return plain, checkpointed


@pytest.mark.parametrize("name", ["mixnet_s_cifar", "xsep_mobilenetv3_small_100_cifar"])
def test_the_same_gradients_and_one_running_stats_update(name):
    plain, checkpointed = pair(name, drop_path_rate=0.3)  # drop path: the recomputation must draw the same masks
    x = torch.randn(4, 3, 32, 32)
    for model in (plain, checkpointed):
        torch.manual_seed(1)
        model(x).logsumexp(1).sum().backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    for (name, b), c in zip(plain.named_buffers(), checkpointed.buffers()):  # running mean / var, batches tracked
        torch.testing.assert_close(c, b, rtol=0, atol=0, msg=name)


def test_under_torch_compile_too():
    # torch.compile takes no checkpoint context_fn: its backward graph recomputes values, the statistics are updated
    # in the forward graph (AOTAutograd's partitioner, which aot_eager runs without generating code)
    plain, checkpointed = pair("mobilenetv3_small_100_cifar")
    x = torch.randn(8, 3, 32, 32)
    for model in (plain, torch.compile(checkpointed, backend="aot_eager")):
        torch.manual_seed(1)  # the classifier's dropout
        model(x).logsumexp(1).sum().backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    for (name, b), c in zip(plain.named_buffers(), checkpointed.buffers()):
        torch.testing.assert_close(c, b, msg=name)


def saved_for_backward_mib(model, x):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t,
                                                  lambda t: t):
        model(x)
    return sum(saved) / 2 ** 20


def test_only_the_block_inputs_are_kept():
    plain, checkpointed = pair()
    x = torch.randn(8, 3, 32, 32)
    assert saved_for_backward_mib(checkpointed, x) < saved_for_backward_mib(plain, x) / 5


def test_without_grad_and_scripted_the_model_runs_as_before():
    plain, checkpointed = pair()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(checkpointed.eval()(x), plain.eval()(x))
    torch.testing.assert_close(torch.jit.script(checkpointed)(x), plain(x))


def test_a_run_with_grad_checkpointing_trains_as_one_without(tmp_path):
    runs = {flag: tmp_path / flag.strip("-") for flag in ("--grad-checkpointing", "--no-grad-checkpointing")}
    for flag, out in runs.items():
        assert main(["train", *ONE_EPOCH, "--drop-path", "0.2", flag, "--out", str(out)]) == 0
    a, b = (ckpt.load_state(out / ckpt.STATE_FILE)["model"] for out in runs.values())
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    assert "grad_checkpointing: true" in (runs["--grad-checkpointing"] / "config.yaml").read_text()
