"""Map a torchvision MobileNetV2 / V3 ``state_dict`` onto mobileconv's (timm's) module names.

torchvision keeps the network as one flat ``features`` Sequential plus a ``classifier``;
mobileconv (like timm) names a stem, stages of blocks and a head. The mapping is derived from
structure, not from a per-model table, so every width and depth of the two families works:

==========================================  =============================================
torchvision                                 mobileconv / timm
==========================================  =============================================
``features.0`` (conv, BN)                   ``conv_stem``, ``bn1``
``features.i`` for i = 1 .. L-1 (blocks)    the i-th block ``blocks.<stage>.<j>`` in order
``features.L`` (1x1 conv, BN)               the last block (V3: a ConvBnAct, ``conv``/``bn1``),
                                            or ``conv_head``, ``bn2`` when the model has ``bn2``
                                            (V2)
``classifier`` Linear layers in order       ``conv_head`` (V3: Linear ``(out, in)`` becomes a
                                            ``(out, in, 1, 1)`` conv) then ``classifier``
==========================================  =============================================

Inside a block (V3 ``block.<j>``, V2 ``conv.<j>``) the children are read in order as units:
a conv followed by its BN (either a ``Conv2dNormActivation`` ``<j>.0`` / ``<j>.1``, or, in V2's
projection, a bare conv ``<j>`` and a bare BN ``<j+1>``) or a squeeze-excitation (``fc1`` /
``fc2``). The unit with a kernel larger than 1 is the depthwise conv; a unit before it is the
expansion, the one after it the projection. Their mobileconv names depend on the block type:
inverted residual ``conv_pw/bn1, conv_dw/bn2, conv_pwl/bn3``; depthwise-separable
``conv_dw/bn1, conv_pw/bn2``; ConvBnAct ``conv/bn1``; SE ``se.conv_reduce / se.conv_expand``.

Nothing is checked here beyond the structure; the caller validates names and shapes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

BN_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# torchvision's BatchNorm eps: MobileNetV3 uses BatchNorm2d(eps=0.001, momentum=0.01), MobileNetV2 the default
TORCHVISION_BN_EPS = {"mobilenet_v3": 1e-3, "mobilenet_v2": 1e-5}

_FEATURE_KEY = re.compile(r"^features\.(\d+)\.(.+)$")
_CLASSIFIER_KEY = re.compile(r"^classifier\.(\d+)\.(weight|bias)$")
_BLOCK_KEY = re.compile(r"^(block|conv)\.(\d+)\.(.+)$")
_MODEL_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(\d+)\.")

# mobileconv names of each role, per block type (the block type is read off the model's own keys)
_ROLE_NAMES = {
    "inverted_residual": {"expand": ("conv_pw", "bn1"), "dw": ("conv_dw", "bn2"), "proj": ("conv_pwl", "bn3")},
    "depthwise_separable": {"dw": ("conv_dw", "bn1"), "proj": ("conv_pw", "bn2")},
    "conv_bn_act": {"conv": ("conv", "bn1")},
}


@dataclass
class _Unit:
    """One conv + BN pair (``kind="conv"``) or one squeeze-excitation (``kind="se"``), with source keys."""

    kind: str
    tensors: dict[str, tuple[str, torch.Tensor]] = field(default_factory=dict)  # local name -> (source key, value)

    @property
    def kernel_size(self) -> int:
        return self.tensors["conv.weight"][1].shape[-1]


def is_torchvision_layout(state_dict: dict[str, torch.Tensor]) -> bool:
    """True when the keys are torchvision's MobileNetV2 / V3 ones (``features.*`` + ``classifier.<i>.*``)."""
    keys = list(state_dict)
    return (bool(keys) and all(_FEATURE_KEY.match(k) or _CLASSIFIER_KEY.match(k) for k in keys)
            and any(_FEATURE_KEY.match(k) and _BLOCK_KEY.match(_FEATURE_KEY.match(k).group(2)) for k in keys))


def torchvision_family(state_dict: dict[str, torch.Tensor]) -> str:
    """``"mobilenet_v3"`` (blocks hold ``block.<j>``) or ``"mobilenet_v2"`` (blocks hold ``conv.<j>``)."""
    return "mobilenet_v3" if any(".block." in k for k in state_dict) else "mobilenet_v2"


def torchvision_num_classes(state_dict: dict[str, torch.Tensor]) -> int | None:
    """Output width of the last Linear of ``classifier``."""
    linears = _classifier_linears(state_dict)
    return linears[-1]["weight"][1].shape[0] if linears else None


def map_torchvision(state_dict: dict[str, torch.Tensor],
                    model_keys: list[str]) -> tuple[dict[str, tuple[str, torch.Tensor]], list[str]]:
    """Rename a torchvision MobileNetV2 / V3 ``state_dict`` to mobileconv names.

    Args:
        state_dict: torchvision's tensors.
        model_keys: the target model's ``state_dict()`` keys (used for its block order and types).

    Returns:
        ``(mapped, unmapped)``: ``{mobileconv key: (torchvision key, tensor)}``, and the
        torchvision keys that found no place in the model (it has fewer blocks or layers).
    """
    model_keys = set(model_keys)
    features = _group_features(state_dict)
    mapped: dict[str, tuple[str, torch.Tensor]] = {}
    unmapped: list[str] = []

    def place(units: list[_Unit], targets: dict[str, tuple[str, str]], prefix: str) -> None:
        for role, unit in _assign_roles(units):
            names = ("se.conv_reduce", "se.conv_expand") if role == "se" else targets.get(role)
            if names is None:
                unmapped.extend(src for src, _ in unit.tensors.values())
                continue
            for local, (src, value) in unit.tensors.items():
                mapped[_join(prefix, _target_name(local, names))] = (src, value)

    stem = features.pop(0, None)
    if stem is not None:
        place(_units(stem), {"conv": ("conv_stem", "bn1")}, "")
    has_bn_head = "bn2.weight" in model_keys and "conv_head.weight" in model_keys
    if has_bn_head and features:  # V2: the last 1x1 conv + BN is conv_head / bn2, not a block
        place(_units(features.pop(max(features))), {"conv": ("conv_head", "bn2")}, "")
    model_blocks = _model_blocks(model_keys)
    for i, index in enumerate(sorted(features)):
        if i < len(model_blocks):
            prefix = model_blocks[i]
            place(_units(features[index]), _ROLE_NAMES[_block_type(model_keys, prefix)], prefix)
        else:
            unmapped.extend(src for child in features[index] for src, _ in child.values())

    head_targets = (["conv_head"] if "conv_head.weight" in model_keys and not has_bn_head else []) + ["classifier"]
    linears = _classifier_linears(state_dict)
    pairs = list(zip(reversed(head_targets), reversed(linears)))  # the last Linear is the classifier
    for target, linear in pairs:
        for param, (src, value) in linear.items():
            if target == "conv_head" and param == "weight" and value.dim() == 2:
                value = value[:, :, None, None]  # Linear (out, in) == 1x1 conv (out, in, 1, 1) on pooled features
            mapped[f"{target}.{param}"] = (src, value)
    unmapped.extend(src for linear in linears[:len(linears) - len(pairs)] for src, _ in linear.values())
    return mapped, unmapped


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _has(model_keys: set[str], module: str) -> bool:
    return any(k.startswith(module + ".") for k in model_keys)


def _target_name(local: str, names: tuple[str, str]) -> str:
    """``conv.weight`` -> ``<conv name>.weight``; ``bn.<p>`` -> ``<bn name>.<p>``; SE ``fc1/fc2`` likewise."""
    part, param = local.split(".", 1)
    return f"{names[0] if part in ('conv', 'fc1') else names[1]}.{param}"


def _group_features(state_dict: dict[str, torch.Tensor]) -> dict[int, list[dict[str, tuple[str, torch.Tensor]]]]:
    """``features.<i>`` -> its children in order, each ``{local key: (source key, tensor)}``.

    A stem / head ``Conv2dNormActivation`` is one child; a block has one child per
    ``block.<j>`` / ``conv.<j>``.
    """
    grouped: dict[int, dict[int, dict[str, tuple[str, torch.Tensor]]]] = {}
    for key, value in state_dict.items():
        m = _FEATURE_KEY.match(key)
        if m is None:
            continue
        index, rest = int(m.group(1)), m.group(2)
        block = _BLOCK_KEY.match(rest)
        child, local = (int(block.group(2)), block.group(3)) if block else (-1, rest)
        grouped.setdefault(index, {}).setdefault(child, {})[local] = (key, value)
    return {i: [children[j] for j in sorted(children)] for i, children in grouped.items()}


def _units(children: list[dict[str, tuple[str, torch.Tensor]]]) -> list[_Unit]:
    """Read a block's children as conv+BN units and SE units (see the module docstring)."""
    units: list[_Unit] = []
    for child in children:
        if "fc1.weight" in child:
            units.append(_Unit("se", dict(child)))
        elif "0.weight" in child and "1.running_mean" in child and child["0.weight"][1].dim() == 4:  # conv, BN
            unit = _Unit("conv", {"conv.weight": child["0.weight"]})
            unit.tensors.update({f"bn.{p}": child[f"1.{p}"] for p in BN_PARAMS if f"1.{p}" in child})
            units.append(unit)
        elif "weight" in child and child["weight"][1].dim() == 4:  # bare conv (V2 projection)
            units.append(_Unit("conv", {"conv.weight": child["weight"]}))
        elif "running_mean" in child and units and units[-1].kind == "conv":  # bare BN after it
            units[-1].tensors.update({f"bn.{p}": child[p] for p in BN_PARAMS if p in child})
        else:
            found = sorted((src, list(value.shape)) for src, value in child.values())
            shapes = ", ".join(f"{src} {shape}" for src, shape in found)
            raise ValueError(f"unrecognised torchvision layer: {shapes} (expected a conv with a 4-D weight and its "
                             f"BatchNorm, or a squeeze-excitation fc1 / fc2)")
    return units


def _assign_roles(units: list[_Unit]) -> list[tuple[str, _Unit]]:
    """Name each unit: ``expand`` / ``dw`` / ``proj`` around the one conv with a k > 1 kernel, ``se``.

    A unit list without a k > 1 conv is a single 1x1 ``conv`` (stem, head, ConvBnAct).
    """
    convs = [u for u in units if u.kind == "conv"]
    spatial = [i for i, u in enumerate(convs) if u.kernel_size > 1]
    roles = []
    if len(convs) == 1:
        roles.append(("conv", convs[0]))
    elif len(spatial) == 1:
        dw = spatial[0]
        before, after = convs[:dw], convs[dw + 1:]
        roles += [("expand", u) for u in before[-1:]] + [("dw", convs[dw])] + [("proj", u) for u in after[:1]]
        roles += [("unknown", u) for u in before[:-1] + after[1:]]
    else:
        roles += [("unknown", u) for u in convs]
    roles += [("se", u) for u in units if u.kind == "se"]
    return roles


def _model_blocks(model_keys: set[str]) -> list[str]:
    """The model's blocks ``blocks.<stage>.<i>`` in forward order."""
    found = {(int(m.group(1)), int(m.group(2))) for k in model_keys if (m := _MODEL_BLOCK_KEY.match(k))}
    return [f"blocks.{s}.{i}" for s, i in sorted(found)]


def _block_type(model_keys: set[str], prefix: str) -> str:
    if _has(model_keys, f"{prefix}.conv_pwl"):
        return "inverted_residual"
    if _has(model_keys, f"{prefix}.conv_dw"):
        return "depthwise_separable"
    return "conv_bn_act"


def _classifier_linears(state_dict: dict[str, torch.Tensor]) -> list[dict[str, tuple[str, torch.Tensor]]]:
    """The ``classifier.<i>`` Linear layers in order, each ``{"weight"/"bias": (source key, tensor)}``."""
    layers: dict[int, dict[str, tuple[str, torch.Tensor]]] = {}
    for key, value in state_dict.items():
        if m := _CLASSIFIER_KEY.match(key):
            layers.setdefault(int(m.group(1)), {})[m.group(2)] = (key, value)
    return [layers[i] for i in sorted(layers)]
