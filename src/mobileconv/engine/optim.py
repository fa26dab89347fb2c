"""Optimizers (SGD, RMSProp, TensorFlow's RMSProp as in the MobileNetV3 / MixNet papers, AdamW, Adam, NAdam,
RAdam, NAdamW, LAMB, Lion, LARS), gradient clipping (by global norm, by value, adaptive) and the warm-up + cosine, poly,
tanh, step, multi-step or plateau schedules (timm's)."""
from __future__ import annotations

import bisect
import functools
import math
import re

import torch
from torch import nn

from .config import CLIP_MODES, SCHEDULES

# Adam, NAdam and RAdam take the weight decay as an L2 term of the gradient (torch's and timm's), AdamW and NAdamW
# decoupled
ADAM_L2 = {"adam": torch.optim.Adam, "nadam": torch.optim.NAdam, "radam": torch.optim.RAdam}
LARS = ("lars", "larc", "nlars", "nlarc")  # timm's names: n- Nesterov momentum, larc the trust ratio clipped
# Per-optimizer defaults for the options left unset, at the default batch of 64 (scale lr with the batch); None: the
# optimizer has no such setting. TF's RMSProp adds eps inside the square root: sqrt(v + 1e-3) ~ sqrt(v) + sqrt(1e-3)
# for torch's form. Lion: about AdamW's lr / 3 and weight decay x 3, the low end of the Lion paper's advice (3-10x;
# Chen et al. 2023, sec. 5): on digits 98.6% test top-1 where AdamW / 10 and x 10 reached 96.4% (AdamW: 97.8%).
# LARS: lr 1, with the trust coefficient of 0.001 a step of about 0.1% of a weight tensor's norm (digits: 98.3%).
_DEFAULTS = {  # lr, weight decay, momentum, eps, betas
    "sgd":       (0.1,   5e-4, 0.9,  None,        None),
    "momentum":  (0.1,   5e-4, 0.9,  None,        None),
    "rmsprop":   (0.01,  1e-5, 0.9,  1e-3 ** 0.5, None),
    "rmsproptf": (0.01,  1e-5, 0.9,  1e-3,        None),
    "adamw":     (0.002, 0.05, None, 1e-8,        (0.9, 0.999)),
    "adam":      (0.002, 1e-5, None, 1e-8,        (0.9, 0.999)),
    "nadam":     (0.002, 1e-5, None, 1e-8,        (0.9, 0.999)),
    "radam":     (0.002, 1e-5, None, 1e-8,        (0.9, 0.999)),
    "nadamw":    (0.002, 0.05, None, 1e-8,        (0.9, 0.999)),
    "lamb":      (0.005, 0.02, None, 1e-6,        (0.9, 0.999)),
    "lion":      (6e-4,  0.15, None, None,        (0.9, 0.99)),
    **dict.fromkeys(("lars", "larc", "nlars", "nlarc"),
                    (1.0,   5e-4, 0.9,  1e-8,        None)),
}
DEFAULT_LR, DEFAULT_WEIGHT_DECAY, DEFAULT_MOMENTUM, DEFAULT_EPS, DEFAULT_BETAS = (
    {opt: values[i] for opt, values in _DEFAULTS.items()} for i in range(5))
RMSPROP_DECAY = 0.9  # TF "decay" = torch "alpha" (MnasNet / MobileNetV3 / MixNet training setup)


def clip_gradients(parameters, value: float, mode: str = "norm") -> None:
    """Clip the gradients of ``parameters`` in place, as timm's ``dispatch_clip_grad`` (``--clip-grad`` /
    ``--clip-mode``): ``"norm"``, their global 2-norm to at most ``value``; ``"value"``, each element to
    ``[-value, value]``; ``"agc"``, adaptive gradient clipping (:func:`adaptive_clip_grad`) with clip factor
    ``value``."""
    if mode not in CLIP_MODES:
        raise ValueError(f"mode must be one of {CLIP_MODES}, got {mode!r}")
    if mode == "norm":
        nn.utils.clip_grad_norm_(parameters, value)
    elif mode == "value":
        nn.utils.clip_grad_value_(parameters, value)
    else:
        adaptive_clip_grad(parameters, value)


def unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """The 2-norm of each output unit of a conv / linear weight (over all dims but the first), or of the whole
    tensor for a vector or scalar (a bias, a norm layer's scale)."""
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)


@torch.no_grad()
def adaptive_clip_grad(parameters, clip_factor: float, eps: float = 1e-3) -> None:
    """Adaptive gradient clipping (Brock et al. 2021, NFNets, Sec. 4.1), as timm's ``adaptive_clip_grad``: a unit's
    gradient ``G`` is scaled to ``clip_factor * max(||W||, eps) / ||G||`` of itself where its norm exceeds
    ``clip_factor * max(||W||, eps)``, ``W`` the unit's weights (:func:`unitwise_norm`)."""
    for p in parameters:
        if p.grad is None:
            continue
        max_norm = unitwise_norm(p.detach()).clamp(min=eps).mul_(clip_factor)
        grad_norm = unitwise_norm(p.grad)
        clipped = p.grad * (max_norm / grad_norm.clamp(min=1e-6))
        p.grad.copy_(torch.where(grad_norm < max_norm, p.grad, clipped))


def _closure_loss(closure) -> torch.Tensor | None:
    """What an optimizer step's ``closure`` returns (the loss, computed again with autograd on), or None."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class RMSpropTF(torch.optim.Optimizer):
    """RMSProp as TensorFlow 1's ``tf.train.RMSPropOptimizer`` computes it, the optimizer of the MnasNet /
    MobileNetV3 / MixNet papers (timm's ``RMSpropTF``).

    Three differences from ``torch.optim.RMSprop``, which matter most in the first steps and while the
    learning rate changes: the mean square starts at 1, not 0 (a first step is about ``lr * g``, not
    ``lr * g / sqrt(0.1 g^2)``); ``eps`` is added inside the square root; and the learning rate is applied
    inside the momentum buffer, so a step already taken keeps the learning rate it was taken with::

        ms  = alpha * ms + (1 - alpha) * g^2              (ms starts at 1)
        mom = momentum * mom + lr * g / sqrt(ms + eps)
        p   = p - mom

    ``g`` is the gradient plus ``weight_decay * p`` (an L2 term in the loss, as the papers' TF code adds it).
    """

    def __init__(self, params, lr: float = 0.01, alpha: float = 0.9, eps: float = 1e-3, momentum: float = 0.9,
                 weight_decay: float = 0.0) -> None:
        for name, value, low in (("lr", lr, 0.0), ("eps", eps, 0.0), ("weight_decay", weight_decay, 0.0)):
            if not (math.isfinite(value) and value >= low):
                raise ValueError(f"RMSpropTF: {name} must be a finite number >= {low}, got {value!r}")
        if not (0.0 <= alpha < 1.0 and 0.0 <= momentum < 1.0):
            raise ValueError(f"RMSpropTF: alpha and momentum must be in [0, 1), got {alpha!r} and {momentum!r}")
        super().__init__(params, {"lr": lr, "alpha": alpha, "eps": eps, "momentum": momentum,
                                  "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("RMSpropTF does not take sparse gradients")
                grad = p.grad if group["weight_decay"] == 0 else p.grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["square_avg"] = torch.ones_like(p, memory_format=torch.preserve_format)
                    if group["momentum"] > 0:
                        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                square_avg = state["square_avg"]
                square_avg.mul_(group["alpha"]).addcmul_(grad, grad, value=1 - group["alpha"])
                rms = square_avg.add(group["eps"]).sqrt_()
                if group["momentum"] > 0:
                    buf = state.get("momentum_buffer")
                    if buf is None:  # momentum turned on after steps without (a resumed run's new --momentum)
                        buf = state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    buf.mul_(group["momentum"]).addcdiv_(grad, rms, value=group["lr"])
                    p.sub_(buf)
                else:
                    p.addcdiv_(grad, rms, value=-group["lr"])
        return loss


def _params_with_grad(group: dict, name: str) -> list[torch.Tensor]:
    params = [p for p in group["params"] if p.grad is not None]
    if any(p.grad.is_sparse for p in params):
        raise RuntimeError(f"{name} does not take sparse gradients")
    return params


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Alg. 2; timm's ``Lion``): the sign of
    an interpolated momentum, each weight moving by exactly ``lr``, with decoupled weight decay::

        p = p * (1 - lr * weight_decay) - lr * sign(beta1 * m + (1 - beta1) * g)
        m = beta2 * m + (1 - beta2) * g                    (m starts at 0)
    """

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            params = _params_with_grad(group, "Lion")
            if not params:
                continue
            grads = [p.grad for p in params]
            momenta = [self.state[p].setdefault("exp_avg", torch.zeros_like(p, memory_format=torch.preserve_format))
                       for p in params]
            beta1, beta2 = group["betas"]
            torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            updates = torch._foreach_lerp(momenta, grads, 1 - beta1)
            torch._foreach_sign_(updates)
            torch._foreach_add_(params, updates, alpha=-group["lr"])
            torch._foreach_lerp_(momenta, grads, 1 - beta2)
        return loss


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2020, "Large Batch Optimization for Deep Learning", Alg. 2), as timm's ``Lamb`` computes it.

    The gradients are first divided by ``max(1, global norm / max_grad_norm)``. Each tensor then takes Adam's
    bias-corrected update plus the decoupled weight decay, scaled by its trust ratio ``||p|| / ||update||`` (1 where
    either norm is 0); tensors without weight decay (norm layers, biases) take Adam's update unscaled, as in timm::

        m = beta1 * m + (1 - beta1) * g,   v = beta2 * v + (1 - beta2) * g^2
        u = (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps) + weight_decay * p
        p = p - lr * (||p|| / ||u||) * u
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01, max_grad_norm: float = 1.0) -> None:
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                                  "max_grad_norm": max_grad_norm})

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        groups = [(group, _params_with_grad(group, "Lamb")) for group in self.param_groups]
        grads = [p.grad for _, params in groups for p in params]
        if not grads:
            return loss
        global_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        clip = (global_norm / self.defaults["max_grad_norm"]).clamp_(min=1.0)
        for group, params in groups:
            beta1, beta2 = group["betas"]
            for p in params:
                grad = p.grad / clip
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (exp_avg_sq / (1 - beta2 ** state["step"])).sqrt_().add_(group["eps"])
                update = (exp_avg / (1 - beta1 ** state["step"])).div_(denom)
                if group["weight_decay"] != 0:
                    update.add_(p, alpha=group["weight_decay"])
                    p_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    update.mul_(torch.where((p_norm > 0) & (u_norm > 0), p_norm / u_norm, 1.0))
                p.add_(update, alpha=-group["lr"])
        return loss


class Lars(torch.optim.Optimizer):
    """LARS (You et al. 2017, "Large Batch Training of Convolutional Networks"), as timm's ``Lars`` computes it: SGD
    whose gradient (plus the weight decay) is scaled per tensor by the trust ratio
    ``trust_coeff * ||p|| / (||g|| + weight_decay * ||p|| + eps)`` (1 where either norm is 0) before the momentum;
    with ``trust_clip`` (LARC, NVIDIA Apex's) the ratio over ``lr`` is clipped at 1. Tensors without weight decay
    (norm layers, biases) take the plain SGD step, as in timm::

        g = ratio * (g + weight_decay * p);  buf = momentum * buf + g  (buf starts at g);  p = p - lr * buf
    """

    def __init__(self, params, lr: float = 1.0, momentum: float = 0.9, weight_decay: float = 0.0,
                 nesterov: bool = False, trust_coeff: float = 0.001, eps: float = 1e-8,
                 trust_clip: bool = False) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "nesterov": nesterov,
                                  "trust_coeff": trust_coeff, "eps": eps, "trust_clip": trust_clip})

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            decay, momentum = group["weight_decay"], group["momentum"]
            for p in _params_with_grad(group, "Lars"):
                grad = p.grad
                if decay != 0:
                    p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    ratio = group["trust_coeff"] * p_norm / (g_norm + decay * p_norm + group["eps"])
                    ratio = torch.where((p_norm > 0) & (g_norm > 0), ratio, 1.0)
                    if group["trust_clip"]:
                        ratio = (ratio / group["lr"]).clamp_(max=1.0)
                    grad = grad.add(p, alpha=decay).mul_(ratio)
                if momentum != 0:
                    buf = self.state[p].get("momentum_buffer")
                    if buf is None:
                        buf = self.state[p]["momentum_buffer"] = grad.clone()
                    else:
                        buf.mul_(momentum).add_(grad)
                    grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
                p.add_(grad, alpha=-group["lr"])
        return loss


def param_groups_weight_decay(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two parameter groups: weights of convs / linears decay, 1-d parameters (norm scales, biases) do not."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# timm's layer numbering of its MobileNetV3 / EfficientNet models (their ``group_matcher(coarse=False)``): the stem,
# then each block, then (EfficientNet's conv -> BN -> act head only) the head conv; the rest (the classifier, and
# MobileNetV3's head conv, which has no BN) is the last layer
_STEM = re.compile(r"(conv_stem|bn1)\.")
_BLOCK = re.compile(r"blocks\.(\d+)\.(\d+)\.")
_HEAD_CONV = re.compile(r"(conv_head|bn2)\.")


def layer_ids(model: nn.Module) -> dict[str, int]:
    """Each parameter name's layer, from 0 (the stem) up, as timm numbers the layers for ``--layer-decay``.

    Every block (``blocks.STAGE.INDEX``) is a layer of its own; a model whose head has a BN (``bn2``: MixNet,
    MobileNetV2) has its head conv as a layer between the last block and the classifier; a parameter of no other
    layer (the classifier; MobileNetV3's head conv, which has no BN) is in the last one.
    """
    names = [name for name, _ in model.named_parameters()]
    head_conv_apart = any(name.startswith("bn2.") for name in names)

    def order(name: str) -> tuple[int, ...]:
        if _STEM.match(name):
            return (0,)
        if block := _BLOCK.match(name):
            return (1, int(block[1]), int(block[2]))
        return (2,) if head_conv_apart and _HEAD_CONV.match(name) else (3,)

    index = {key: i for i, key in enumerate(sorted({order(name) for name in names}))}
    return {name: index[order(name)] for name in names}


def param_groups_layer_decay(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """:func:`param_groups_weight_decay` per layer of :func:`layer_ids`, each with an ``lr_scale`` of
    ``layer_decay ** (layers after it)``: 1 for the last layer, ``layer_decay`` for the one before... (timm's
    ``param_groups_layer_decay``, after BEiT, Bao et al. 2022)."""
    ids = layer_ids(model)
    last = max(ids.values(), default=0)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            layer, decays = ids[name], param.ndim > 1
            group = groups.setdefault((layer, decays), {"params": [], "weight_decay": weight_decay if decays else 0.0,
                                                        "lr_scale": layer_decay ** (last - layer)})
            group["params"].append(param)
    return list(groups.values())


def start_missing_momentum_buffers(optimizer: torch.optim.Optimizer, args=(), kwargs=None) -> None:
    """Step pre-hook: a zero momentum buffer for each parameter that has taken steps without momentum.

    ``torch.optim.RMSprop`` creates the buffer at a parameter's first step only when momentum is > 0, and
    raises ``KeyError: 'momentum_buffer'`` when momentum is turned on later (``--momentum 0.9`` given on
    resuming a run trained with ``--momentum 0``); a momentum starts from 0, as at a first step.
    """
    for group in optimizer.param_groups:
        if group["momentum"] > 0:
            for param in group["params"]:
                state = optimizer.state.get(param)
                if state and "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)


def create_optimizer(model: nn.Module, opt: str, lr: float, weight_decay: float, momentum: float | None = None,
                     eps: float | None = None, betas: tuple[float, float] | None = None,
                     layer_decay: float | None = None) -> torch.optim.Optimizer:
    """``sgd`` (Nesterov), ``momentum`` (SGD with plain momentum, torchvision's recipes), ``rmsprop`` (torch's, alpha
    0.9, eps sqrt(1e-3)), ``rmsproptf``, ``adamw``, ``adam`` / ``nadam`` / ``radam`` (torch's, whose weight decay is
    an L2 term of the gradient, as timm's ``--opt adam`` / ``nadam`` / ``radam`` use them), ``nadamw`` (torch's NAdam
    with decoupled weight decay), ``lamb`` (:class:`Lamb`), ``lion`` (:class:`Lion`) or ``lars`` / ``larc`` /
    ``nlars`` / ``nlarc`` (:class:`Lars`), timm's names.

    The MobileNetV3 (Howard 2019, sec. 6.1) and MixNet (Tan 2019, sec. 5) papers train with TF's
    RMSProp, decay 0.9, momentum 0.9 and epsilon 1e-3: ``rmsproptf`` is that (:class:`RMSpropTF`).
    ``rmsprop`` is ``torch.optim.RMSprop(alpha=0.9, momentum=0.9, eps=sqrt(1e-3))``, the same
    hyper-parameters in torch's formulation (mean square from 0, eps outside the root, lr outside momentum).

    ``momentum`` (default 0.9), ``eps`` (default :data:`DEFAULT_EPS`) and the Adam family's ``betas`` (default
    0.9, 0.999) left ``None`` take the optimizer's default; given to an optimizer that has no such setting
    (``eps`` to sgd, ``momentum`` to adamw, ``betas`` to rmsprop), they raise ``ValueError`` rather than be ignored.
    With ``layer_decay``, each layer's groups (:func:`param_groups_layer_decay`) start at ``lr`` times their
    ``lr_scale``, which a schedule then scales as a whole.
    """
    if opt not in DEFAULT_LR:
        raise ValueError(f"--opt must be one of {', '.join(DEFAULT_LR)}, got {opt!r}")
    for flag, value, defaults in (("--momentum", momentum, DEFAULT_MOMENTUM), ("--opt-eps", eps, DEFAULT_EPS),
                                  ("--opt-betas", betas, DEFAULT_BETAS)):
        if value is not None and defaults[opt] is None:
            raise ValueError(f"{flag} {value!r} is not used by --opt {opt}, which has no such setting")
    if layer_decay is None:
        groups = param_groups_weight_decay(model, weight_decay)
    else:
        if not 0 < layer_decay <= 1:
            raise ValueError(f"--layer-decay must be in (0, 1], got {layer_decay!r}")
        groups = [{**group, "lr": lr * group["lr_scale"]}
                  for group in param_groups_layer_decay(model, weight_decay, layer_decay)]
    momentum = DEFAULT_MOMENTUM[opt] if momentum is None else momentum
    eps = DEFAULT_EPS[opt] if eps is None else eps
    if eps is not None and not (math.isfinite(eps) and eps > 0):  # sqrt(v) + 0 is 0 / 0 = NaN for a 0 gradient
        raise ValueError(f"--opt-eps must be a finite number > 0 (an epsilon of 0 turns a weight whose gradient "
                         f"is 0 into NaN), got {eps!r}")
    if opt in ("sgd", "momentum"):
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=opt == "sgd" and momentum > 0)
    if opt == "rmsprop":
        optimizer = torch.optim.RMSprop(groups, lr=lr, alpha=RMSPROP_DECAY, eps=eps, momentum=momentum)
        optimizer.register_step_pre_hook(start_missing_momentum_buffers)
        return optimizer
    if opt == "rmsproptf":
        return RMSpropTF(groups, lr=lr, alpha=RMSPROP_DECAY, eps=eps, momentum=momentum)
    if opt in LARS:
        return Lars(groups, lr=lr, momentum=momentum, eps=eps, nesterov=opt.startswith("n"), trust_clip="larc" in opt)
    betas = tuple(DEFAULT_BETAS[opt] if betas is None else betas)
    if not all(0 <= b < 1 for b in betas):
        raise ValueError(f"--opt-betas must be two numbers in [0, 1), got {betas!r}")
    if opt == "lion":
        return Lion(groups, lr=lr, betas=betas)
    if opt == "lamb":
        return Lamb(groups, lr=lr, betas=betas, eps=eps)
    if opt == "nadamw":
        return torch.optim.NAdam(groups, lr=lr, eps=eps, betas=betas, decoupled_weight_decay=True)
    return ADAM_L2.get(opt, torch.optim.AdamW)(groups, lr=lr, eps=eps, betas=betas)


@functools.lru_cache(maxsize=64)  # asked at every step; drawn once per epoch
def lr_noise(epoch: int, pct: float, seed: int) -> float:
    """timm's learning-rate noise of an epoch: the first draw of ``N(0, 1)`` below ``pct`` in magnitude, from a
    generator seeded with ``seed + epoch`` (the rate is then multiplied by ``1 + noise``)."""
    g = torch.Generator().manual_seed((seed + epoch) % 2 ** 64)
    while True:
        noise = torch.randn(1, generator=g).item()
        if abs(noise) < pct:
            return noise


class _NoisySchedule:
    """The optional noise of timm's ``--lr-noise``: in epochs ``noise_start <= e < noise_stop`` (0-based; fractions
    of the run times its epochs) the factor is multiplied by ``1 + lr_noise(e, noise_pct, noise_seed)``. Plain
    fields, so that ``LambdaLR.state_dict()`` saves them."""

    def set_noise(self, steps_per_epoch: int, noise: tuple[float, float] | None, pct: float, seed: int) -> None:
        self.noise_steps_per_epoch = max(1, steps_per_epoch)
        self.noise_start, self.noise_stop = noise if noise is not None else (math.inf, math.inf)
        self.noise_pct, self.noise_seed = pct, seed

    def with_noise(self, step: int, factor: float) -> float:
        epoch = step // self.noise_steps_per_epoch
        if self.noise_start <= epoch < self.noise_stop:
            return factor * (1 + lr_noise(epoch, self.noise_pct, self.noise_seed))
        return factor


class _Warmup(_NoisySchedule):
    """Linear warm-up from ``start_factor`` over ``warmup_steps`` steps (at most the run's steps but one), then
    :meth:`decayed`, with the optional noise. A plain object so that ``LambdaLR.state_dict()`` saves its fields."""

    def __init__(self, total_steps: int, steps_per_epoch: int, warmup_steps: int, min_factor: float,
                 start_factor: float) -> None:
        self.total_steps, self.steps_per_epoch = max(1, total_steps), max(1, steps_per_epoch)
        self.warmup_steps = min(warmup_steps, max(0, total_steps - 1))
        self.min_factor, self.start_factor = min_factor, start_factor
        self.set_noise(steps_per_epoch, None, 0.0, 0)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.with_noise(step, self.start_factor + (1 - self.start_factor) * step / self.warmup_steps)
        return self.with_noise(step, self.decayed(step))

    def decayed(self, step: int) -> float:
        raise NotImplementedError

    def record(self, epochs_done: int, metric: float) -> None:
        """Told the test metric after each epoch; only :class:`WarmupPlateau` uses it."""


def _cosine(progress: float, power: float) -> float:  # Loshchilov & Hutter 2017, eq. 5, one cycle
    return 0.5 * (1 + math.cos(math.pi * progress))


def _poly(progress: float, power: float) -> float:  # timm's PolyLRScheduler
    return (1 - progress) ** power


def _tanh(progress: float, power: float) -> float:  # timm's TanhLRScheduler (Hsueh et al. 2019), lb -7, ub 3
    return 0.5 * (1 - math.tanh(-7 * (1 - progress) + 3 * progress))


ANNEALING = {"cosine": _cosine, "poly": _poly, "tanh": _tanh}


class WarmupAnneal(_Warmup):
    """Learning-rate factor per step: linear warm-up from ``start_factor``, then a decay to ``min_factor`` of
    ``shape``, per step, over the steps left after the warm-up, in one cycle or several.

    ``f(t) = start + (1 - start) * t / W`` for ``t < W``, else ``min + (1 - min) * g(p)`` with
    ``p = (t - W) / (T - W)`` (with ``prefix=False``, timm's default ``warmup_prefix=False``: ``p = t / T``, the
    decay counted from the run's start and the warm-up laid over its beginning) and ``g`` one of
    :data:`ANNEALING`: ``cosine``, ``(1 + cos(pi p)) / 2``
    (Loshchilov & Hutter 2017, eq. 5, one cycle); ``poly``, ``(1 - p) ** power`` (timm's ``PolyLRScheduler``);
    ``tanh``, ``(1 - tanh(-7 (1 - p) + 3 p)) / 2`` (timm's ``TanhLRScheduler``, which ends at 0.25% of the way
    from ``min`` to the peak rather than at ``min``).

    As timm's schedulers with ``cycle_limit``, ``cycle_mul``, ``cycle_decay`` and ``k_decay``: the decay runs
    ``cycles`` times (SGDR's warm restarts, Loshchilov & Hutter 2017), each cycle ``cycle_mul`` times as long as
    the one before and together as long as the decay; cycle ``i`` decays from ``cycle_decay ** i`` to ``min``,
    ``min + (cycle_decay ** i - min) * g(p ** k)`` with ``p`` the progress through the cycle (k-decay, Zhang &
    Li 2020; timm applies it to cosine and poly).
    """

    def __init__(self, total_steps: int, steps_per_epoch: int, warmup_steps: int, min_factor: float = 0.0,
                 start_factor: float = 0.01, shape: str = "cosine", power: float = 1.0, prefix: bool = True,
                 cycles: int = 1, cycle_mul: float = 1.0, cycle_decay: float = 1.0, k: float = 1.0):
        super().__init__(total_steps, steps_per_epoch, warmup_steps, min_factor, start_factor)
        self.shape, self.power, self.prefix = shape, power, prefix
        self.cycles, self.cycle_mul, self.cycle_decay, self.k = cycles, cycle_mul, cycle_decay, k

    def decayed(self, step: int) -> float:
        offset = self.warmup_steps if self.prefix else 0
        span = max(1, self.total_steps - offset)
        cycle, progress = self.cycle_position(min(step - offset, span), span)
        peak = self.cycle_decay ** cycle
        return self.min_factor + (peak - self.min_factor) * ANNEALING[self.shape](progress ** self.k, self.power)

    def cycle_position(self, t: int, span: int) -> tuple[int, float]:
        """The cycle that step ``t`` of the decay's ``span`` steps is in, and the fraction of that cycle done."""
        n, mul = self.cycles, self.cycle_mul
        if mul == 1:
            cycle = min(t * n // span, n - 1)
            first, start = span / n, cycle * span / n
        else:  # cycle lengths first * mul ** i, which add up to span (timm's formula for the cycle of step t)
            first = span * (1 - mul) / (1 - mul ** n)
            cycle = min(max(math.floor(math.log(1 - t / first * (1 - mul), mul)), 0), n - 1)
            start = first * (1 - mul ** cycle) / (1 - mul)
        return cycle, min(1.0, (t - start) / (first * mul ** cycle))


class WarmupStepDecay(_Warmup):
    """Learning-rate factor per step: linear warm-up from ``start_factor``, then step decay, never below ``min_factor``.

    ``f(t) = start + (1 - start) * t / W`` for ``t < W``, else ``max(min, rate ** n)`` with ``e`` the epochs
    completed (``t // steps_per_epoch``) and ``n`` the decays so far: ``e // D`` with ``D`` = ``decay_epochs``,
    timm's ``StepLRScheduler`` (``decay_rate ** (epoch // decay_t)``, counted from the start of the run; the
    MnasNet / MobileNetV3 / MixNet recipe has ``rate`` 0.97 and ``D`` 2.4), or, given ``milestones``, how many of
    them are ``<= e``, timm's ``MultiStepLRScheduler``. Updated once per epoch.
    """

    def __init__(self, total_steps: int, steps_per_epoch: int, warmup_steps: int, min_factor: float,
                 start_factor: float, decay_rate: float, decay_epochs: float | None = None,
                 milestones: tuple[int, ...] | None = None):
        super().__init__(total_steps, steps_per_epoch, warmup_steps, min_factor, start_factor)
        self.decay_epochs, self.decay_rate = decay_epochs, decay_rate
        self.milestones = None if milestones is None else list(milestones)

    def decayed(self, step: int) -> float:
        epoch = step // self.steps_per_epoch
        if self.milestones is not None:
            decays = bisect.bisect_right(self.milestones, epoch)
        else:
            decays = epoch // self.decay_epochs  # float floor division, as timm's t // decay_t
        return max(self.min_factor, self.decay_rate ** decays)


class WarmupPlateau(_Warmup):
    """Learning-rate factor per step: linear warm-up from ``start_factor``, then ``max(min, rate ** n)``, ``n`` the
    times the test metric stopped improving: timm's ``PlateauLRScheduler`` (``torch.optim.lr_scheduler.
    ReduceLROnPlateau`` after the warm-up, relative threshold 1e-4, no cooldown).

    :meth:`record` takes the metric after each epoch: an epoch that does not beat the best so far by more than
    1e-4 of it (higher for ``mode="max"``, lower for ``"min"``) is a bad one, and more than ``patience`` bad epochs
    in a row decay the rate and start the count again. Epochs that end within the warm-up are not counted, as timm
    passes them over. :meth:`replay` rebuilds the count from a run's history.
    """

    THRESHOLD = 1e-4  # ReduceLROnPlateau's default, relative

    def __init__(self, total_steps: int, steps_per_epoch: int, warmup_steps: int, min_factor: float,
                 start_factor: float, decay_rate: float, patience: int, mode: str = "max"):
        super().__init__(total_steps, steps_per_epoch, warmup_steps, min_factor, start_factor)
        self.decay_rate, self.patience, self.mode = decay_rate, patience, mode
        self.decays, self.best, self.bad_epochs = 0, None, 0

    def decayed(self, step: int) -> float:
        return max(self.min_factor, self.decay_rate ** self.decays)

    def record(self, epochs_done: int, metric: float) -> None:
        if epochs_done * self.steps_per_epoch <= self.warmup_steps:
            return
        margin = abs(self.best) * self.THRESHOLD if self.best is not None else 0.0
        better = self.best is None or (metric > self.best + margin if self.mode == "max" else
                                       metric < self.best - margin)
        if better:
            self.best, self.bad_epochs = metric, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.decays, self.bad_epochs = self.decays + 1, 0

    def replay(self, metrics: list[float]) -> None:
        """The state after epochs 1, 2, ... scored ``metrics`` (a resumed run's history)."""
        self.decays, self.best, self.bad_epochs = 0, None, 0
        for done, metric in enumerate(metrics, 1):
            self.record(done, metric)


# per-schedule defaults of --decay-epochs / --decay-rate / --decay-milestones / --patience-epochs (timm's; poly's
# rate is its power)
DEFAULT_DECAY_EPOCHS = {"step": 90.0}
DEFAULT_DECAY_RATE = {"step": 0.1, "multistep": 0.1, "poly": 0.1, "plateau": 0.1}
DEFAULT_DECAY_MILESTONES = {"multistep": (90, 180, 270)}
DEFAULT_PATIENCE_EPOCHS = {"plateau": 10}


def create_scheduler(optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int, warmup_epochs: float,
                     lr: float, min_lr: float, sched: str = "cosine", decay_epochs: float | None = None,
                     decay_rate: float | None = None, warmup_lr: float | None = None,
                     noise: tuple[float, float] | None = None, noise_pct: float = 0.67,
                     seed: int = 0, decay_milestones: tuple[int, ...] | None = None,
                     patience_epochs: int | None = None, mode: str = "max",
                     warmup_prefix: bool = True, cycles: int = 1, cycle_mul: float = 1.0,
                     cycle_decay: float = 0.5, k_decay: float = 1.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step linear warm-up from ``warmup_lr`` (``None``: ``lr / 100``) to ``lr``, then ``sched``:

    * ``cosine``, ``poly`` (power ``decay_rate``) or ``tanh``: a decay to ``min_lr`` by the run's last step
      (:class:`WarmupAnneal`), from the warm-up's end, or with ``warmup_prefix=False`` from the run's start; in
      ``cycles`` cycles, each ``cycle_mul`` times as long as the one before and with ``cycle_decay`` times its
      peak, the decay's shape taken at ``p ** k_decay`` for ``p`` of the way through a cycle (timm's
      ``--lr-cycle-limit``, ``--lr-cycle-mul``, ``--lr-cycle-decay``, ``--lr-k-decay``);
    * ``step``: ``decay_rate`` every ``decay_epochs``, or ``multistep``: ``decay_rate`` at each of
      ``decay_milestones`` (epochs), floored at ``min_lr`` (:class:`WarmupStepDecay`);
    * ``plateau``: ``decay_rate`` whenever the test metric (higher is better with ``mode="max"``, lower with
      ``"min"``) has not improved for more than ``patience_epochs`` epochs, floored at ``min_lr``
      (:class:`WarmupPlateau`; tell it each epoch's metric with ``schedule.record``, then :func:`refresh_lr`).

    Options left ``None`` take timm's defaults (:data:`DEFAULT_DECAY_EPOCHS`, :data:`DEFAULT_DECAY_RATE`,
    :data:`DEFAULT_DECAY_MILESTONES`, :data:`DEFAULT_PATIENCE_EPOCHS`). ``noise = (start, end)``: timm's
    ``--lr-noise``, the rate of each epoch from ``start * epochs`` to before ``end * epochs`` times
    ``1 + lr_noise(epoch, noise_pct, seed)``.
    Call ``step()`` after every optimizer step."""
    if sched not in SCHEDULES:
        raise ValueError(f"--sched must be one of {', '.join(SCHEDULES)}, got {sched!r}")
    total, warmup = epochs * steps_per_epoch, round(warmup_epochs * steps_per_epoch)
    start = 0.01 if warmup_lr is None else warmup_lr / lr
    decay_rate = DEFAULT_DECAY_RATE.get(sched) if decay_rate is None else decay_rate
    common = (total, steps_per_epoch, warmup, min_lr / lr, start)
    if sched in ANNEALING:
        schedule = WarmupAnneal(*common, sched, decay_rate if sched == "poly" else 1.0, warmup_prefix, cycles,
                                cycle_mul, cycle_decay, k_decay)
    elif sched == "plateau":
        patience = DEFAULT_PATIENCE_EPOCHS[sched] if patience_epochs is None else patience_epochs
        schedule = WarmupPlateau(*common, decay_rate, patience, mode)
    elif sched == "multistep":
        milestones = DEFAULT_DECAY_MILESTONES[sched] if decay_milestones is None else decay_milestones
        schedule = WarmupStepDecay(*common, decay_rate, milestones=milestones)
    else:
        schedule = WarmupStepDecay(*common, decay_rate, DEFAULT_DECAY_EPOCHS[sched] if decay_epochs is None else
                                   decay_epochs)
    if noise is not None:
        schedule.set_noise(steps_per_epoch, (noise[0] * epochs, noise[1] * epochs), noise_pct, seed)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def refresh_lr(scheduler: torch.optim.lr_scheduler.LambdaLR) -> list[float]:
    """Set each group's rate to what the schedule gives at its current step (after the schedule itself changed:
    a plateau decay, a resumed run's new options); returns the rates."""
    lrs = [base * schedule(scheduler.last_epoch) for base, schedule in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs
    return lrs
