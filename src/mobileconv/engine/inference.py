"""Evaluate a saved checkpoint on a dataset, and classify image files (``mobileconv eval`` / ``predict``)."""
from __future__ import annotations

import json
import math
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data import (INTERPOLATIONS, MIN_CROP_PCT, BatchTransform, ShardedBatchSampler, build_test_dataset,
                    check_crop, is_crop_pct, limit_samples, load_image, preferred_img_size)
from ..deploy.weights import checkpoint_num_classes, load_state_dict, read_checkpoint
from .checkpoint import _json_or_str
from .config import AMP_DTYPES
from .distributed import DistEnv, resolve_device
from .loop import StepSettings, autocast_dtype, evaluate
from .trainer import build_model, images_fit


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_channel_values(value) -> bool:
    return (isinstance(value, list) and len(value) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))


# recorded field -> (check, what it must be); what eval / predict read from a checkpoint's metadata
RECORDED = {
    "model": (lambda v: isinstance(v, str) and v != "", "a model name"),
    "dataset": (lambda v: isinstance(v, str) and v != "", "a --data value (digits, synthetic or a path)"),
    "img_size": (_is_positive_int, "a positive integer (pixels)"),
    "classes": (lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v), "a list of class names"),
    "mean": (_is_channel_values, "a list of 3 numbers (finite, per channel)"),
    "std": (lambda v: _is_channel_values(v) and all(x > 0 for x in v), "a list of 3 numbers > 0 (finite, per channel)"),
    "crop_pct": (is_crop_pct, f"a number from {MIN_CROP_PCT} to 1"),
    "interpolation": (lambda v: v in INTERPOLATIONS, f"one of {', '.join(INTERPOLATIONS)}"),
}

# How the weights of each source were evaluated, for a checkpoint that records nothing: mobileconv's own test
# images keep the whole shorter side; torchvision's ImageClassification preset resizes to 256 and crops 224
# bilinearly; a timm checkpoint follows its model's pretrained_cfg (timm's resolve_data_config).
SOURCE_CROP = {"mobileconv": (1.0, "bilinear"), "torchvision": (0.875, "bilinear")}


@dataclass
class LoadedCheckpoint:
    """A model with a checkpoint's weights and what the checkpoint (or its run folder) says about them."""

    model: nn.Module
    name: str
    num_classes: int
    # the checkpoint's metadata (model, dataset, classes, img_size, mean, std...: a weights file's header, or what a
    # state.pt of `mobileconv train` records, see read_checkpoint), else its run's summary.json
    meta: dict
    sources: dict  # key of meta -> the file it was read from (the checkpoint or summary.json)
    source: str = "mobileconv"  # who wrote the weights: "mobileconv", "timm" or "torchvision" (detect_source)

    def get(self, key: str, default=None):
        """The recorded value, checked against :data:`RECORDED`; ``default`` when none is recorded."""
        return recorded(self.meta, self.sources, key, default)


def recorded(meta: dict, sources: dict, key: str, default=None):
    """``meta[key]`` if it is what :data:`RECORDED` says it must be, else a ValueError naming the file and field."""
    value = meta.get(key)
    if value is None:
        return default
    check, expected = RECORDED[key]
    if not check(value):
        raise ValueError(f"{sources[key]}: recorded {key} {value!r} is not {expected}")
    return value


def summary_beside(checkpoint: Path, num_classes: int | None = None, model_name: str | None = None) -> dict:
    """The run's summary.json next to a checkpoint (classes, dataset, img_size...), or ``{}``.

    With ``num_classes`` / ``model_name`` given, a summary recording other values is ``{}``: it
    describes another run's model, not this checkpoint (a timm file copied into a run folder).
    """
    path = checkpoint.parent / "summary.json"
    try:
        summary = json.loads(path.read_text()) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    if not isinstance(summary, dict):
        return {}
    if num_classes is not None and summary.get("num_classes", num_classes) != num_classes:
        return {}
    if model_name is not None and summary.get("model", model_name) != model_name:
        return {}
    return summary


def load_checkpoint(model_name: str | None, checkpoint: str | Path, device: torch.device,
                    use_ema: bool = False) -> LoadedCheckpoint:
    """Build the model with as many classes as the checkpoint's classifier has, and load the weights.

    ``model_name`` defaults to the name recorded with the checkpoint (a weights file's metadata, a
    ``state.pt``'s run options, or the run's summary.json beside it). The weights are loaded as
    ``create_model(..., pretrained=checkpoint)`` does (every key and shape checked, BatchNorm eps
    restored from mobileconv metadata). Raises ``ValueError`` (``FileNotFoundError`` for a missing
    file) if the file is unreadable, its recorded model is not one, or its tensors do not fit the model.
    ``use_ema`` takes a training checkpoint's EMA weights (:func:`~mobileconv.deploy.weights.read_checkpoint`).
    """
    from .. import models

    checkpoint = Path(checkpoint)
    tensors, raw_meta = read_checkpoint(checkpoint, use_ema=use_ema)
    num_classes = checkpoint_num_classes(tensors, str(checkpoint))
    if num_classes is None:
        raise ValueError(f"checkpoint {checkpoint} has no classifier: not a classification model's state_dict")
    own = {k: _json_or_str(v) for k, v in raw_meta.items()}
    named = model_name or own.get("model")
    summary = summary_beside(checkpoint, num_classes, named if isinstance(named, str) else None)
    meta = {**summary, **own}
    sources = {**{k: checkpoint.parent / "summary.json" for k in summary}, **{k: checkpoint for k in raw_meta}}
    if model_name is None:
        model_name = recorded(meta, sources, "model")
        if model_name is None:
            raise ValueError(f"checkpoint {checkpoint} does not record its model: pass --model")
        if model_name not in models.list_models():
            raise ValueError(f"{sources['model']}: recorded model {model_name!r} is not a known model (list them "
                             f"with `mobileconv models`); pass --model")
    model = build_model(model_name, num_classes)
    source = load_state_dict(model, tensors, raw_meta, name=str(checkpoint))
    if source == "mobileconv" and meta.get("converted_from") in ("timm", "torchvision"):
        source = meta["converted_from"]  # `mobileconv convert` of published weights: evaluated as they were
    return LoadedCheckpoint(model.to(device).eval(), model_name, num_classes, meta, sources, source)


def check_positive(value: int | None, option: str) -> None:
    """A ValueError naming ``option`` unless ``value`` is None or a positive integer."""
    if value is not None and not _is_positive_int(value):
        raise ValueError(f"{option} must be a positive integer, got {value!r}")


def resolve_img_size(loaded: LoadedCheckpoint, img_size: int | None, data: str | None = None) -> int:
    """``img_size`` (--img-size), else the recorded size, else ``data``'s preferred size, else the model's.

    Raises ``ValueError`` if it is smaller than the model accepts (its ``min_input_size``).
    """
    if img_size is not None:
        source = f"--img-size {img_size}"
    elif loaded.get("img_size") is not None:
        img_size = loaded.get("img_size")
        source = f"img_size {img_size} recorded in {loaded.sources['img_size']}"
    elif data is not None and preferred_img_size(data) is not None:
        img_size = preferred_img_size(data)
        source = f"the default img_size {img_size} of --data {data}"
    else:
        return int(loaded.model.pretrained_cfg["input_size"][-1])
    minimum = getattr(loaded.model, "min_input_size", 1)
    if img_size < minimum:
        raise ValueError(f"{source} is too small for {loaded.name}: it needs at least {minimum} pixels; "
                         f"pass a larger --img-size")
    return img_size


def resolve_normalization(loaded: LoadedCheckpoint) -> tuple[list[float], list[float]]:
    """Per-channel ``(mean, std)`` for ``eval`` and ``predict`` alike: those recorded with the checkpoint
    (a weights file's metadata, a ``state.pt``'s entries, or its run's summary.json), else the model's
    ``pretrained_cfg``'s (mean and std each on its own).

    A checkpoint without metadata (timm, torchvision) was trained with its model's usual
    normalisation (ImageNet's for the ImageNet models), as timm's ``resolve_data_config`` assumes;
    the data it is evaluated on does not change what the model expects.
    """
    cfg = loaded.model.pretrained_cfg
    return list(loaded.get("mean", cfg["mean"])), list(loaded.get("std", cfg["std"]))


def resolve_crop(loaded: LoadedCheckpoint, crop_pct: float | None = None,
                 interpolation: str | None = None) -> tuple[float, str]:
    """``(crop_pct, interpolation)`` with which ``eval`` and ``predict`` resize and crop image files.

    Each is the value given, else the one recorded with the checkpoint, else the one its source's
    weights were evaluated with (:data:`SOURCE_CROP`): 1.0 / bilinear for those of a ``mobileconv train`` run
    (it records its dataset; its test images keep the whole shorter side), 0.875 / bilinear for torchvision's,
    and the model's ``pretrained_cfg`` (0.875 / bicubic for the ImageNet forms) for timm's and for any other
    (a mobileconv file that records no dataset), as timm's ``resolve_data_config`` does. A checkpoint written
    by ``mobileconv convert`` counts as the source it was converted from.
    """
    cfg = loaded.model.pretrained_cfg
    model_default = cfg.get("crop_pct", 1.0), cfg.get("interpolation", "bilinear")  # timm's resolve_data_config
    saved_by_hand = loaded.source == "mobileconv" and loaded.get("dataset") is None  # save_weights, not a train run
    default = model_default if saved_by_hand else SOURCE_CROP.get(loaded.source, model_default)
    crop_pct = loaded.get("crop_pct", default[0]) if crop_pct is None else crop_pct
    interpolation = loaded.get("interpolation", default[1]) if interpolation is None else interpolation
    check_crop(crop_pct, interpolation)
    return float(crop_pct), interpolation


def evaluate_checkpoint(model_name: str | None, checkpoint: str | Path, data: str | None = None,
                        img_size: int | None = None, batch_size: int = 256, device: str = "auto",
                        max_samples: int | None = None, use_ema: bool = False, crop_pct: float | None = None,
                        interpolation: str | None = None, workers: int = 0, optimize: bool = False,
                        progress: bool = False, amp: str | None = None, channels_last: bool = False) -> dict:
    """top-1 / top-5 / per-class accuracy / confusion matrix of a checkpoint on a dataset's test split.

    ``data`` and ``img_size`` default to those recorded with the checkpoint; images are normalised
    as ``predict`` normalises them (:func:`resolve_normalization`): with the recorded ``mean`` / ``std``
    (the training run's), else with the model's ``pretrained_cfg``'s; ``use_ema`` takes a training
    checkpoint's EMA weights. An ImageFolder tree's images are resized and centre-cropped with ``crop_pct`` and
    ``interpolation`` (:func:`resolve_crop`; given for digits, synthetic or CIFAR data, whose arrays are resized
    whole, they are refused). ``workers`` processes decode the images (0: this one). ``optimize`` evaluates
    :func:`~mobileconv.optimize_for_inference`'s copy of the model (BN folded, MixConv fused, oneDNN on CPU:
    faster, logits within 1e-4 of their scale); ``amp`` runs the model under autocast in ``"bfloat16"``,
    ``"float16"`` or ``"auto"`` (float16 on a GPU, bfloat16 on the CPU), ``channels_last`` in that memory format
    (timm's ``validate.py --amp`` / ``--channels-last``); ``progress`` shows a progress bar. A batch of images of
    ``img_size`` that the memory cannot hold is refused with a ``ValueError`` (up front where it cannot be
    allocated at all).
    """
    check_positive(img_size, "--img-size")
    check_positive(max_samples, "--max-val-samples")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"--workers must be an integer >= 0, got {workers!r}")
    check_crop(crop_pct, interpolation)  # the given ones, before the checkpoint is read
    if amp not in (None, *AMP_DTYPES):
        raise ValueError(f"--amp-dtype must be one of {', '.join(AMP_DTYPES)}, got {amp!r}")
    dev = resolve_device(device)
    settings = StepSettings(amp_dtype=autocast_dtype(amp, dev), channels_last=channels_last)
    loaded = load_checkpoint(model_name, checkpoint, dev, use_ema)
    given = data
    data = data or loaded.get("dataset")
    if data is None:
        raise ValueError(f"checkpoint {checkpoint} does not record its dataset: pass --data")
    img_size = resolve_img_size(loaded, img_size, data)
    crop = resolve_crop(loaded, crop_pct, interpolation)
    explicit = [f"--{name} {value}" for name, value in (("crop-pct", crop_pct), ("interpolation", interpolation))
                if value is not None]
    batch = min(batch_size, max_samples or batch_size)
    with images_fit(batch, img_size, dev):  # before any image is made (or decoded and resized by PIL)
        return _evaluate_on(loaded, checkpoint, data, given, img_size, crop, explicit, batch_size, max_samples, dev,
                            workers, optimize, progress, settings)


def _evaluate_on(loaded: LoadedCheckpoint, checkpoint: str | Path, data: str, given: str | None, img_size: int,
                 crop: tuple[float, str], explicit: list[str], batch_size: int, max_samples: int | None,
                 dev: torch.device, workers: int, optimize: bool = False, progress: bool = False,
                 settings: StepSettings = StepSettings()) -> dict:
    try:
        test_set, info = build_test_dataset(data, img_size, *crop)
    except ValueError as e:
        if given is not None:
            raise
        raise ValueError(f"{e} (the dataset {loaded.sources['dataset']} records; pass --data to use "
                         f"another)") from None
    named = f"--data {data}" if given else f"its recorded dataset {data!r}"
    if explicit and info.kind != "imagefolder":
        raise ValueError(f"{' and '.join(explicit)}: {named} is an array dataset ({info.kind}), resized whole; crop_pct "
                         f"and interpolation apply to image files (an ImageFolder tree, or predict)")
    if info.num_classes != loaded.num_classes:
        raise ValueError(f"checkpoint {checkpoint} has {loaded.num_classes} classes, {named} has "
                         f"{info.num_classes}")
    trained_on = loaded.get("classes")
    # same count, other labels: scores would mean nothing (names compared in NFC form, as ImageFolder matches them)
    if trained_on and [unicodedata.normalize("NFC", c) for c in trained_on] != list(info.classes):
        raise ValueError(f"checkpoint {checkpoint} was trained on the classes {_preview(trained_on)}, {named} has "
                         f"{_preview(info.classes)}; evaluate it on data with its classes")
    test_set = limit_samples(test_set, max_samples)
    loader = DataLoader(test_set, batch_sampler=ShardedBatchSampler(len(test_set), batch_size, shuffle=False,
                                                                    drop_last=False),
                        num_workers=workers, pin_memory=dev.type == "cuda")
    transform = BatchTransform(img_size, *resolve_normalization(loaded)).to(dev)
    model = loaded.model
    if optimize:
        from ..deploy.optimize import optimize_for_inference

        model = optimize_for_inference(model, example_input=torch.zeros(1, 3, img_size, img_size, device=dev))
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    result = evaluate(model, loader, transform, info.num_classes, DistEnv(device=dev), settings=settings,
                      progress=progress)
    preprocessing = {"crop_pct": crop[0], "interpolation": crop[1]} if info.kind == "imagefolder" else {}
    amp = None if settings.amp_dtype is None else str(settings.amp_dtype).removeprefix("torch.")
    return {"model": loaded.name, "checkpoint": str(checkpoint), "dataset": info.name, "split": info.test_split,
            "img_size": img_size, **preprocessing, "optimized": optimize, "amp": amp,
            "channels_last": settings.channels_last, "classes": info.classes, **result}


def _preview(names, count: int = 3) -> str:
    shown = ", ".join(map(repr, list(names)[:count]))
    return f"[{shown}{', ...' if len(names) > count else ''}]"


def predict_images(model_name: str | None, checkpoint: str | Path, images: str | Path | list[str | Path],
                   top_k: int = 5, img_size: int | None = None, device: str = "auto",
                   use_ema: bool = False, crop_pct: float | None = None,
                   interpolation: str | None = None) -> list[dict]:
    """Top-k classes (name, probability) per image file, preprocessed as the checkpoint's test images were.

    ``images`` is a list of paths, or one path; ``use_ema`` takes a training checkpoint's EMA weights;
    ``crop_pct`` and ``interpolation`` default as :func:`resolve_crop` says. An ``img_size`` too large for the
    memory is refused with a ``ValueError`` (before any image is read where one image of that size cannot be
    allocated at all).
    """
    if isinstance(images, (str, os.PathLike)):  # one path, not a sequence of characters
        images = [images]
    check_positive(top_k, "--top-k")
    check_positive(img_size, "--img-size")
    check_crop(crop_pct, interpolation)  # the given ones, before the checkpoint is read
    dev = resolve_device(device)
    loaded = load_checkpoint(model_name, checkpoint, dev, use_ema)
    classes = loaded.get("classes") or [str(i) for i in range(loaded.num_classes)]
    if len(classes) != loaded.num_classes:
        raise ValueError(f"{loaded.sources['classes']}: {len(classes)} recorded class names for the checkpoint's "
                         f"{loaded.num_classes} outputs")
    # as eval resolves it: with no recorded img_size, the recorded dataset's own size (16 for digits)
    img_size = resolve_img_size(loaded, img_size, loaded.get("dataset"))
    crop = resolve_crop(loaded, crop_pct, interpolation)
    transform = BatchTransform(img_size, *resolve_normalization(loaded)).to(dev)
    k = min(top_k, loaded.num_classes)
    for path in images:  # every path before the first prediction
        if Path(path).is_dir():
            raise ValueError(f"image {path} is a folder; pass image files (e.g. {Path(path) / '*.jpg'})")
        if not Path(path).is_file():
            raise ValueError(f"image {path}: no such file")
    results = []
    with images_fit(1, img_size, dev):  # before PIL resizes an image to that size (the OOM killer ended that)
        for path in images:
            x = transform(load_image(Path(path), img_size, *crop).unsqueeze(0).to(dev))
            with torch.no_grad():
                probs = loaded.model(x).float().softmax(dim=1)[0]
            top = probs.topk(k)
            results.append({"image": str(path), "top": [{"class": classes[i], "index": int(i), "prob": float(p)}
                                                        for p, i in zip(top.values.tolist(), top.indices.tolist())]})
    return results
