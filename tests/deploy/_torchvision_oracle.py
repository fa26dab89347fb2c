"""An independent oracle for torchvision's MobileNetV2 / V3: key layout and forward, in plain torch.

Written from torchvision 0.28's ``models/mobilenetv2.py`` / ``mobilenetv3.py`` (their layer
tables, module nesting and BN eps), not from mobileconv: ``make_state_dict`` produces random
tensors under torchvision's names and shapes, ``forward`` evaluates that state_dict the way
torchvision's eval-mode model does, with ``torch.nn.functional`` only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

ACTS = {"RE": F.relu, "HS": F.hardswish, "RE6": F.relu6, None: lambda x: x}


def make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


@dataclass(frozen=True)
class Block:
    """One inverted residual: kernel, in / expanded / out channels, SE, activation, stride."""

    kernel: int
    in_ch: int
    exp: int
    out: int
    se: bool
    act: str
    stride: int


@dataclass(frozen=True)
class Arch:
    family: str  # "v2" | "v3"
    stem: int
    stem_act: str
    blocks: tuple[Block, ...]
    last_conv: int
    head_hidden: int | None  # V3: Linear to this width + hardswish before the classifier
    bn_eps: float


def _v3(rows, last_hidden) -> Arch:
    blocks, c_in = [], 16
    for k, exp, out, se, act, s in rows:
        blocks.append(Block(k, c_in, exp, out, se, act, s))
        c_in = out
    return Arch("v3", 16, "HS", tuple(blocks), 6 * c_in, last_hidden, 1e-3)


# torchvision mobilenetv3.py _mobilenet_v3_conf: (kernel, expanded, out, use_se, activation, stride)
V3_LARGE = _v3([(3, 16, 16, False, "RE", 1), (3, 64, 24, False, "RE", 2), (3, 72, 24, False, "RE", 1),
                (5, 72, 40, True, "RE", 2), (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1),
                (3, 240, 80, False, "HS", 2), (3, 200, 80, False, "HS", 1), (3, 184, 80, False, "HS", 1),
                (3, 184, 80, False, "HS", 1), (3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1),
                (5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1), (5, 960, 160, True, "HS", 1)], 1280)
V3_SMALL = _v3([(3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
                (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
                (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
                (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1)], 1024)


def mobilenet_v2(width: float = 1.0) -> Arch:
    """torchvision mobilenetv2.py: (t, c, n, s) table, stem 32, last 1280 (scaled when width > 1)."""
    blocks, c_in = [], make_divisible(32 * width)
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)]:
        out = make_divisible(c * width)
        for i in range(n):
            blocks.append(Block(3, c_in, int(round(c_in * t)), out, False, "RE6", s if i == 0 else 1))
            c_in = out
    return Arch("v2", make_divisible(32 * width), "RE6", tuple(blocks), make_divisible(1280 * max(1.0, width)),
                None, 1e-5)


def _block_layers(arch: Arch, b: Block) -> list[tuple[str, object]]:
    """torchvision's children of one block in order: ("cna", conv shape), ("conv", shape), ("bn", c), ("se", ...)."""
    layers: list[tuple[str, object]] = []
    if b.exp != b.in_ch:
        layers.append(("cna", (b.exp, b.in_ch, 1, 1)))
    layers.append(("cna", (b.exp, 1, b.kernel, b.kernel)))
    if b.se:
        layers.append(("se", (b.exp, make_divisible(b.exp // 4))))
    if arch.family == "v3":
        layers.append(("cna", (b.out, b.exp, 1, 1)))
    else:  # V2 projection: bare conv then bare BN
        layers += [("conv", (b.out, b.exp, 1, 1)), ("bn", b.out)]
    return layers


def make_state_dict(arch: Arch, num_classes: int = 1000, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under torchvision's keys; BN statistics randomised too."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def conv(key, shape):
        fan_in = shape[1] * shape[2] * shape[3]
        sd[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5

    def bn(prefix, c):
        sd[f"{prefix}.weight"] = 0.5 + torch.rand(c, generator=g)
        sd[f"{prefix}.bias"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{prefix}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{prefix}.running_var"] = 0.5 + torch.rand(c, generator=g)
        sd[f"{prefix}.num_batches_tracked"] = torch.tensor(7)

    def linear(prefix, out, inp):
        sd[f"{prefix}.weight"] = torch.randn(out, inp, generator=g) * inp ** -0.5
        sd[f"{prefix}.bias"] = 0.1 * torch.randn(out, generator=g)

    conv("features.0.0.weight", (arch.stem, 3, 3, 3))
    bn("features.0.1", arch.stem)
    child = "block" if arch.family == "v3" else "conv"
    for i, b in enumerate(arch.blocks, start=1):
        for j, (kind, spec) in enumerate(_block_layers(arch, b)):
            p = f"features.{i}.{child}.{j}"
            if kind == "cna":
                conv(f"{p}.0.weight", spec)
                bn(f"{p}.1", spec[0])
            elif kind == "conv":
                conv(f"{p}.weight", spec)
            elif kind == "bn":
                bn(p, spec)
            else:
                exp, squeeze = spec
                linear(f"{p}.fc1", squeeze, exp)
                linear(f"{p}.fc2", exp, squeeze)
                sd[f"{p}.fc1.weight"] = sd[f"{p}.fc1.weight"][:, :, None, None]
                sd[f"{p}.fc2.weight"] = sd[f"{p}.fc2.weight"][:, :, None, None]
    last = len(arch.blocks) + 1
    conv(f"features.{last}.0.weight", (arch.last_conv, arch.blocks[-1].out, 1, 1))
    bn(f"features.{last}.1", arch.last_conv)
    if arch.head_hidden:
        linear("classifier.0", arch.head_hidden, arch.last_conv)
        linear("classifier.3", num_classes, arch.head_hidden)
    else:
        linear("classifier.1", num_classes, arch.last_conv)
    return sd


def forward(arch: Arch, sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """torchvision's eval-mode forward of ``sd``."""
    def conv_bn(x, conv_key, bn_prefix, stride=1, groups=1, act=None):
        w = sd[conv_key]
        x = F.conv2d(x, w, None, stride, (w.shape[-1] - 1) // 2, 1, groups)
        x = F.batch_norm(x, sd[f"{bn_prefix}.running_mean"], sd[f"{bn_prefix}.running_var"], sd[f"{bn_prefix}.weight"],
                         sd[f"{bn_prefix}.bias"], False, 0.0, arch.bn_eps)
        return ACTS[act](x)

    x = conv_bn(x, "features.0.0.weight", "features.0.1", 2, act=arch.stem_act)
    child = "block" if arch.family == "v3" else "conv"
    for i, b in enumerate(arch.blocks, start=1):
        inp, j = x, 0
        for kind, spec in _block_layers(arch, b):
            p = f"features.{i}.{child}.{j}"
            if kind == "cna" and spec[1] == 1:  # depthwise
                x = conv_bn(x, f"{p}.0.weight", f"{p}.1", b.stride, b.exp, b.act)
            elif kind == "cna" and spec[0] == b.exp and b.exp != b.in_ch:  # expansion
                x = conv_bn(x, f"{p}.0.weight", f"{p}.1", act=b.act)
            elif kind == "cna":  # V3 projection
                x = conv_bn(x, f"{p}.0.weight", f"{p}.1")
            elif kind == "conv":  # V2 projection, its BN is the next child
                x = conv_bn(x, f"{p}.weight", f"features.{i}.{child}.{j + 1}")
            elif kind == "se":
                s = F.relu(F.conv2d(x.mean((2, 3), keepdim=True), sd[f"{p}.fc1.weight"], sd[f"{p}.fc1.bias"]))
                x = x * F.hardsigmoid(F.conv2d(s, sd[f"{p}.fc2.weight"], sd[f"{p}.fc2.bias"]))
            j += 1
        if b.stride == 1 and b.in_ch == b.out:
            x = x + inp
    last = len(arch.blocks) + 1
    x = conv_bn(x, f"features.{last}.0.weight", f"features.{last}.1", act="HS" if arch.family == "v3" else "RE6")
    x = x.mean((2, 3))
    if arch.head_hidden:
        x = F.hardswish(F.linear(x, sd["classifier.0.weight"], sd["classifier.0.bias"]))
        return F.linear(x, sd["classifier.3.weight"], sd["classifier.3.bias"])
    return F.linear(x, sd["classifier.1.weight"], sd["classifier.1.bias"])
