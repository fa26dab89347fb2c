"""``fit``: a whole training run from a :class:`TrainConfig`, with checkpoints, resume and a run folder.

Run folder (written by rank 0 only):

| file | content |
| --- | --- |
| ``config.yaml`` | the resolved configuration (every option, defaults filled in) |
| ``metrics.csv`` | one row per epoch: epoch, loss, top1, top5, lr, img/s, seconds, test_loss |
| ``curves.png`` | loss and accuracy against the epoch |
| ``last.safetensors`` / ``best.safetensors`` | model weights (EMA weights with ``--ema``) |
| ``checkpoint-EPOCH.safetensors`` | with ``--checkpoint-hist N``: the weights after each of the N best epochs |
| ``state.pt`` | trainer state for ``--resume``, with the classes, mean and std (``eval`` / ``predict`` read them) |
| ``summary.json`` | model, dataset, classes, final top-1 / top-5 on the test split, train seconds... |

The data order of epoch ``e`` depends on ``(seed, e)`` only and the augmentation generator is
reseeded from ``(seed, e, rank)`` at the start of each epoch, so a run resumed from the checkpoint
of epoch ``e`` replays epochs ``e+1...`` exactly as the uninterrupted run does.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data import (BatchTransform, DataInfo, ImageFolderDataset, MixupCutmix, RandomResizedCrop,
                    ShardedBatchSampler, build_datasets, limit_samples, preferred_img_size)
from ..data.datasets import show_names
from ..deploy.export import memory_errors_as_value_errors
from ..deploy.weights import FORMAT, bn_eps_of, checkpoint_num_classes, load_state_dict, read_checkpoint
from ..layers.split_batchnorm import convert_split_bn, without_aux_bn
from . import checkpoint as ckpt
from .config import TrainConfig, dump_yaml, lr_base_scale, lr_from_base
from .distributed import (DistEnv, average_running_stats, barrier, broadcast_buffers, broadcast_text,
                          cleanup_distributed, convert_sync_batchnorm, init_distributed, lost_a_peer, on_main)
from .ema import ModelEma
from .loop import NonFiniteLossError, StepSettings, autocast_dtype, evaluate, train_one_epoch
from .losses import BinaryCrossEntropy, JsdCrossEntropy
from .malloc import keep_large_allocations_on_heap
from .metrics import RECORDED_METRICS, best_epochs, metric_of, plot_curves, ranks_above, write_metrics_csv
from .optim import (DEFAULT_BETAS, DEFAULT_DECAY_EPOCHS, DEFAULT_DECAY_MILESTONES, DEFAULT_DECAY_RATE, DEFAULT_EPS,
                    DEFAULT_LR, DEFAULT_MOMENTUM, DEFAULT_PATIENCE_EPOCHS, DEFAULT_WEIGHT_DECAY, create_optimizer,
                    create_scheduler, refresh_lr)

RUN_FILES = ("config.yaml", "metrics.csv", "curves.png", ckpt.LAST_FILE, ckpt.BEST_FILE, ckpt.STATE_FILE,
             "summary.json")
KILL_AFTER_EPOCH_ENV = "MOBILECONV_KILL_AFTER_EPOCH"  # tests: SIGKILL the run after this epoch's checkpoint


# ---- models ------------------------------------------------------------------------------------

def check_model_name(name: str) -> None:
    from .. import models
    from ..profile.zoo import model_name_hint

    if name not in models.list_models():
        raise ValueError(f"--model {name!r} is not a known model ({model_name_hint(name)})")


def build_model(name: str, num_classes: int, drop: float | None = None, drop_path: float = 0.0) -> nn.Module:
    """A zoo model by name; ``ValueError`` for an unknown name."""
    from .. import models

    check_model_name(name)
    kwargs = {"drop_rate": drop} if drop is not None else {}
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    return models.create_model(name, num_classes=num_classes, **kwargs)


def default_img_size(name: str) -> int:
    """The model's default input side (``pretrained_cfg["input_size"]``: 32 for the ``_cifar`` forms)."""
    return int(build_model(name, num_classes=10).pretrained_cfg["input_size"][-1])


# ---- memory ------------------------------------------------------------------------------------

def images_memory_text(batch_size: int, img_size: int) -> tuple[str, str]:
    """What did not fit and what to change, for :func:`memory_errors_as_value_errors`."""
    if batch_size == 1:
        return f"an image of {img_size}x{img_size} px", "use a smaller --img-size"
    return f"batches of {batch_size} images of {img_size}x{img_size} px", "use a smaller --batch-size or --img-size"


def check_images_fit(batch_size: int, img_size: int, device: torch.device | str) -> None:
    """Refuse up front (the ``ValueError`` of :func:`memory_errors_as_value_errors`) a batch of float32 images
    that ``device`` cannot allocate, before any image is decoded or made.

    Without it ``eval`` / ``train --img-size 100000`` ended in a traceback from the first tensor of that size and
    ``predict --img-size 100000`` was killed by the OOM killer while PIL resized the image. The batch is allocated
    and freed (:func:`~mobileconv.profile.zoo.probe_allocation`: no page is written, it costs no memory), so
    what this refuses is what the machine (RAM + swap) or the GPU cannot hold at all; a size that fits only
    just can still run out of memory later, with the same one-line error where torch's allocator says so.
    """
    from ..profile.zoo import probe_allocation

    with memory_errors_as_value_errors(*images_memory_text(batch_size, img_size)):
        probe_allocation(batch_size * 3 * img_size * img_size * 4, device)


@contextlib.contextmanager
def images_fit(batch_size: int, img_size: int, device: torch.device | str) -> Iterator[None]:
    """:func:`check_images_fit` up front, then a failed allocation inside the block as the same one-line error."""
    check_images_fit(batch_size, img_size, device)
    with memory_errors_as_value_errors(*images_memory_text(batch_size, img_size)):
        yield


# ---- configuration ------------------------------------------------------------------------------

DEFAULT_EMA_DECAY = 0.999
DEFAULT_LR_NOISE_PCT = 0.67  # timm's --lr-noise-pct
SMALL_INPUT_PX = 64  # up to this size one CPU thread per process beats several (tiny tensors per op)


def resolve_config(config: TrainConfig, info: DataInfo, img_size: int) -> TrainConfig:
    """Fill the options left to the model / dataset / optimizer defaults."""
    pick = lambda value, default: default if value is None else value  # noqa: E731
    threads = 1 if img_size <= SMALL_INPUT_PX else torch.get_num_threads()
    lr = pick(config.lr, lr_from_base(config) if config.lr_base is not None else DEFAULT_LR[config.opt])
    if config.min_lr > lr:  # the cosine would rise from lr to min_lr
        source = "" if config.lr is not None else " (from --lr-base)" if config.lr_base is not None else \
            f" (the {config.opt} default)"
        raise ValueError(f"--min-lr {config.min_lr:g} is above the peak learning rate --lr {lr:g}{source}; "
                         f"--min-lr must be <= --lr")
    # timm turns colour jitter off under RandAugment, which has colour ops of its own; an explicit value still applies
    color_jitter = pick(config.color_jitter, 0.0 if config.aa else info.color_jitter)
    if config.color_jitter_prob is not None and color_jitter == 0 and config.aug:
        raise ValueError(f"--color-jitter-prob {config.color_jitter_prob} is how often the colour jitter applies, and "
                         f"it is off here (--color-jitter defaults to 0 for digits and synthetic data and with --aa): "
                         f"give --color-jitter S, or leave --color-jitter-prob out")
    # data=info.name: a folder as an absolute path, so that the run can be resumed from any working directory
    return replace(
        config, data=info.name, img_size=img_size, threads=pick(config.threads, threads), lr=lr,
        weight_decay=pick(config.weight_decay, DEFAULT_WEIGHT_DECAY[config.opt]),
        momentum=pick(config.momentum, DEFAULT_MOMENTUM[config.opt]),
        opt_eps=pick(config.opt_eps, DEFAULT_EPS[config.opt]),
        opt_betas=pick(config.opt_betas, DEFAULT_BETAS[config.opt]),
        lr_base_scale=lr_base_scale(config) if config.lr_base is not None else None,
        decay_epochs=pick(config.decay_epochs, DEFAULT_DECAY_EPOCHS.get(config.sched)),
        decay_rate=pick(config.decay_rate, DEFAULT_DECAY_RATE.get(config.sched)),
        decay_milestones=pick(config.decay_milestones, DEFAULT_DECAY_MILESTONES.get(config.sched)),
        patience_epochs=pick(config.patience_epochs, DEFAULT_PATIENCE_EPOCHS.get(config.sched)),
        hflip=pick(config.hflip, info.hflip), scale=pick(config.scale, info.scale),
        ema_decay=pick(config.ema_decay, DEFAULT_EMA_DECAY) if config.ema else None,
        lr_noise_pct=pick(config.lr_noise_pct, DEFAULT_LR_NOISE_PCT) if config.lr_noise else None,
        train_interpolation=pick(config.train_interpolation, "random"), color_jitter=color_jitter)


def check_out_dir(out: Path, *, resuming_here: bool, overwrite: bool) -> list[str]:
    """The previous run's files that the new run's first checkpoint replaces; refuse to clobber a run unless told to.

    Changes nothing: the folder is only touched once the whole setup has succeeded.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    previous = [name for name in RUN_FILES if (out / name).exists()]
    previous += sorted(path.name for path in ckpt.epoch_files(out).values())
    if not previous or resuming_here:
        return []
    if not overwrite:
        raise ValueError(f"--out {out} already holds a run ({', '.join(previous)}); continue it with "
                         f"--resume {out}, replace it with --overwrite, or choose another --out")
    return previous


def prepare_out_dir(out: Path) -> None:
    """Create the run folder and check it is writable."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.probe_writable(out)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write there ({e.strerror or e})") from None


def start_saving(run: "Run") -> None:
    """Once, at the first save: delete the previous run's files (``--overwrite``) and write this run's config.yaml.

    A run's files, ``config.yaml`` included, thus appear at its first checkpoint: a run that fails
    before it (an undecodable image, a NaN loss in the first epoch, a kill) leaves its folder as it
    found it, so the same command can simply be run again.
    """
    state_first = sorted(run.replaces, key=lambda name: name != ckpt.STATE_FILE)  # no longer resumable first
    for name in state_first:
        (run.out / name).unlink(missing_ok=True)
    run.replaces = []
    ckpt.atomic_write_text(run.out / "config.yaml", dump_yaml(run.config))
    if run.resumed_from is not None:
        carry_best_weights(run)
    run.saved_config = True


def carry_best_weights(run: "Run") -> None:
    """Copy the best weights of the run resumed from another folder, as long as no later epoch beats them:
    otherwise the new folder has no best.safetensors while its summary.json names a best epoch."""
    source = run.resumed_from / ckpt.BEST_FILE
    try:
        _, meta = ckpt.load_weights(source)
    except ValueError:  # missing or unreadable: nothing to carry
        return
    if meta.get("epoch") == run.best_epoch:  # not a best of an epoch redone after a kill
        ckpt.atomic_write_bytes(run.out / ckpt.BEST_FILE, source.read_bytes())


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The augmentation seed of one epoch on one process."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    return autocast_dtype(config.amp_dtype if config.amp else None, device)


# ---- the run ------------------------------------------------------------------------------------

@dataclass
class Run:
    """Everything a training run holds between epochs."""

    config: TrainConfig
    env: DistEnv
    info: DataInfo
    out: Path
    model: nn.Module  # the plain model (evaluated, saved)
    train_model: nn.Module  # the model the steps go through (DDP / compiled wrapper of ``model``)
    ema: ModelEma | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    train_loader: DataLoader
    test_loader: DataLoader
    train_transform: nn.Module
    test_transform: nn.Module
    mixer: MixupCutmix
    criterion: nn.Module
    settings: StepSettings
    start_epoch: int = 0
    history: list = field(default_factory=list)
    best_top1: float = -1.0
    best_epoch: int = 0
    train_seconds: float = 0.0
    replaces: list[str] = field(default_factory=list)  # a previous run's files, deleted at the first save
    saved_config: bool = False  # config.yaml is written at the first save
    resumed_from: Path | None = None  # the run folder resumed from, when it is not ``out``

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model


def fit(config: TrainConfig, resume: str | Path | None = None) -> dict:
    """Train, evaluating on the test split after every epoch; returns the summary (also in summary.json).

    Under ``torchrun`` on CPUs, end the program with :func:`~mobileconv.engine.exit_process` (see there).

    Raises:
        ValueError: bad options, data or resume state, before any training step and before anything in the
            run folder changes; a batch or image size too large for the memory (checked up front where the
            machine or GPU cannot hold one batch of images at all, else where an allocation fails).
        NonFiniteLossError: the loss became NaN / inf; the last checkpoint (previous epoch) is kept.
    """
    env = init_distributed(config.device)
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        run = setup_run(config.validate(), env, Path(resume) if resume else None)
        with memory_errors_as_value_errors(*images_memory_text(process_batch_size(run.config, env),
                                                               run.config.img_size)):
            summary = train_epochs(run)
        # gloo aborts a process that leaves the group while a peer is still connected (rank 0 is
        # still writing its files): everyone leaves together
        barrier()
        return summary
    except RuntimeError as e:
        if not (env.distributed and lost_a_peer(e)):
            raise
        # the process that failed has reported why; the others say so in one line, not a gloo traceback
        raise ValueError(f"process {env.rank} of {env.world_size} stopped: another process of this job exited "
                         f"(its error is reported above)") from None
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        cleanup_distributed()


def setup_run(config: TrainConfig, env: DistEnv, resume: Path | None) -> Run:
    """Check the inputs, build data, model, optimizer and schedule, and load ``resume``'s state.

    The run folder is written to (created, config.yaml written) only once all of that has succeeded: a
    failed start changes nothing there. A previous run (``--overwrite``) is replaced by the first checkpoint.
    Checks of the folder run on the main process; their errors are raised on every process.
    """
    check_model_name(config.model)
    if config.grad_accum_steps > process_batch_size(config, env):
        raise ValueError(f"--grad-accum-steps {config.grad_accum_steps} is more micro-batches than the "
                         f"{process_batch_size(config, env)} images of each step{' per process' * env.distributed} "
                         f"(--batch-size {config.batch_size}): at most one micro-batch per image")
    out = Path(config.out or resume or default_out_dir(env))
    state_path = resume / ckpt.STATE_FILE if resume else None
    state = read_state(state_path) if state_path else None
    img_size = config.img_size or preferred_img_size(config.data) or default_img_size(config.model)
    with images_fit(process_batch_size(config, env), img_size, env.device):  # before any image is made
        train_set, test_set, info = build_datasets(config.data, img_size)
    config = resolve_config(replace(config, out=str(out)), info, img_size)
    resuming_here = resume is not None and out.resolve() == resume.resolve()
    previous = on_main(env, lambda: check_out_dir(out, resuming_here=resuming_here, overwrite=config.overwrite), [])
    train_set = limit_samples(train_set, config.max_train_samples)
    test_set = limit_samples(test_set, config.max_val_samples)
    cropped = crops_whole_images(config, train_set)
    if cropped:  # cut from the whole decoded image, not from the batch
        train_set = train_set.with_random_crop(RandomResizedCrop(img_size, tuple(config.scale), tuple(config.ratio),
                                                                 config.train_interpolation, config.seed))

    seed_everything(config.seed, config.deterministic)
    if config.heap_malloc:
        keep_large_allocations_on_heap()
    if env.device.type == "cpu":
        torch.set_num_threads(config.threads)
    if state is not None:
        check_resumable(state, config, info, resume)
    model, train_model = prepare_model(config, info, env, state, state_path)
    train_loader, test_loader = make_loaders(config, train_set, test_set, env)
    optimizer = create_optimizer(model, config.opt, config.lr, config.weight_decay, config.momentum, config.opt_eps,
                                 config.opt_betas, config.layer_decay)
    schedule_epochs = config.epochs - config.cooldown_epochs  # timm's cycle: the cooldown trains on at --min-lr
    scheduler = create_scheduler(optimizer, schedule_epochs, len(train_loader), config.warmup_epochs, config.lr,
                                 config.min_lr, config.sched, config.decay_epochs, config.decay_rate,
                                 config.warmup_lr, config.lr_noise, config.lr_noise_pct or DEFAULT_LR_NOISE_PCT,
                                 config.seed, config.decay_milestones, config.patience_epochs,
                                 mode="min" if config.eval_metric == "loss" else "max",
                                 warmup_prefix=config.warmup_prefix, cycles=config.lr_cycle_limit,
                                 cycle_mul=config.lr_cycle_mul, cycle_decay=config.lr_cycle_decay,
                                 k_decay=config.lr_k_decay)
    dtype = amp_dtype(config, env.device)
    mixer = MixupCutmix(info.num_classes, config.mixup, config.cutmix, config.smoothing, config.mixup_switch_prob,
                        config.mixup_prob, config.mixup_mode, config.cutmix_minmax)
    run = Run(
        config=config, env=env, info=info, out=out, model=model, train_model=train_model,
        ema=ModelEma(model, config.ema_decay, config.ema_warmup) if config.ema else None, optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler(env.device.type) if dtype == torch.float16 else None,
        train_loader=train_loader, test_loader=test_loader,
        train_transform=make_transform(config, info, train=True, cropped=cropped).to(env.device),
        test_transform=make_transform(config, info, train=False).to(env.device),
        mixer=mixer, criterion=make_criterion(config, mixer).to(env.device),
        settings=StepSettings(dtype, config.clip_grad, config.channels_last, config.grad_accum_steps, config.clip_mode),
        replaces=previous,
        resumed_from=resume if resume is not None and not resuming_here else None)
    if state is not None:
        load_run_state(run, state, state_path)
    on_main(env, lambda: prepare_out_dir(out), None)  # nothing is written there before the first save
    return run


def make_criterion(config: TrainConfig, mixer: MixupCutmix) -> nn.Module:
    """The training loss: softmax cross-entropy, with ``--bce-loss`` timm's binary cross-entropy, with ``--jsd-loss``
    AugMix's. Label smoothing is the loss's own on class indices; mixup / cutmix make soft targets that carry it
    (timm's arrangement)."""
    smoothing = 0.0 if mixer.enabled else config.smoothing
    if config.jsd_loss:
        return JsdCrossEntropy(config.aug_splits, smoothing=smoothing)
    if config.bce_loss:
        return BinaryCrossEntropy(smoothing, config.bce_target_thresh, config.bce_sum, config.bce_pos_weight)
    return nn.CrossEntropyLoss(label_smoothing=smoothing)


def process_batch_size(config: TrainConfig, env: DistEnv) -> int:
    """The images of one training step on this process (``--batch-size`` is split evenly over the processes)."""
    return max(1, config.batch_size // env.world_size)


def default_out_dir(env: DistEnv) -> str:
    """``runs/train-<date>-<time>``, the main process's: the processes need not start within the same second."""
    name = time.strftime("runs/train-%Y%m%d-%H%M%S")
    return broadcast_text(name, env.device) if env.distributed else name


def prepare_model(config: TrainConfig, info: DataInfo, env: DistEnv, state: dict | None = None,
                  state_path: Path | None = None):
    """The model (resumed weights, device, memory format, synchronised BN) and the wrapper the steps go through."""
    model = build_model(config.model, info.num_classes, config.drop, config.drop_path)
    minimum = getattr(model, "min_input_size", 1)
    if config.img_size < minimum:
        raise ValueError(f"--img-size {config.img_size} is too small for {config.model}: it needs at least {minimum} "
                         f"pixels (its minimum input size); pass a larger --img-size")
    if state is None and config.pretrained:
        load_initial_weights(model, config.pretrained, info.num_classes)
    if state is None:
        init_head(model, config.head_init_scale, config.head_init_bias)
    if config.split_bn:  # after --pretrained, whose weights the auxiliary batch norms start from; before --resume's
        if env.distributed and config.sync_bn:
            raise ValueError("--split-bn keeps batch norms per split, --sync-bn one across the processes (as in timm, "
                             "they do not combine): add --no-sync-bn")
        model = convert_split_bn(model, config.aug_splits)
    if state is not None:
        load_checked(model, state["model"], f"--resume: {state_path}: its model weights")
    set_batchnorm(model, config.bn_momentum, config.bn_eps)  # after loading: over a checkpoint's recorded eps too
    model.set_grad_checkpointing(config.grad_checkpointing)
    model.to(env.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if env.distributed and config.sync_bn:
        model = convert_sync_batchnorm(model, env.device)
    train_model = model
    if env.distributed:
        device_ids = [env.device] if env.device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if config.compile:
        from ..deploy.optimize import check_compiler

        # --compile from a --config file or a resumed run, which the command line's own check does not see
        check_compiler(env.device, "--compile", ValueError)
        train_model = torch.compile(train_model)
    return model, train_model


@torch.no_grad()
def init_head(model: nn.Module, scale: float | None, bias: float | None) -> None:
    """``--head-init-scale`` / ``--head-init-bias`` on the classifier of a new run, as timm's train.py applies them:
    the weight and bias times ``scale``, then the bias set to ``bias``."""
    head = model.get_classifier()
    if not isinstance(head, nn.Linear):
        return
    if scale is not None:
        head.weight.mul_(scale)
        head.bias.mul_(scale)
    if bias is not None:
        head.bias.fill_(bias)


def set_batchnorm(model: nn.Module, momentum: float | None, eps: float | None) -> None:
    """``--bn-momentum`` / ``--bn-eps`` on every batch norm of ``model`` (``None`` keeps the model's own)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if momentum is not None:
                module.momentum = momentum
            if eps is not None:
                module.eps = eps


def load_initial_weights(model: nn.Module, path: str, num_classes: int) -> None:
    """``--pretrained``: ``path``'s weights (mobileconv, timm or torchvision) into ``model``, checked as
    ``create_model(pretrained=...)`` checks them; a classifier for another number of classes than ``num_classes``
    is left out, and the model keeps its new one (fine-tuning on another dataset)."""
    try:
        tensors, metadata = read_checkpoint(path)
        drop_head = checkpoint_num_classes(tensors, path) not in (None, num_classes)
        load_state_dict(model, tensors, metadata, drop_head=drop_head, name=path)
    except FileNotFoundError:
        raise ValueError(f"--pretrained {path}: no such file") from None
    except ValueError as e:
        raise ValueError(f"--pretrained: {e}") from None


def make_loaders(config: TrainConfig, train_set, test_set, env: DistEnv) -> tuple[DataLoader, DataLoader]:
    """Loaders over this process's shard: shuffled full global batches for training, every test image once."""
    train_sampler = ShardedBatchSampler(len(train_set), config.batch_size, shuffle=True, seed=config.seed,
                                        rank=env.rank, world_size=env.world_size, drop_last=True,
                                        keyed=getattr(train_set, "random_crop", None) is not None,
                                        repeats=max(config.aug_repeats, 1))
    test_sampler = ShardedBatchSampler(len(test_set), config.batch_size, shuffle=False, rank=env.rank,
                                       world_size=env.world_size, drop_last=False)
    args = {"num_workers": config.workers, "pin_memory": env.device.type == "cuda",
            "persistent_workers": config.workers > 0}
    # each loader draws its workers' base seed from its own generator, not torch's global one: persistent workers
    # draw it at the first epoch only, which moved the augmentation draws of the epoch a resumed run starts with
    return tuple(DataLoader(data, batch_sampler=sampler, generator=torch.Generator().manual_seed(config.seed), **args)
                 for data, sampler in ((train_set, train_sampler), (test_set, test_sampler)))


def crops_whole_images(config: TrainConfig, train_set) -> bool:
    """Whether the training images are random resized crops of the whole decoded image files (an image
    folder, with augmentation), made by the dataset; in-memory images are cropped on the batch instead."""
    return config.aug and tuple(config.scale) != (1.0, 1.0) and isinstance(train_set, ImageFolderDataset)


def make_transform(config: TrainConfig, info: DataInfo, train: bool, cropped: bool = False) -> BatchTransform:
    """The batch transform; ``cropped``: the dataset already made the random resized crops."""
    if not (train and config.aug):
        return BatchTransform(config.img_size, info.mean, info.std)
    return BatchTransform(config.img_size, info.mean, info.std, train=True,
                          scale=(1.0, 1.0) if cropped else config.scale, ratio=config.ratio,
                          interpolation=config.train_interpolation or "random", hflip=config.hflip,
                          vflip=config.vflip,
                          color_jitter=config.color_jitter, reprob=config.reprob,
                          color_jitter_prob=1.0 if config.color_jitter_prob is None else config.color_jitter_prob,
                          grayscale_prob=config.grayscale_prob, gaussian_blur_prob=config.gaussian_blur_prob,
                          remode=config.remode, recount=config.recount, auto_augment=config.aa,
                          splits=max(config.aug_splits, 1), resplit=config.resplit)


def check_resumable(state: dict, config: TrainConfig, info: DataInfo, resume: Path) -> None:
    saved = state["config"]
    for key in ("model", "data", "opt"):  # the optimizer's state only fits the optimizer that made it
        if key == "data" and same_data(saved.get(key, config.data), config.data):
            continue
        if saved.get(key, getattr(config, key)) != getattr(config, key):
            raise ValueError(f"--resume {resume}: the run used --{key} {saved[key]}, not {getattr(config, key)}")
    split_bn = [f"--split-bn with --aug-splits {c['aug_splits']}" if c.get("split_bn") else "no --split-bn"
                for c in (saved, config.to_dict())]
    if split_bn[0] != split_bn[1]:  # other batch norms: the weights and the optimizer's state would not fit
        raise ValueError(f"--resume {resume}: the run trained with {split_bn[0]}, not {split_bn[1]}")
    if (saved.get("layer_decay") is None) != (config.layer_decay is None):
        # other parameter groups, which the optimizer's state would not fit (a new D applies, like a new --lr)
        was, now = ("no --layer-decay" if d is None else f"--layer-decay {d}" for d in (saved.get("layer_decay"),
                                                                                      config.layer_decay))
        raise ValueError(f"--resume {resume}: the run trained with {was}, not {now}")
    if state["epoch"] >= config.epochs:
        raise ValueError(f"--resume {resume}: the run has already trained {state['epoch']} epoch(s); pass --epochs "
                         f"above {state['epoch']} to train on")
    if state["num_classes"] != info.num_classes:
        raise ValueError(f"--resume {resume}: the run had {state['num_classes']} classes, the data has "
                         f"{info.num_classes}")
    trained_on, where = recorded_classes(state, resume)
    if trained_on is None:  # a state.pt from before runs recorded their classes, with no other record left
        return
    # names compared in NFC form, as the data names them (a run recorded from a tree written in NFD)
    trained_on = [unicodedata.normalize("NFC", name) for name in trained_on]
    if trained_on != list(info.classes):
        raise ValueError(f"--resume {resume}: the run was trained on other classes than the data has "
                         f"({class_difference(trained_on, info.classes)}; the run's classes are recorded in {where}); "
                         f"resuming would mix up the labels: pass the --data it was trained on, or start a new run")


def recorded_classes(state: dict, resume: Path) -> tuple[list[str] | None, str]:
    """The class names a run was trained on, in label order, and the file that records them.

    From its state.pt; for a state.pt from before runs recorded them there, from the run folder's
    weights file (written with each checkpoint) or summary.json, when it records as many classes as
    the state; else None (only the number of classes can then be checked).
    """
    if "classes" in state:
        return state["classes"], str(resume / ckpt.STATE_FILE)
    for name, read in ((ckpt.LAST_FILE, ckpt.load_metadata), ("summary.json", read_json)):
        classes = read(resume / name).get("classes")
        if (isinstance(classes, list) and all(isinstance(c, str) for c in classes)
                and len(classes) == state["num_classes"]):
            return classes, str(resume / name)
    return None, ""


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; ``{}`` when there is none or it is unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def class_difference(trained_on: list[str], classes: list[str]) -> str:
    """How a run's classes differ from the data's, in words, for ``trained_on != classes``."""
    gone = [name for name in trained_on if name not in classes]
    new = [name for name in classes if name not in trained_on]
    if gone or new:
        return f"the run's {show_names(gone)} are not in the data, which has {show_names(new)} instead"
    label = next(i for i, (old, now) in enumerate(zip(trained_on, classes)) if old != now)
    return (f"the same names in another order: label {label} was {show_names([trained_on[label]])[1:-1]}, "
            f"it is {show_names([classes[label]])[1:-1]} in the data")


def same_data(saved: str, resolved: str) -> bool:
    """Whether a run's saved ``--data`` names the data now resolved (a folder saved as typed, relative to the
    working directory, by runs that recorded it so, or as an absolute path)."""
    return saved == resolved or (isinstance(saved, str) and str(Path(saved).expanduser().resolve()) == resolved)


def load_run_state(run: Run, state: dict, path: Path) -> None:
    """Restore optimizer, schedule, EMA, grad scaler, RNG states and history from ``path``'s ``state``.

    An entry that does not fit this run is a one-line ``ValueError`` naming ``path`` and the entry.
    """
    if run.ema is not None and state["ema"] is None:
        raise ValueError("--resume: the run was trained without --ema; resume it without --ema")

    # The saved state is where the run stands (momentum buffers, step count, EMA weights); the settings
    # (--lr, --min-lr, --weight-decay, --momentum, --opt-eps, --ema-decay, --epochs) are this command's options,
    # which the user may have changed for the rest of the run.
    settings = [{k: v for k, v in group.items() if k != "params"} for group in run.optimizer.param_groups]

    def load_optimizer(saved: dict) -> None:
        run.optimizer.load_state_dict(saved)
        for group, fresh in zip(run.optimizer.param_groups, settings):
            group.update(fresh)
        # load_state_dict checks group sizes only: a buffer of another shape would fail at the first step
        for group in run.optimizer.param_groups:
            for param in group["params"]:
                for name, value in run.optimizer.state.get(param, {}).items():
                    if isinstance(value, torch.Tensor) and value.ndim and value.shape != param.shape:
                        raise ValueError(f"a {name} of shape {tuple(value.shape)} for a parameter of shape "
                                         f"{tuple(param.shape)}")

    def load_scheduler(saved: dict) -> None:
        # the schedule comes from the current options, only its position (the step count) from the saved state
        base_lrs = list(run.scheduler.base_lrs)
        run.scheduler.load_state_dict({**saved, "lr_lambdas": [None] * len(saved["lr_lambdas"])})
        run.scheduler.base_lrs = base_lrs
        # the position in steps of this run's epochs: a --batch-size or --max-train-samples given on resume
        # changes the steps per epoch, and the saved step count would then point past (or short of) the epoch
        run.scheduler.last_epoch = state["epoch"] * len(run.train_loader)
        schedule = run.scheduler.lr_lambdas[0]  # one object, shared by the parameter groups
        if hasattr(schedule, "replay"):  # --sched plateau: its decays follow from the metrics so far
            schedule.replay([metric_of(row, run.config.eval_metric) for row in state["history"]])
        refresh_lr(run.scheduler)

    def load_ema(saved: dict) -> None:
        load_checked(run.ema.module, saved["module"], "the EMA weights")
        run.ema.load_state_dict(saved)

    parts = {"optimizer": load_optimizer, "scheduler": load_scheduler}
    if run.ema is not None:
        parts["ema"] = load_ema
    if run.scaler is not None and state["scaler"] is not None:
        parts["scaler"] = run.scaler.load_state_dict
    parts["rng"] = ckpt.set_rng_states
    for key, load in parts.items():
        try:
            load(state[key])
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
            reason = " ".join(str(e).split()) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            raise ValueError(f"--resume: {path}: its {key!r} entry does not fit this run ({reason})") from None
    run.start_epoch, run.history = state["epoch"], list(state["history"])
    run.best_top1, run.best_epoch, run.train_seconds = state["best_top1"], state["best_epoch"], state["train_seconds"]


def load_checked(module: nn.Module, weights: dict, what: str) -> None:
    """``module.load_state_dict(weights)`` after comparing names and shapes.

    A one-line ``ValueError`` listing the first mismatches if they differ.
    """
    if not all(isinstance(name, str) and isinstance(t, torch.Tensor) for name, t in weights.items()):
        raise ValueError(f"{what} are not a mapping of names to tensors")
    expected = module.state_dict()
    mismatches = {
        "missing": [name for name in expected if name not in weights],
        "unexpected": [name for name in weights if name not in expected],
        "of another shape": [name for name in expected
                             if name in weights and weights[name].shape != expected[name].shape],
    }
    listed = [f"{len(names)} {kind} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
              for kind, names in mismatches.items() if names]
    if listed:
        name = getattr(module, "name", type(module).__name__)
        raise ValueError(f"{what} do not fit {name}: tensors {'; '.join(listed)}")
    module.load_state_dict(weights)


# the entries of a state.pt (see run_state) and their types, checked before a run is resumed
STATE_TYPES = {"epoch": int, "num_classes": int, "config": dict, "model": dict, "optimizer": dict, "scheduler": dict,
               "ema": (dict, type(None)), "scaler": (dict, type(None)), "rng": dict, "history": list,
               "best_top1": (int, float), "best_epoch": int, "train_seconds": (int, float)}


def _is_numbers(value) -> bool:
    return isinstance(value, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)


# entries that older state.pt files lack: name -> (check, what it must be)
OPTIONAL_STATE_ENTRIES = {
    "classes": (lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v), "a list of class names"),
    "mean": (_is_numbers, "a list of numbers"),
    "std": (_is_numbers, "a list of numbers"),
}


def read_state(path: Path) -> dict:
    """A state.pt written by :func:`run_state`; a one-line ``ValueError`` naming ``path`` and what is wrong if not."""
    state = ckpt.load_state(path)
    if not isinstance(state, dict):
        raise ValueError(f"--resume: {path} holds a {type(state).__name__}, not a state.pt of mobileconv train")
    missing = [key for key in STATE_TYPES if key not in state]
    wrong = [f"{key} is a {type(state[key]).__name__}" for key, kind in STATE_TYPES.items()
             if key in state and not isinstance(state[key], kind)]
    wrong += [f"{key} is not {what}" for key, (check, what) in OPTIONAL_STATE_ENTRIES.items()
              if key in state and not check(state[key])]
    if not missing and not wrong:
        missing = [f"config.{key}" for key in ("model", "data") if key not in state["config"]]
    if not missing and not wrong and "classes" in state and len(state["classes"]) != state["num_classes"]:
        wrong = [f"{len(state['classes'])} classes for num_classes {state['num_classes']}"]
    if missing or wrong:
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + wrong
        raise ValueError(f"--resume: {path} is not a state.pt of mobileconv train ({'; '.join(problems)})")
    return state


def run_state(run: Run, epoch: int) -> dict:
    """The resumable state after ``epoch`` completed epochs: tensors and plain containers only."""
    return {
        "epoch": epoch, "num_classes": run.info.num_classes, "config": run.config.to_dict(),
        # what eval / predict need to preprocess as the run did (read_checkpoint), and the labels' names (resume)
        "classes": list(run.info.classes), "mean": [float(v) for v in run.info.mean],
        "std": [float(v) for v in run.info.std],
        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "ema": run.ema.state_dict() if run.ema is not None else None,
        "scaler": run.scaler.state_dict() if run.scaler is not None else None, "rng": ckpt.get_rng_states(),
        "history": run.history, "best_top1": run.best_top1, "best_epoch": run.best_epoch,
        "train_seconds": run.train_seconds,
    }


def weights_metadata(run: Run, epoch: int) -> dict:
    """String metadata stored in the safetensors files, enough for ``mobileconv eval`` / ``predict``."""
    c, info = run.config, run.info
    meta = {"format": FORMAT, "model": c.model, "dataset": info.name, "num_classes": info.num_classes,
            "classes": info.classes, "img_size": c.img_size, "mean": list(info.mean), "std": list(info.std),
            "epoch": epoch, **{k: run.history[-1][k] for k in RECORDED_METRICS}, "ema": run.ema is not None}
    eps = bn_eps_of(run.eval_model)  # restored by load_pretrained, as for `mobileconv convert`'s files
    return meta if eps is None else {**meta, "bn_eps": eps}


def train_epochs(run: Run) -> dict:
    c, env = run.config, run.env
    log = print if env.is_main else (lambda *a, **k: None)
    log(f"training {c.model} on {run.info.name} ({len(run.train_loader.dataset)} train / "
        f"{len(run.test_loader.dataset)} {run.info.test_split} images, {run.info.num_classes} classes, "
        f"{c.img_size} px) on {env.device}, {env.world_size} process(es) -> {run.out}", flush=True)
    if run.start_epoch:
        log(f"resuming after epoch {run.start_epoch}", flush=True)
    for epoch in range(run.start_epoch, c.epochs):
        run.train_loader.batch_sampler.set_epoch(epoch)
        torch.manual_seed(epoch_seed(c.seed, epoch, env.rank))
        run.mixer.mixing = not c.mixup_off_epoch or epoch < c.mixup_off_epoch  # epoch counts from 0, as in timm
        epoch_start = time.perf_counter()
        try:
            stats = train_one_epoch(run.train_model, run.train_loader, run.optimizer, run.scheduler, run.criterion,
                                    run.train_transform, env, epoch=epoch + 1, settings=run.settings,
                                    mixer=run.mixer, scaler=run.scaler, ema=run.ema,
                                    progress=env.is_main and not c.quiet)
        except NonFiniteLossError as e:
            raise stopped(run, epoch, str(e)) from None
        if c.dist_bn == "reduce":  # --no-sync-bn: the training goes on from the average too, as in timm
            for model in {id(m): m for m in (run.model, run.eval_model)}.values():
                average_running_stats(model)
        broadcast_buffers(run.eval_model)  # every process scores the model that rank 0 saves (--no-sync-bn)
        test = evaluate(run.eval_model, run.test_loader, run.test_transform, run.info.num_classes, env,
                        settings=run.settings)
        # the loss is checked before each step, not after the epoch's last one: weights it sent to NaN / inf (or
        # so far that the test logits overflow) would otherwise be saved as a checkpoint and a finished run
        diverged = diverged_because(run, test["loss"])
        if diverged:
            raise stopped(run, epoch, f"{diverged} after epoch {epoch + 1}")
        seconds = time.perf_counter() - epoch_start
        run.train_seconds += seconds
        row = {"epoch": epoch + 1, "loss": stats["loss"], "top1": test["top1"], "top5": test["top5"],
               "lr": stats["lr"], "img/s": stats["img/s"], "seconds": seconds, "test_loss": test["loss"]}
        # --sched plateau decays here, for the next epoch's steps (one schedule object, shared by the parameter groups)
        run.scheduler.lr_lambdas[0].record(epoch + 1, metric_of(row, c.eval_metric))
        row["lr"] = max(refresh_lr(run.scheduler))  # the schedule's own rate: --layer-decay scales the others down
        best_row = next((r for r in run.history if r["epoch"] == run.best_epoch), None)
        run.history.append(row)
        is_best = best_row is None or ranks_above(row, best_row, c.eval_metric)
        if is_best:
            run.best_top1, run.best_epoch = test["top1"], epoch + 1
        if env.is_main:
            save_epoch(run, epoch + 1, is_best)
            log(f"epoch {epoch + 1}/{c.epochs}  loss {row['loss']:.4f}  top-1 {row['top1']:.2f}  "
                f"top-5 {row['top5']:.2f}  lr {row['lr']:.3g}  {row['img/s']:.0f} img/s  {row['seconds']:.1f} s",
                flush=True)
            if os.environ.get(KILL_AFTER_EPOCH_ENV) == str(epoch + 1):
                os.kill(os.getpid(), signal.SIGKILL)
    summary = make_summary(run)
    if env.is_main:
        ckpt.atomic_write_text(run.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        log(f"done: top-1 {summary['top1']:.2f}%  top-5 {summary['top5']:.2f}%  in {summary['train_seconds']:.1f} s "
            f"of training; run folder {run.out}", flush=True)
    return summary


def diverged_because(run: Run, test_loss: float) -> str | None:
    """Why the weights after an epoch are not worth a checkpoint (non-finite weights or test loss), or None."""
    models = [("weights", run.model)] + ([("EMA weights", run.ema.module)] if run.ema is not None else [])
    for what, module in models:
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                return f"the {what} are not finite ({name})"
    if not math.isfinite(test_loss):
        return f"the test loss is {test_loss}"
    return None


def stopped(run: Run, epoch: int, reason: str) -> NonFiniteLossError:
    """The error that ends a run whose loss or weights became NaN / inf during ``epoch`` (0-based)."""
    if run.replaces:
        kept = f"no checkpoint was written, the previous run in {run.out} is kept"
    elif epoch > 0 and (run.out / ckpt.LAST_FILE).is_file():
        kept = f"the last good checkpoint is {run.out / ckpt.LAST_FILE} (epoch {epoch})"
    elif run.resumed_from is not None:
        kept = f"the last good checkpoint is {run.resumed_from / ckpt.LAST_FILE} (epoch {epoch})"
    else:
        kept = "no checkpoint was written"
    return NonFiniteLossError(f"{reason}; training stopped, {kept} (try a lower --lr or --clip-grad)")


def save_epoch(run: Run, epoch: int, is_best: bool) -> None:
    """Checkpoint after an epoch; ``state.pt`` goes last, so it never points past the other files."""
    if not run.saved_config:
        start_saving(run)
    weights, meta = without_aux_bn(run.eval_model.state_dict()), weights_metadata(run, epoch)  # the plain model's
    ckpt.save_weights(run.out / ckpt.LAST_FILE, weights, meta)
    if is_best:
        ckpt.save_weights(run.out / ckpt.BEST_FILE, weights, meta)
    kept = best_epochs(run.history, run.config.checkpoint_hist, run.config.eval_metric)
    if epoch in kept:
        ckpt.save_weights(run.out / ckpt.EPOCH_FILE.format(epoch=epoch), weights, meta)
    write_metrics_csv(run.out / "metrics.csv", run.history)
    plot_curves(run.out / "curves.png", run.history, f"{run.config.model} on {run.info.name}")
    ckpt.save_state(run.out / ckpt.STATE_FILE, run_state(run, epoch))
    for number, path in ckpt.epoch_files(run.out).items():  # after state.pt: a kill before it redoes this epoch
        if number not in kept:
            path.unlink(missing_ok=True)


def make_summary(run: Run) -> dict:
    if not run.history:
        raise ValueError("no epoch was trained (--epochs must exceed the epochs already done)")
    last, c = run.history[-1], run.config
    return {
        "model": c.model, "dataset": run.info.name, "num_classes": run.info.num_classes, "classes": run.info.classes,
        "epochs": int(last["epoch"]), "top1": last["top1"], "top5": last["top5"], "test_loss": last["test_loss"],
        "test_split": run.info.test_split, "best_top1": run.best_top1, "best_epoch": run.best_epoch,
        "eval_metric": c.eval_metric,
        "train_seconds": round(run.train_seconds, 2), "img_size": c.img_size, "mean": list(run.info.mean),
        "std": list(run.info.std), "weights": ckpt.LAST_FILE, "ema": c.ema, "seed": c.seed,
        "train_samples": len(run.train_loader.dataset), "test_samples": len(run.test_loader.dataset),
        "world_size": run.env.world_size, "device": str(run.env.device), "torch": torch.__version__,
    }
