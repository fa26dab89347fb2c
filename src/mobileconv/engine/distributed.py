"""Data-parallel training under ``torchrun``: process group, device, reductions and synchronised batch norm.

``torchrun --nproc_per_node N -m mobileconv train ...`` sets ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK``; :func:`init_distributed` then joins the group (NCCL on GPU, gloo on CPU).
Without those variables everything runs in one process and the helpers are no-ops.
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import torch
import torch.distributed as dist
from torch import nn

# whether this process joined a gloo process group (see exit_process)
_joined_gloo = False
# whether init_distributed created the process group (cleanup_distributed destroys only that one)
_created_group = False


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the run: ``rank`` of ``world_size``, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"the environment variable {name}={value!r} is not an integer (torchrun sets RANK, "
                         f"WORLD_SIZE and LOCAL_RANK)") from None


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the ``torchrun`` process group when ``WORLD_SIZE > 1``; pick this process's device.

    A process group the caller has already set up (``torch.multiprocessing`` with an ``init_method``, say) is
    used as it is: this process's rank and the number of processes are the group's, and
    :func:`cleanup_distributed` leaves it to its owner.
    """
    global _joined_gloo, _created_group
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = _env_int("LOCAL_RANK", torch.cuda.current_device() if torch.cuda.is_available() else 0)
        return DistEnv(rank, world_size, local_rank, resolve_device(device, local_rank))
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size or not 0 <= local_rank < world_size:
        # a process of rank >= WORLD_SIZE would wait for its group until the rendezvous times out (30 min), and
        # a single process of rank > 0 would train without writing anything
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, LOCAL_RANK={local_rank}, WORLD_SIZE="
                         f"{world_size} (0 <= RANK, LOCAL_RANK < WORLD_SIZE); start the processes with torchrun, or "
                         f"unset these variables for a single process")
    dev = resolve_device(device, local_rank)
    if world_size > 1:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        _joined_gloo, _created_group = dev.type != "cuda", True
    return DistEnv(rank, world_size, local_rank, dev)


def cleanup_distributed() -> None:
    """Leave the process group that :func:`init_distributed` joined (not one the caller set up)."""
    global _created_group
    if _created_group and dist.is_initialized():
        dist.destroy_process_group()
    _created_group = False


def exit_process(code: int) -> NoReturn:
    """End the program with exit status ``code``; a process that joined a gloo group skips Python's finalisation.

    PyTorch (2.13 here) keeps the process group of a ``DistributedDataParallel`` model alive after
    ``destroy_process_group``, and gloo's worker threads release a finished collective (and the
    Python tensors it holds) only after the caller has moved on. When that release comes while the
    interpreter is finalising, the thread cannot take the GIL and the process aborts (SIGABRT,
    "terminate called without an active exception") after training has finished: a few runs in
    a hundred on a loaded 2-core machine. Such a process flushes its output and ends with ``os._exit``;
    any other gets ``sys.exit``. ``python -m mobileconv`` ends this way; so should a script of your
    own that calls :func:`~mobileconv.engine.fit` under ``torchrun``.
    """
    if not _joined_gloo:
        sys.exit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        if stream is not None and not stream.closed:
            stream.flush()
    os._exit(code)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes (in place; returned for chaining); identity in a single process."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Process ``src``'s buffers (batch-norm running statistics) on every process; a no-op in one process.

    Without synchronised batch norm each process's running statistics follow its own shards, and
    DistributedDataParallel copies rank 0's into the others only at the next training forward: an
    evaluation right after an epoch would score a different model on each process, none of them the
    one rank 0 saves.
    """
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src)


def average_running_stats(module: nn.Module) -> None:
    """Every process's batch-norm running means and variances replaced by their average over the processes (timm's
    ``distribute_bn(reduce=True)``, its ``--dist-bn reduce``); a no-op in one process."""
    if dist.is_initialized():
        for name, buffer in module.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                dist.all_reduce(buffer)
                buffer.div_(dist.get_world_size())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


T = TypeVar("T")

# how gloo (CPU) reports that a peer process is gone
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer")


def lost_a_peer(error: BaseException) -> bool:
    """Whether ``error`` is a collective failing because another process of the job has exited."""
    return isinstance(error, RuntimeError) and any(text in str(error) for text in _PEER_GONE)


def on_main(env: DistEnv, fn: Callable[[], T], default: T) -> T:
    """``fn()`` on the main process, ``default`` on the others; a ``ValueError`` it raises is raised on every process.

    For what only the main process does, such as checking and writing the run folder. Collective: every
    process must call it. Without the shared error the other processes would go on to their next collective
    and die there with a gloo / NCCL error and a traceback while the main process reports the real one.
    """
    result, error = default, ""
    if env.is_main:
        try:
            result = fn()
        except ValueError as e:
            error = str(e) or type(e).__name__
    if env.distributed:
        error = broadcast_text(error, env.device)
    if error:
        raise ValueError(error)
    return result


def broadcast_text(text: str, device: torch.device) -> str:
    """Rank 0's ``text`` on every process (as UTF-8 bytes in a tensor: nothing is pickled)."""
    data = torch.tensor(list(text.encode()), dtype=torch.uint8, device=device)
    size = torch.tensor([len(data)], dtype=torch.long, device=device)
    dist.broadcast(size, 0)
    if not int(size):
        return ""
    if dist.get_rank() != 0:
        data = torch.empty(int(size), dtype=torch.uint8, device=device)
    dist.broadcast(data, 0)
    return bytes(data.cpu().tolist()).decode()


class _AllGather(torch.autograd.Function):
    """Every process's ``tensor``, stacked ``(world_size, ...)``; the gradient of a process's slice is summed
    over processes (each process's output feeds its own loss)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # autograd's buffer is not ours to overwrite
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


class DistributedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch, on any backend (gloo too).

    ``torch.nn.SyncBatchNorm`` runs on GPUs only; this gathers every process's count, mean and sum of
    squared deviations in one autograd-aware collective and combines them into the global mean and
    biased variance, so the forward and backward passes equal those of one process holding the whole
    batch (Ioffe & Szegedy 2015, Alg. 1 over the union of shards), with one collective per layer in
    each direction (the two-pass form took five).
    Running statistics use the unbiased variance, as ``nn.BatchNorm2d`` does.

    The statistics are computed in float32 whatever the input's dtype, as PyTorch's own batch norm does:
    under ``--amp`` (bfloat16 autocast on CPU) a bfloat16 sum / count / variance would lose most of its
    digits, and float32 running statistics cannot be updated from bfloat16 ones. The output has the
    input's dtype, as ``nn.BatchNorm2d``'s does.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        if x.dtype in (torch.float16, torch.bfloat16):
            with torch.autocast(x.device.type, enabled=False):
                return self._global_batch_norm(x.float()).to(x.dtype)
        return self._global_batch_norm(x)

    def _global_batch_norm(self, x: torch.Tensor) -> torch.Tensor:
        # each process's count, mean and sum of squared deviations, gathered in one collective and combined
        # as parallel Welford (Chan et al. 1979): as stable as the two-pass variance, one collective each way
        n = x.numel() // x.shape[1]
        local_mean = x.sum(dim=(0, 2, 3)) / max(n, 1)
        local_m2 = (x - local_mean.view(1, -1, 1, 1)).square().sum(dim=(0, 2, 3))
        stats = _AllGather.apply(torch.cat([local_mean, local_m2, x.new_tensor([n])]))  # (processes, 2C + 1)
        c = x.shape[1]
        counts = stats[:, -1:]
        count = counts.sum()
        mean = (counts * stats[:, :c]).sum(0) / count
        var = (stats[:, c:2 * c] + counts * (stats[:, :c] - mean).square()).sum(0) / count
        centred = x - mean.view(1, -1, 1, 1)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (count / (count - 1).clamp(min=1))
                # float32 statistics into the buffers' dtype (a bfloat16 / float16 model keeps low-precision buffers)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), momentum)
        y = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm2d by a synchronised one: ``nn.SyncBatchNorm`` on GPU, else the module above."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            like = child.weight if child.affine else child.running_mean  # the dtype / device to keep (None: neither)
            sync = DistributedBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                          child.track_running_stats, device=getattr(like, "device", None),
                                          dtype=getattr(like, "dtype", None))
            sync.load_state_dict(child.state_dict())
            sync.train(child.training)
            setattr(model, name, sync)
        else:
            convert_sync_batchnorm(child, device)
    return model
