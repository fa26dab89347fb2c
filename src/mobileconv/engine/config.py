"""The training configuration: one dataclass whose fields are the ``mobileconv train`` options.

Each field carries its help text, value type and accepted choices, so the CLI parser, the YAML
reader and the saved ``config.yaml`` share one definition (YAML keys = option names, with ``-``
or ``_``). Precedence: defaults < ``--resume DIR``'s config.yaml < ``--config FILE`` < command line.
Fields left ``None`` are resolved from the model, the dataset or the optimizer by the trainer and
written resolved into the run folder's config.yaml.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..data.auto_augment import auto_augment_transform
from ..data.datasets import TRAIN_INTERPOLATIONS
from ..data.transforms import ERASE_MODES, MIXUP_MODES
from .ema import EMA_WARMUPS

OPTIMIZERS = ("sgd", "momentum", "rmsprop", "rmsproptf", "adamw", "adam", "nadam", "radam", "nadamw", "lamb", "lion",
              "lars", "larc", "nlars", "nlarc")
# the options that only some optimizers have: SGD has no epsilon, the Adam family betas instead of a momentum
OPTIMIZER_OPTIONS = {**dict.fromkeys(("sgd", "momentum"), ("momentum",)),
                     **dict.fromkeys(("rmsprop", "rmsproptf"), ("momentum", "opt_eps")),
                     **dict.fromkeys(("adamw", "adam", "nadam", "radam", "nadamw", "lamb"), ("opt_eps", "opt_betas")),
                     "lion": ("opt_betas",),
                     **dict.fromkeys(("lars", "larc", "nlars", "nlarc"), ("momentum", "opt_eps"))}
DEVICES = ("auto", "cpu", "cuda")
# learning-rate schedules after the warm-up (optim.create_scheduler): the first three end at --min-lr
SCHEDULES = ("cosine", "poly", "tanh", "step", "multistep", "plateau")
LR_BASE_SCALES = ("linear", "sqrt")  # how --lr-base scales with the batch (timm's --lr-base-scale)
EVAL_METRICS = ("top1", "top5", "loss")  # what ranks epochs: best.safetensors, --checkpoint-hist, --sched plateau
AMP_DTYPES = ("auto", "bfloat16", "float16")
CLIP_MODES = ("norm", "value", "agc")  # timm's --clip-mode
DIST_BN = ("broadcast", "reduce")  # timm's --dist-bn: the running statistics after an epoch without --sync-bn
DEFAULT_MODEL = "mobilenetv3_small_100_cifar"
SEED_LIMIT = 2 ** 64  # torch.manual_seed takes seeds up to 0xffff_ffff_ffff_ffff


def option(default, help: str, *, type=None, choices=None, nargs=None, metavar=None):
    """A config field with the CLI metadata the parser and the YAML reader use."""
    meta = {"help": help, "type": type if type is not None else builtin_type(default), "choices": choices,
            "nargs": nargs, "metavar": metavar}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


def builtin_type(default):
    return type(default[0]) if isinstance(default, (list, tuple)) else type(default)


@dataclass
class TrainConfig:
    """All options of a training run (see the README section "Training and evaluation")."""

    model: str = option(DEFAULT_MODEL, "model name from the zoo (mobileconv models)", metavar="NAME")
    data: str = option("digits", "digits | synthetic | PATH (ImageFolder train/ + val/, or CIFAR-10/100)",
                       metavar="DATA")
    img_size: int | None = option(None, "training / test resolution (default: 16 for digits, else the model's "
                                        "input size)", type=int, metavar="PX")
    pretrained: str | None = option(None, "start from these weights: a mobileconv, timm or torchvision checkpoint "
                                          "(a classifier for another number of classes is replaced by a new one)",
                                    type=str, metavar="FILE")
    epochs: int = option(15, "number of epochs")
    batch_size: int = option(64, "global batch size, split evenly over the processes")
    lr: float | None = option(None, "peak learning rate (default: 0.1 sgd / momentum, 0.01 rmsprop / rmsproptf, "
                                    "0.002 adamw / adam / nadam / radam / nadamw, 0.005 lamb, 6e-4 lion, 1 lars / "
                                    "larc / nlars / nlarc)", type=float)
    lr_base: float | None = option(None, "derive --lr from the global batch as timm does: LR x (--batch-size / "
                                         "--lr-base-size), or its square root for the Adam family and lamb (timm's "
                                         "--lr-base; default: --lr's own default)", type=float, metavar="LR")
    lr_base_size: int = option(256, "--lr-base: the global batch that --lr-base is the rate of (timm's "
                                    "--lr-base-size)", metavar="N")
    lr_base_scale: str | None = option(None, "--lr-base: scale the rate with the batch linearly or by its square "
                                             "root (timm's --lr-base-scale; default: sqrt for adamw / adam / nadam / "
                                             "radam / nadamw / lamb, linear for the others, as timm picks)", type=str,
                                       choices=LR_BASE_SCALES)
    min_lr: float = option(0.0, "final learning rate of the cosine, poly or tanh schedule (with --sched step / "
                                "multistep / plateau: the lowest rate)")
    warmup_epochs: float = option(1.0, "linear warm-up from --warmup-lr to lr over this many epochs")
    cooldown_epochs: int = option(0, "--sched cosine / poly / tanh: the decay ends this many epochs before the run "
                                     "does, which trains on at --min-lr (timm's --cooldown-epochs, counted within "
                                     "--epochs)",
                                  metavar="N")
    warmup_lr: float | None = option(None, "learning rate the warm-up starts from (default: lr / 100)", type=float)
    warmup_prefix: bool = option(True, "--sched cosine / poly / tanh: the decay starts at the warm-up's end "
                                       "(--no-warmup-prefix: at the run's start, the warm-up laid over its beginning, "
                                       "timm's default)")
    sched: str = option("cosine", "schedule after the warm-up (timm's): cosine, poly or tanh decay to --min-lr; "
                                  "step: the rate times --decay-rate every --decay-epochs; multistep: times "
                                  "--decay-rate at each of --decay-milestones; plateau: times --decay-rate when "
                                  "--eval-metric has not improved for more than --patience-epochs epochs",
                        choices=SCHEDULES)
    decay_epochs: float | None = option(None, "--sched step: epochs between decays (default 90, timm's; the TF "
                                              "recipe of MnasNet / MixNet uses 2.4)", type=float)
    decay_milestones: tuple[int, ...] | None = option(None, "--sched multistep: the epochs at which the rate is "
                                                            "multiplied by --decay-rate (default 90 180 270, timm's)",
                                                      type=int, nargs="+", metavar="E")
    patience_epochs: int | None = option(None, "--sched plateau: epochs without improvement it waits for before a "
                                               "decay (default 10, timm's)", type=int, metavar="N")
    decay_rate: float | None = option(None, "--sched step / multistep / plateau: factor per decay, in (0, 1] "
                                            "(default 0.1, timm's; the TF recipe uses 0.97); --sched poly: the "
                                            "power, > 0 (default 0.1, timm's, which overloads --decay-rate so)",
                                      type=float)
    lr_noise: tuple[float, float] | None = option(None, "timm's learning-rate noise from START to END, fractions of "
                                                        "the run: each epoch's rate times 1 + a N(0, 1) draw below "
                                                        "--lr-noise-pct (default: off)", type=float, nargs=2,
                                                  metavar=("START", "END"))
    lr_noise_pct: float | None = option(None, "--lr-noise: largest noise magnitude (default 0.67, timm's)", type=float)
    lr_cycle_limit: int = option(1, "--sched cosine / poly / tanh: the decay in this many cycles, each restarting "
                                    "from a peak (SGDR's warm restarts; timm's --lr-cycle-limit, within --epochs here)",
                                 metavar="N")
    lr_cycle_mul: float = option(1.0, "--lr-cycle-limit: each cycle this many times as long as the one before, > 0 "
                                      "(timm's --lr-cycle-mul)", metavar="M")
    lr_cycle_decay: float = option(0.5, "--lr-cycle-limit: each cycle's peak this times the one before's, in (0, 1] "
                                        "(timm's --lr-cycle-decay)", metavar="D")
    lr_k_decay: float = option(1.0, "--sched cosine / poly: the decay's shape taken at p ** K for p of the way "
                                    "through (k-decay, timm's --lr-k-decay), > 0; 1: the plain shape", metavar="K")
    opt: str = option("sgd", "optimizer", choices=OPTIMIZERS)
    momentum: float | None = option(None, "momentum, in [0, 1) (default: 0.9 for sgd (Nesterov), momentum, rmsprop, "
                                          "rmsproptf and the lars family; the Adam family, lamb and lion have none "
                                          "and refuse it)", type=float)
    opt_eps: float | None = option(None, "optimizer epsilon, > 0 (default: rmsprop 0.0316 = sqrt of TF's 1e-3, "
                                         "rmsproptf 1e-3 inside the square root, the Adam family and the lars family "
                                         "1e-8, lamb 1e-6; sgd, momentum and lion have none and refuse it)",
                                   type=float)
    opt_betas: tuple[float, float] | None = option(None, "the betas of the Adam family, lamb and lion, each in [0, 1) "
                                                         "(timm's --opt-betas; default 0.9 0.999, lion 0.9 0.99; other "
                                                         "optimizers refuse it)", type=float,
                                                   nargs=2, metavar=("B1", "B2"))
    weight_decay: float | None = option(None, "weight decay of conv / linear weights, never of norm layers and "
                                              "biases (default: 5e-4 sgd / momentum, 1e-5 rmsprop / rmsproptf / adam / "
                                              "nadam / radam, 0.05 adamw / nadamw, 0.02 lamb, 0.15 lion, 5e-4 the lars "
                                              "family)",
                                        type=float)
    layer_decay: float | None = option(None, "layer-wise learning-rate decay, in (0, 1] (timm's --layer-decay): each "
                                             "layer's rate times D ** (layers after it), the stem's lowest, the "
                                             "classifier's the --lr schedule's own (layers: the stem, each block, "
                                             "the head conv, the classifier; default: off)", type=float,
                                       metavar="D")
    smoothing: float = option(0.1, "label smoothing")
    bce_loss: bool = option(False, "binary cross-entropy, one sigmoid per class, instead of the softmax "
                                   "cross-entropy (timm's --bce-loss)")
    bce_target_thresh: float | None = option(None, "--bce-loss: targets above this become 1, the others 0 (timm's "
                                                   "--bce-target-thresh; default: targets as they are)", type=float,
                                             metavar="T")
    bce_sum: bool = option(False, "--bce-loss: sum the loss over the classes, mean over the images (timm's "
                                  "--bce-sum; default: mean over both)")
    bce_pos_weight: float | None = option(None, "--bce-loss: weight of each class's positive term (timm's "
                                                "--bce-pos-weight; default: 1)", type=float, metavar="W")
    mixup: float = option(0.0, "mixup alpha (0 = off)")
    cutmix: float = option(0.0, "cutmix alpha (0 = off)")
    mixup_prob: float = option(1.0, "probability that a batch (an image, with --mixup-mode elem / pair) is mixed by "
                                    "--mixup / --cutmix (timm's)")
    mixup_switch_prob: float = option(0.5, "with both --mixup and --cutmix: probability that a mixed batch uses "
                                           "cutmix (timm's)")
    mixup_mode: str = option("batch", "how --mixup / --cutmix draw (timm's --mixup-mode): batch, one draw per batch; "
                                      "elem, one per image; pair, one per image and its partner in the reversed "
                                      "batch", choices=MIXUP_MODES)
    cutmix_minmax: tuple[float, float] | None = option(None, "CutMix boxes whose height and width are drawn from these "
                                                             "fractions of the image's (timm's --cutmix-minmax; turns "
                                                             "CutMix on; default: from the drawn mixing weight)",
                                                       type=float, nargs=2, metavar=("MIN", "MAX"))
    mixup_off_epoch: int = option(0, "mix only the first N epochs (timm's --mixup-off-epoch; 0 = every epoch)",
                                  metavar="N")
    aug: bool = option(True, "random augmentation of training batches (--no-aug: none)")
    scale: tuple[float, float] | None = option(None, "area range of the random resized crop (default: 0.08 1 for "
                                                     "image folders, as timm and torchvision, else 0.5 1)", type=float,
                                               nargs=2, metavar=("MIN", "MAX"))
    ratio: tuple[float, float] = option((3 / 4, 4 / 3), "aspect-ratio range (width / height) of the random resized "
                                                        "crop", nargs=2, metavar=("MIN", "MAX"))
    train_interpolation: str | None = option(None, "resampling of the random resized crop: bilinear, bicubic, or "
                                                   "random (either per image; the default, as timm's)", type=str,
                                             choices=TRAIN_INTERPOLATIONS)
    vflip: float = option(0.0, "vertical-flip probability (timm's --vflip)")
    hflip: float | None = option(None, "horizontal-flip probability (default: 0 for digits, else 0.5)", type=float)
    color_jitter: float | None = option(None, "colour-jitter strength (default: 0 for digits / synthetic or with "
                                              "--aa, else 0.4)", type=float)
    color_jitter_prob: float | None = option(None, "probability per image of the colour jitter (timm's "
                                                   "--color-jitter-prob; default: every image)", type=float,
                                             metavar="P")
    grayscale_prob: float = option(0.0, "probability per image of turning it grey, after the colour jitter (timm's "
                                        "--grayscale-prob, as SimCLR augments)", metavar="P")
    gaussian_blur_prob: float = option(0.0, "probability per image of a Gaussian blur, 23 x 23 kernel, sigma drawn "
                                            "from [0.1, 2] (timm's --gaussian-blur-prob, as SimCLR augments)",
                                       metavar="P")
    aa: str | None = option(None, "RandAugment, AutoAugment or AugMix policy in timm's syntax, e.g. rand-m9-mstd0.5, "
                                  "v0 or augmix-m3-w3 (default: none)", type=str, metavar="POLICY")
    aug_repeats: int = option(0, "repeated augmentation (timm's --aug-repeats): each image N times in a row in the "
                                 "data order, its copies in one step under their own augmentations; an epoch keeps "
                                 "its length, so it sees 1/N of the images (0 or 1: off)", metavar="N")
    aug_splits: int = option(0, "augmentation splits (timm's --aug-splits, for AugMix): each step trains on N "
                                "versions of its batch, one clean (cropped and flipped only) and N-1 augmented by "
                                "--aa, colour jitter, greyscale and blur (0: off; else >= 2)", metavar="N")
    jsd_loss: bool = option(False, "AugMix's loss over --aug-splits: cross-entropy of the clean split plus 12 times "
                                   "the Jensen-Shannon divergence of the splits' predictions (timm's --jsd-loss)")
    split_bn: bool = option(False, "--aug-splits: batch norms of their own for the augmented splits, so that the "
                                   "clean split alone makes the running statistics (timm's --split-bn; not with "
                                   "--sync-bn across processes)")
    resplit: bool = option(False, "--aug-splits with --reprob: erase the augmented splits only, not the clean one "
                                  "(timm's --resplit)")
    reprob: float = option(0.0, "random-erasing probability per training image: one rectangle of 2-33%% of the area, "
                                "filled as --remode says")
    recount: int = option(1, "random erasing: 1 to N rectangles per erased image, each of 1/count of the area "
                              "(timm's --recount)", metavar="N")
    remode: str = option("const", "random-erasing fill: const = the mean colour, rand = a random normal value per "
                                  "channel, pixel = random normal values per pixel (timm's --remode)",
                         choices=ERASE_MODES)
    bn_momentum: float | None = option(None, "batch-norm momentum, PyTorch's convention: the weight of each new batch "
                                             "in the running statistics (timm's --bn-momentum; TensorFlow's decay "
                                             "0.99 is 0.01 here; default: the model's, 0.1)", type=float)
    bn_eps: float | None = option(None, "batch-norm epsilon (timm's --bn-eps; default: the model's)", type=float)
    head_init_scale: float | None = option(None, "multiply the classifier's initial weight and bias by this (timm's "
                                                 "--head-init-scale; after --pretrained; default: as initialised)",
                                           type=float, metavar="S")
    head_init_bias: float | None = option(None, "set the classifier's initial bias to this value (timm's "
                                                "--head-init-bias, e.g. -log(classes - 1) with --bce-loss; after "
                                                "--pretrained)", type=float, metavar="B")
    drop: float | None = option(None, "dropout rate before the classifier (default: the model's)", type=float)
    drop_path: float = option(0.0, "stochastic-depth rate of the residual blocks")
    ema: bool = option(False, "keep an exponential moving average of the weights and evaluate / save it")
    ema_decay: float | None = option(None, "EMA decay per step (default 0.999; used by --ema only)", type=float)
    ema_warmup: str = option("tf", "--ema: how the decay warms up: tf, min(D, (1+t)/(10+t)) at update t (the MixNet "
                                   "code's); timm, 0 then min(D, 1 - t^-0.75) (timm's --model-ema-warmup); none, 0 "
                                   "then D (timm's default)", choices=EMA_WARMUPS)
    grad_accum_steps: int = option(1, "run each step's batch as this many micro-batches, one after another, "
                                      "gradients summed: the same step in 1/N of the activation memory (batch norm "
                                      "normalises each micro-batch on its own)", metavar="N")
    clip_grad: float | None = option(None, "clip the global gradient norm to this value, > 0 (default: off)",
                                     type=float, metavar="NORM")
    clip_mode: str = option("norm", "what --clip-grad bounds (timm's --clip-mode): norm, the global gradient norm; "
                                    "value, each gradient element; agc, adaptive gradient clipping (NFNets), "
                                    "--clip-grad the clip factor", choices=CLIP_MODES)
    amp: bool = option(False, "mixed precision: bfloat16 on CPU, float16 on GPU (see --amp-dtype)")
    amp_dtype: str = option("auto", "mixed-precision dtype (used by --amp only)", choices=AMP_DTYPES)
    channels_last: bool = option(False, "channels-last memory format")
    compile: bool = option(False, "torch.compile the model")
    grad_checkpointing: bool = option(False, "keep only each block's input for the backward pass, which computes the "
                                             "block again (timm's --grad-checkpointing): less memory for training, "
                                             "for a second forward pass of the blocks")
    device: str = option("auto", "device (auto: cuda if available)", choices=DEVICES)
    workers: int = option(0, "data-loading worker processes")
    threads: int | None = option(None, "intra-op CPU threads per process (default: 1 for inputs up to 64 px, where "
                                       "threading costs more than it gives; else torch's, one per core)", type=int,
                                 metavar="N")
    heap_malloc: bool = option(True, "glibc: keep large tensors on the heap instead of fresh zeroed pages every step "
                                     "(what jemalloc / tcmalloc do; costs resident memory)")
    eval_metric: str = option("top1", "the test metric that ranks epochs: for best.safetensors, --checkpoint-hist "
                                      "and --sched plateau (timm's --eval-metric; loss: the lower the better)",
                              choices=EVAL_METRICS)
    checkpoint_hist: int = option(0, "also keep the weights of the N best epochs by --eval-metric as "
                                     "checkpoint-EPOCH.safetensors (timm's --checkpoint-hist; 0: none)", metavar="N")
    seed: int = option(0, "random seed (weights, data order, augmentation)")
    deterministic: bool = option(False, "deterministic algorithms only (bitwise-reproducible runs)")
    sync_bn: bool = option(True, "synchronise batch-norm statistics across processes")
    dist_bn: str = option("broadcast", "--no-sync-bn: the running statistics every process evaluates and rank 0 "
                                       "saves after an epoch: rank 0's (broadcast) or the processes' average "
                                       "(reduce; timm's --dist-bn)", choices=DIST_BN)
    max_train_samples: int | None = option(None, "use only this many training samples (quick runs)", type=int,
                                           metavar="N")
    max_val_samples: int | None = option(None, "use only this many test samples (quick runs)", type=int,
                                         metavar="N")
    out: str | None = option(None, "run folder (default: runs/train-<date>-<time>)", type=str, metavar="DIR")
    overwrite: bool = option(False, "replace a previous run in --out")
    quiet: bool = option(False, "no progress bars: one log line per epoch")

    # ---- building and checking -------------------------------------------------------------

    @classmethod
    def fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls)}

    @classmethod
    def from_mapping(cls, values: dict, source: str, base: "TrainConfig | None" = None) -> "TrainConfig":
        """``base`` (or the defaults) updated with ``values``; keys may use ``-`` or ``_``."""
        known = cls.fields()
        updates = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise ValueError(f"{source}: unknown option {key!r} (known: {', '.join(sorted(known))})")
            updates[name] = coerce(known[name], value, source)
        return dataclasses.replace(base or cls(), **updates)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def validate(self) -> "TrainConfig":
        """Raise ``ValueError`` naming the option for any value outside its range."""
        def check(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ValueError(f"--{name.replace('_', '-')} must be {expected}, got {getattr(self, name)!r}")

        check(0 <= self.seed < SEED_LIMIT, "seed", "in [0, 2**64), the range torch.manual_seed accepts")
        for name in ("epochs", "batch_size", "grad_accum_steps"):
            check(getattr(self, name) >= 1, name, ">= 1")
        for name in ("img_size", "max_train_samples", "max_val_samples", "threads"):
            check(getattr(self, name) is None or getattr(self, name) >= 1, name, ">= 1")
        from .bench import available_cpus  # noqa: PLC0415 - bench imports torch and the layers

        cpus = available_cpus()  # more threads than CPUs: an epoch of 2 s took 658 s with --threads 500
        check(self.threads is None or self.threads <= cpus, "threads",
              f"from 1 to {cpus} (the CPUs this process may use)")
        check(self.lr is None or (math.isfinite(self.lr) and self.lr > 0), "lr", "a finite number > 0")
        check(self.lr_base is None or (math.isfinite(self.lr_base) and self.lr_base > 0), "lr_base",
              "a finite number > 0")
        check(self.lr_base_size >= 1, "lr_base_size", ">= 1")
        for name in ("head_init_scale", "head_init_bias"):
            check(getattr(self, name) is None or math.isfinite(getattr(self, name)), name, "a finite number")
        check(self.warmup_lr is None or (math.isfinite(self.warmup_lr) and self.warmup_lr >= 0), "warmup_lr",
              "a finite number >= 0")
        for name in ("min_lr", "warmup_epochs", "momentum", "weight_decay", "mixup", "cutmix",
                     "drop", "color_jitter", "workers"):
            value = getattr(self, name)
            check(value is None or (math.isfinite(value) and value >= 0), name, "a finite number >= 0")
        check_unused_options(self)
        if self.jsd_loss and self.bce_loss:
            raise ValueError("--jsd-loss and --bce-loss are two different losses: choose one")
        if self.cutmix and self.cutmix_minmax is not None:
            raise ValueError(f"--cutmix {self.cutmix} is not used with --cutmix-minmax, which draws the CutMix boxes "
                             "itself (timm sets the alpha to 1 then): leave --cutmix out")
        if self.jsd_loss and mixes(self):
            raise ValueError("--jsd-loss scores the clean split against class labels, which --mixup / --cutmix replace "
                             "by mixed targets (as in timm, where they cannot be combined): leave them out, or leave "
                             "--jsd-loss out")
        # RMSProp / AdamW divide by sqrt(v) + eps: with eps 0, a weight whose gradients have all been 0 so far
        # (a dead ReLU channel) gets 0 / 0 = NaN at its first step, and the run stops on a NaN loss
        eps_ok = self.opt_eps is None or (math.isfinite(self.opt_eps) and self.opt_eps > 0)
        check(eps_ok, "opt_eps", "a finite number > 0 (an epsilon of 0 turns a weight whose gradient is 0 into NaN)")
        # a norm of 0 would zero every gradient: no clipping is "leave it out", not 0
        check(self.clip_grad is None or (math.isfinite(self.clip_grad) and self.clip_grad > 0), "clip_grad",
              "a finite number > 0 (leave it out for no clipping)")
        check(self.opt_betas is None or all(0 <= b < 1 for b in self.opt_betas), "opt_betas",
              "two numbers in [0, 1)")
        check(self.layer_decay is None or 0 < self.layer_decay <= 1, "layer_decay",
              "in (0, 1] (1: every layer at the same rate)")
        check(self.momentum is None or self.momentum < 1, "momentum",
              "in [0, 1) (a momentum of 1 or more never forgets a gradient)")
        check(self.decay_epochs is None or (math.isfinite(self.decay_epochs) and self.decay_epochs > 0),
              "decay_epochs", "a finite number > 0")
        if self.sched == "poly":
            check(self.decay_rate is None or (math.isfinite(self.decay_rate) and self.decay_rate > 0), "decay_rate",
                  "a finite number > 0 with --sched poly (the power)")
        else:
            check(self.decay_rate is None or 0 < self.decay_rate <= 1, "decay_rate", "in (0, 1]")
        check(self.patience_epochs is None or self.patience_epochs >= 0, "patience_epochs", ">= 0")
        milestones = self.decay_milestones
        check(milestones is None or (milestones[0] >= 1 and all(a < b for a, b in zip(milestones, milestones[1:]))),
              "decay_milestones", "epochs >= 1 in increasing order")
        check(self.lr_noise is None or 0 <= self.lr_noise[0] < self.lr_noise[1] < math.inf, "lr_noise",
              "two finite fractions of the run, 0 <= START < END")
        check(self.lr_cycle_limit >= 1, "lr_cycle_limit", ">= 1")
        check(math.isfinite(self.lr_cycle_mul) and self.lr_cycle_mul > 0, "lr_cycle_mul", "a finite number > 0")
        check(0 < self.lr_cycle_decay <= 1, "lr_cycle_decay", "in (0, 1]")
        check(math.isfinite(self.lr_k_decay) and self.lr_k_decay > 0, "lr_k_decay", "a finite number > 0")
        check(self.lr_noise_pct is None or (math.isfinite(self.lr_noise_pct) and self.lr_noise_pct > 0),
              "lr_noise_pct", "a finite number > 0")
        check(0 <= self.smoothing < 1, "smoothing", "in [0, 1)")
        check(self.bce_target_thresh is None or 0 <= self.bce_target_thresh < 1, "bce_target_thresh",
              "in [0, 1) (a threshold of 1 or more would leave no positive target)")
        check(self.bce_pos_weight is None or (math.isfinite(self.bce_pos_weight) and self.bce_pos_weight > 0),
              "bce_pos_weight", "a finite number > 0")
        check(self.ema_decay is None or 0 < self.ema_decay < 1, "ema_decay", "in (0, 1)")
        check(self.hflip is None or 0 <= self.hflip <= 1, "hflip", "a probability in [0, 1]")
        check(0 <= self.reprob <= 1, "reprob", "a probability in [0, 1]")
        check(self.recount >= 1, "recount", ">= 1")
        check(self.aug_repeats >= 0, "aug_repeats", ">= 0 (0 or 1: each image once per epoch)")
        check(self.aug_splits == 0 or self.aug_splits >= 2, "aug_splits",
              "0 (off) or >= 2 (a clean split and augmented ones)")
        check(0 <= self.mixup_prob <= 1, "mixup_prob", "a probability in [0, 1]")
        for name in ("color_jitter_prob", "grayscale_prob", "gaussian_blur_prob"):
            check(getattr(self, name) is None or 0 <= getattr(self, name) <= 1, name, "a probability in [0, 1]")
        minmax = self.cutmix_minmax
        check(minmax is None or 0 < minmax[0] < minmax[1] <= 1, "cutmix_minmax", "two fractions 0 < MIN < MAX <= 1")
        check(self.bn_momentum is None or 0 < self.bn_momentum <= 1, "bn_momentum",
              "in (0, 1] (the weight of a new batch; TensorFlow's 0.99 is 0.01 here)")
        check(self.bn_eps is None or (math.isfinite(self.bn_eps) and self.bn_eps > 0), "bn_eps", "a finite number > 0")
        check(0 <= self.vflip <= 1, "vflip", "a probability in [0, 1]")
        check(0 <= self.mixup_switch_prob <= 1, "mixup_switch_prob", "a probability in [0, 1]")
        check(self.mixup_off_epoch >= 0, "mixup_off_epoch", ">= 0 (0: mix every epoch)")
        check(self.checkpoint_hist >= 0, "checkpoint_hist", ">= 0 (0: keep no epoch's weights but the last and best)")
        check(0 <= self.cooldown_epochs < self.epochs, "cooldown_epochs",
              f"from 0 to --epochs - 1 = {self.epochs - 1} (the decay needs an epoch)")
        if self.aa is not None:
            auto_augment_transform(self.aa)  # refuses a string it cannot read
        check(self.drop is None or self.drop < 1, "drop", "in [0, 1)")
        check(0 <= self.drop_path < 1, "drop_path", "in [0, 1)")
        check(self.scale is None or 0 < self.scale[0] <= self.scale[1] <= 1, "scale", "two numbers 0 < MIN <= MAX <= 1")
        check(0 < self.ratio[0] <= self.ratio[1] < math.inf, "ratio", "two finite numbers 0 < MIN <= MAX")
        return self


# the options that only some schedules have
SCHEDULE_OPTIONS = {"cosine": (), "poly": ("decay_rate",), "tanh": (), "step": ("decay_epochs", "decay_rate"),
                    "multistep": ("decay_milestones", "decay_rate"), "plateau": ("decay_rate", "patience_epochs")}
ENDING_SCHEDULES = ("cosine", "poly", "tanh")  # those that reach --min-lr at the end: a cooldown can follow them


def mixes(config: TrainConfig) -> bool:
    """Whether the run mixes batches: ``--mixup``, ``--cutmix`` or ``--cutmix-minmax``."""
    return config.mixup > 0 or config.cutmix > 0 or config.cutmix_minmax is not None


def unused_options(config: TrainConfig) -> list[str]:
    """The options set (not ``None``, not 0) that nothing in ``config`` uses: ``--opt-eps`` with sgd or ``--momentum``
    with adamw (``config.opt``), ``--decay-rate`` with cosine (``config.sched``), ``--reprob``, ``--aa``, ``--vflip``,
    ``--aug-repeats`` and ``--aug-splits`` with ``--no-aug``, ``--remode rand`` / ``pixel`` and ``--recount`` without
    random erasing, ``--ema-decay`` / ``--ema-warmup`` without ``--ema``, ``--amp-dtype`` without ``--amp``,
    ``--clip-mode`` without ``--clip-grad``, ``--warmup-lr`` with ``--warmup-epochs 0``, ``--cooldown-epochs`` with
    ``--sched step`` / ``multistep``, ``--no-warmup-prefix`` without a decay after a warm-up, ``--lr-noise-pct`` without
    ``--lr-noise``, ``--lr-cycle-limit`` without a cosine, poly or tanh decay, ``--lr-cycle-mul`` / ``--lr-cycle-decay``
    without cycles, ``--lr-k-decay`` without a cosine or poly decay, ``--lr-base-size`` / ``--lr-base-scale`` without
    ``--lr-base``, ``--mixup-prob`` / ``--mixup-off-epoch`` / ``--mixup-mode`` without mixing, ``--mixup-switch-prob``
    without both ``--mixup`` and ``--cutmix``, ``--bce-target-thresh`` / ``--bce-sum`` / ``--bce-pos-weight`` without
    ``--bce-loss``, ``--jsd-loss`` / ``--split-bn`` without ``--aug-splits``, ``--resplit`` without ``--aug-splits`` and
    ``--reprob``, ``--color-jitter-prob`` without a colour jitter, ``--color-jitter-prob`` / ``--grayscale-prob`` /
    ``--gaussian-blur-prob`` with ``--no-aug``, ``--dist-bn reduce`` with ``--sync-bn``."""
    uses = OPTIMIZER_OPTIONS[config.opt] + SCHEDULE_OPTIONS[config.sched]
    scheduled = ("decay_epochs", "decay_milestones", "decay_rate", "patience_epochs")
    unused = [name for name in ("momentum", "opt_eps", "opt_betas", *scheduled)
              if getattr(config, name) is not None and name not in uses]
    if not config.aug:
        unused += [name for name in ("reprob", "aa", "vflip", "grayscale_prob", "gaussian_blur_prob")
                   if getattr(config, name)]
        unused += ["color_jitter_prob"] if config.color_jitter_prob is not None else []
        unused += [name for name in ("aug_repeats", "aug_splits") if getattr(config, name) > 1]
    if config.color_jitter_prob is not None and config.color_jitter == 0 and config.aug:
        unused.append("color_jitter_prob")
    if config.remode != "const" and not (config.reprob and config.aug):
        unused.append("remode")
    if config.recount != 1 and not (config.reprob and config.aug):
        unused.append("recount")
    if config.ema_decay is not None and not config.ema:
        unused.append("ema_decay")
    if config.ema_warmup != "tf" and not config.ema:
        unused.append("ema_warmup")
    if config.amp_dtype != "auto" and not config.amp:
        unused.append("amp_dtype")
    if config.clip_mode != "norm" and config.clip_grad is None:
        unused.append("clip_mode")
    if config.dist_bn != "broadcast" and config.sync_bn:
        unused.append("dist_bn")
    if config.warmup_lr is not None and config.warmup_epochs == 0:
        unused.append("warmup_lr")
    if config.cooldown_epochs and config.sched not in ENDING_SCHEDULES:
        unused.append("cooldown_epochs")
    if not config.warmup_prefix and (config.sched not in ENDING_SCHEDULES or config.warmup_epochs == 0):
        unused.append("warmup_prefix")
    if config.lr_noise_pct is not None and config.lr_noise is None:
        unused.append("lr_noise_pct")
    if config.lr_cycle_limit != 1 and config.sched not in ENDING_SCHEDULES:
        unused.append("lr_cycle_limit")
    if config.lr_cycle_limit == 1 or config.sched not in ENDING_SCHEDULES:
        unused += [name for name, default in (("lr_cycle_mul", 1.0), ("lr_cycle_decay", 0.5))
                   if getattr(config, name) != default]
    if config.lr_k_decay != 1 and config.sched not in ("cosine", "poly"):
        unused.append("lr_k_decay")
    if config.lr_base is None:
        unused += [name for name, default in (("lr_base_size", 256), ("lr_base_scale", None))
                   if getattr(config, name) != default]
    unused += [name for name, default in (("mixup_prob", 1.0), ("mixup_off_epoch", 0), ("mixup_mode", "batch"))
               if not mixes(config) and getattr(config, name) != default]
    if config.mixup_switch_prob != 0.5 and not (config.mixup > 0 and (config.cutmix > 0 or config.cutmix_minmax)):
        unused.append("mixup_switch_prob")
    if config.jsd_loss and not config.aug_splits:
        unused.append("jsd_loss")
    if config.split_bn and not config.aug_splits:
        unused.append("split_bn")
    if config.resplit and not (config.aug_splits and config.reprob and config.aug):
        unused.append("resplit")
    if not config.bce_loss:
        unused += [name for name in ("bce_target_thresh", "bce_sum", "bce_pos_weight")
                   if getattr(config, name) not in (None, False)]
    return unused


# why an option is of no use, and what would use it: "<flag> <value> (<where>) <this>, or leave <flag> out"
UNUSED_BECAUSE = {
    "recount": "counts random-erasing rectangles, which only --reprob > 0 makes (and not with --no-aug): add --reprob",
    "remode": "fills random-erasing rectangles, which only --reprob > 0 makes (and not with --no-aug): add --reprob",
    "ema_decay": "is used by --ema only: add --ema",
    "ema_warmup": "is used by --ema only: add --ema",
    "amp_dtype": "is used by --amp only: add --amp",
    "clip_mode": "says how --clip-grad clips, which is off: add --clip-grad",
    "dist_bn": "gathers the processes' own batch-norm statistics, and --sync-bn keeps one set: add --no-sync-bn",
    "mixup_prob": "is used by --mixup or --cutmix only: add them",
    "mixup_off_epoch": "is used by --mixup or --cutmix only: add them",
    "mixup_mode": "is used by --mixup or --cutmix only: add them",
    "mixup_switch_prob": "is used by --mixup and --cutmix both only: add them",
    "cooldown_epochs": "ends the decay early, and --sched {sched} has no end: use --sched cosine, poly or tanh",
    "lr_noise_pct": "bounds the noise of --lr-noise, which is off: add --lr-noise START END",
    "color_jitter_prob": "is how often --color-jitter applies, and the colour jitter is off (--color-jitter 0): give "
                         "--color-jitter S",
    "lr_cycle_limit": "restarts the decay of --sched cosine, poly or tanh, and --sched {sched} has none: use one of "
                      "them",
    "lr_cycle_mul": "shapes the cycles of --lr-cycle-limit, and the run has one (of --sched cosine, poly or tanh): "
                    "add --lr-cycle-limit N",
    "lr_cycle_decay": "shapes the cycles of --lr-cycle-limit, and the run has one (of --sched cosine, poly or tanh): "
                      "add --lr-cycle-limit N",
    "lr_k_decay": "reshapes the decay of --sched cosine or poly (timm's), not --sched {sched}: use one of them",
    "lr_base_size": "is used by --lr-base only: add --lr-base",
    "lr_base_scale": "is used by --lr-base only: add --lr-base",
    "warmup_lr": "is the rate a warm-up starts from, and --warmup-epochs 0 makes none: give --warmup-epochs",
    "warmup_prefix": "says where the decay of --sched cosine, poly or tanh starts after a warm-up; --sched {sched} "
                     "with --warmup-epochs {warmup_epochs:g} has no use for it",
    "jsd_loss": "compares the predictions of --aug-splits, which is off: add --aug-splits 3",
    "split_bn": "gives the augmented splits of --aug-splits batch norms of their own, and --aug-splits is off: "
                "add --aug-splits 3",
    "resplit": "spares the clean split of --aug-splits from --reprob's erasing: add --aug-splits and --reprob",
    "bce_target_thresh": "is used by --bce-loss only: add --bce-loss",
    "bce_sum": "is used by --bce-loss only: add --bce-loss",
    "bce_pos_weight": "is used by --bce-loss only: add --bce-loss",
}


def check_unused_options(config: TrainConfig, origins: dict[str, str] | None = None) -> None:
    """Refuse an option that would be silently ignored (:func:`unused_options`); ``origins`` names where an option
    was set."""
    for name in unused_options(config):
        flag, value = "--" + name.replace("_", "-"), getattr(config, name)
        where = f" ({origins[name]})" if origins and name in origins else ""
        if name == "reprob":
            raise ValueError(f"--reprob must be 0 with --no-aug (random erasing is an augmentation), got {value!r}"
                             f"{where}")
        if name in ("aa", "vflip", "aug_repeats", "aug_splits", "grayscale_prob", "gaussian_blur_prob") or (
                name == "color_jitter_prob" and not config.aug):
            raise ValueError(f"{flag} {value!r}{where} is an augmentation: leave it out with --no-aug")
        if name in UNUSED_BECAUSE:
            # a switch is named alone: --bce-sum, not True; --no-warmup-prefix, not False
            shown = flag if value is True else f"--no-{flag[2:]}" if value is False else f"{flag} {value}"
            why = UNUSED_BECAUSE[name].format(sched=config.sched, warmup_epochs=config.warmup_epochs)
            raise ValueError(f"{shown}{where} {why}, or leave {shown if value is False else flag} out")
        if name.startswith("decay_") or name == "patience_epochs":
            users = [sched for sched, names in SCHEDULE_OPTIONS.items() if name in names]
            users = users[0] if len(users) == 1 else f"{', '.join(users[:-1])} or {users[-1]}"
            shown = " ".join(map(str, value)) if isinstance(value, tuple) else repr(value)
            raise ValueError(f"{flag} {shown}{where} is used by --sched {users} only, not by --sched "
                             f"{config.sched}: leave {flag} out, or add --sched {users}")
        takes = " and ".join("--" + n.replace("_", "-") for n in OPTIMIZER_OPTIONS[config.opt])
        shown = " ".join(map(str, value)) if isinstance(value, tuple) else repr(value)
        raise ValueError(f"{flag} {shown}{where} is not used by --opt {config.opt}, which takes "
                         f"{takes} but not {flag}: leave {flag} out, or choose an --opt that uses it")


def coerce(f: dataclasses.Field, value, source: str):
    """``value`` checked against the field's type and choices (YAML gives ints for floats, lists for tuples)."""
    kind, choices, nargs = f.metadata["type"], f.metadata["choices"], f.metadata["nargs"]
    where = f"{source}: option {f.name.replace('_', '-')!r}"
    if value is None:
        if f.default is None:
            return None
        raise ValueError(f"{where} cannot be empty")
    if nargs:
        if not isinstance(value, (list, tuple)) or (len(value) != nargs if nargs != "+" else not value):
            raise ValueError(f"{where} expects {'one or more' if nargs == '+' else nargs} values, got {value!r}")
        return tuple(_scalar(kind, v, where) for v in value)
    value = _scalar(kind, value, where)
    if choices and value not in choices:
        raise ValueError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    return value


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string"}


def _scalar(kind, value, where: str):
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} expects true or false, got {value!r}")
        return value
    expected = f"{where} expects {_KIND_NAMES[kind]}, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(expected)
    try:
        converted = kind(value)
    except (ValueError, OverflowError):  # int(".inf") overflows
        raise ValueError(expected) from None
    if kind is int and isinstance(value, float) and value != converted:
        raise ValueError(f"{where} expects an integer, got {value!r}")
    return converted


def load_yaml(path: str | Path, label: str | None = None) -> dict:
    """A YAML mapping of option names to values (``yaml.safe_load``: plain data only).

    Errors start with ``label`` (default ``--config PATH``), the name the user knows the file by.
    """
    import yaml

    path = Path(path)
    label = label or f"--config {path}"
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{label}: no such file") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{label}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{label}: expected a mapping of option names to values, got {type(data).__name__}")
    return data


# not recorded in a run's config.yaml: reused as --config, it must not replace the run it describes
NOT_RECORDED = ("overwrite",)


def dump_yaml(config: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump({k: v for k, v in config.to_dict().items() if k not in NOT_RECORDED}, sort_keys=False)


def lr_from_base(config: TrainConfig) -> float:
    """``--lr`` as timm derives it from ``--lr-base``: ``lr_base * (batch / lr_base_size)``, or its square root for
    the Adam family (timm picks ``sqrt`` for an optimizer whose name holds "ada" or "lamb"). The batch is the
    global ``--batch-size`` (timm multiplies its per-process batch by the processes and ``--grad-accum-steps``)."""
    ratio = config.batch_size / config.lr_base_size
    return config.lr_base * (ratio ** 0.5 if lr_base_scale(config) == "sqrt" else ratio)


def lr_base_scale(config: TrainConfig) -> str:
    """``--lr-base-scale``, or timm's choice for the optimizer: ``sqrt`` for the Adam family and LAMB, else
    ``linear``."""
    return config.lr_base_scale or ("sqrt" if "ada" in config.opt or "lamb" in config.opt else "linear")
