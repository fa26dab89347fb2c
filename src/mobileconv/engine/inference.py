"""Evaluate a saved checkpoint on a dataset, and classify image files (``mobileconv eval`` / ``predict``)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data import (BatchTransform, ShardedBatchSampler, build_datasets, limit_samples, load_image,
                    preferred_img_size)
from .checkpoint import load_weights
from .distributed import DistEnv, resolve_device
from .loop import evaluate
from .trainer import build_model, default_img_size

CLASSIFIER_KEY = "classifier.weight"


@dataclass
class LoadedCheckpoint:
    """A model with a checkpoint's weights and what the checkpoint (or its run folder) says about them."""

    model: nn.Module
    name: str
    num_classes: int
    meta: dict  # safetensors metadata (model, dataset, classes, img_size, mean, std...), else summary.json

    def get(self, key: str, default=None):
        return self.meta.get(key, default)


def summary_beside(checkpoint: Path) -> dict:
    """The run's summary.json next to a checkpoint (classes, dataset, img_size...), or ``{}``."""
    path = checkpoint.parent / "summary.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def load_checkpoint(model_name: str | None, checkpoint: str | Path, device: torch.device) -> LoadedCheckpoint:
    """Build the model with as many classes as the checkpoint's classifier has, and load the weights.

    ``model_name`` defaults to the name recorded with the checkpoint. Raises ``ValueError`` if the
    file is missing / unreadable or its tensors do not fit the model.
    """
    checkpoint = Path(checkpoint)
    tensors, meta = load_weights(checkpoint)
    meta = {**summary_beside(checkpoint), **meta}
    model_name = model_name or meta.get("model")
    if model_name is None:
        raise ValueError(f"checkpoint {checkpoint} does not record its model: pass --model")
    if CLASSIFIER_KEY not in tensors:
        raise ValueError(f"checkpoint {checkpoint} has no {CLASSIFIER_KEY!r}: not a mobileconv model state_dict")
    num_classes = int(tensors[CLASSIFIER_KEY].shape[0])
    model = build_model(model_name, num_classes)
    result = model.load_state_dict(tensors, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"checkpoint {checkpoint} does not fit --model {model_name}: "
                         f"{len(result.missing_keys)} missing tensors (e.g. {result.missing_keys[:2]}), "
                         f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:2]})")
    return LoadedCheckpoint(model.to(device).eval(), model_name, num_classes, meta)


def evaluate_checkpoint(model_name: str | None, checkpoint: str | Path, data: str | None = None,
                        img_size: int | None = None, batch_size: int = 256, device: str = "auto",
                        max_samples: int | None = None) -> dict:
    """top-1 / top-5 / per-class accuracy / confusion matrix of a checkpoint on a dataset's test split.

    ``data`` and ``img_size`` default to those recorded with the checkpoint.
    """
    dev = resolve_device(device)
    loaded = load_checkpoint(model_name, checkpoint, dev)
    data = data or loaded.get("dataset")
    if data is None:
        raise ValueError(f"checkpoint {checkpoint} does not record its dataset: pass --data")
    img_size = img_size or loaded.get("img_size") or preferred_img_size(data) or default_img_size(loaded.name)
    _, test_set, info = build_datasets(data, img_size)
    if info.num_classes != loaded.num_classes:
        raise ValueError(f"checkpoint {checkpoint} has {loaded.num_classes} classes, --data {data} has "
                         f"{info.num_classes}")
    test_set = limit_samples(test_set, max_samples)
    loader = DataLoader(test_set, batch_sampler=ShardedBatchSampler(len(test_set), batch_size, shuffle=False,
                                                                    drop_last=False))
    transform = BatchTransform(img_size, info.mean, info.std).to(dev)
    result = evaluate(loaded.model, loader, transform, info.num_classes, DistEnv(device=dev))
    return {"model": loaded.name, "checkpoint": str(checkpoint), "dataset": info.name, "split": info.test_split,
            "img_size": img_size, "classes": info.classes, **result}


def predict_images(model_name: str | None, checkpoint: str | Path, images: list[str | Path], top_k: int = 5,
                   img_size: int | None = None, device: str = "auto") -> list[dict]:
    """Top-k classes (name, probability) per image file, preprocessed as the checkpoint's test images were."""
    dev = resolve_device(device)
    loaded = load_checkpoint(model_name, checkpoint, dev)
    classes = loaded.get("classes") or [str(i) for i in range(loaded.num_classes)]
    if len(classes) != loaded.num_classes:
        raise ValueError(f"checkpoint {checkpoint}: {len(classes)} class names for {loaded.num_classes} outputs")
    img_size = img_size or loaded.get("img_size") or default_img_size(loaded.name)
    transform = BatchTransform(img_size, loaded.get("mean", (0.5,) * 3), loaded.get("std", (0.5,) * 3)).to(dev)
    k = min(top_k, loaded.num_classes)
    results = []
    for path in images:
        if not Path(path).is_file():
            raise ValueError(f"image {path}: no such file")
        x = transform(load_image(Path(path), img_size).unsqueeze(0).to(dev))
        with torch.no_grad():
            probs = loaded.model(x).float().softmax(dim=1)[0]
        top = probs.topk(k)
        results.append({"image": str(path), "top": [{"class": classes[i], "index": int(i), "prob": float(p)}
                                                    for p, i in zip(top.values.tolist(), top.indices.tolist())]})
    return results
