"""Checkpoints: atomic writes, safetensors weights, and a trainer state loadable with ``weights_only=True``.

A run folder holds ``last.safetensors`` / ``best.safetensors`` (a plain ``model.state_dict()``,
the EMA weights when EMA is on, plus string metadata: model, classes, image size,
normalisation) and ``state.pt`` (everything needed to resume: model, optimizer, scheduler,
EMA, gradient scaler, epoch, RNG states, metrics history; tensors and plain containers only).
Every file is written to a temporary file in the same folder, flushed, fsync'ed and renamed
over the old one with ``os.replace``, and the folder is fsync'ed: a kill or a crash at any moment
leaves the previous file or the new one, whole.
"""
from __future__ import annotations

import io
import json
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from ..deploy.weights import torch_load_reason, write_atomically

STATE_FILE, LAST_FILE, BEST_FILE = "state.pt", "last.safetensors", "best.safetensors"
EPOCH_FILE = "checkpoint-{epoch}.safetensors"  # --checkpoint-hist: the weights after one of the best epochs


def epoch_files(folder: str | Path) -> dict[int, Path]:
    """The ``checkpoint-EPOCH.safetensors`` files in ``folder``, by epoch."""
    found = {}
    for path in Path(folder).glob(EPOCH_FILE.format(epoch="*")):
        number = path.name[len("checkpoint-"):-len(".safetensors")]
        if number.isdigit():
            found[int(number)] = path
    return found


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, rename it onto ``path``, fsync the folder.

    The file ends up as ``open(path, "wb")`` would leave it: a replaced file keeps its permissions
    (a new one gets the umask's), and a symbolic link is followed (its target is replaced, the
    link kept). The temporary file is a new one of its own (``mkstemp``), never an existing file
    or link of the same name, and its name fits beside any valid name of ``path``
    (:func:`~mobileconv.deploy.weights.write_atomically`, which mobileconv's other writers share).
    If ``write`` (or anything before the rename) fails, the temporary file is removed and ``path``
    keeps its previous content; an ``OSError`` that names no file (a full disk) is raised again
    naming ``path``.
    """
    path = Path(os.path.realpath(path)) if Path(path).is_symlink() else Path(path)

    def write_to(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)

    try:
        return write_atomically(path, write_to)
    except OSError as e:
        if e.strerror and e.filename is None:  # a full disk names no file
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def probe_writable(folder: str | Path) -> None:
    """Create and remove a temporary file in ``folder``; the ``OSError`` says why that fails.

    Tried rather than read from permission bits: root passes ``os.access`` on read-only mounts and ``/proc``.
    """
    with tempfile.TemporaryFile(dir=folder):
        pass


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Lay out a matplotlib figure (``tight_layout``), write it to ``path`` as PNG atomically, and close it."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 - only where a plot is asked for

    try:
        fig.tight_layout()
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    finally:
        plt.close(fig)


# ---- model weights (safetensors) ----------------------------------------------------------------

def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict | None = None) -> Path:
    """Write a ``state_dict`` as safetensors; ``metadata`` values are JSON-encoded unless strings."""
    from safetensors.torch import save

    tensors = {name: t.detach().cpu().contiguous() for name, t in state_dict.items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    return atomic_write_bytes(path, save(tensors, metadata=meta))


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a safetensors file (JSON values decoded); ``ValueError`` if unreadable."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}
            raw_meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"checkpoint {path}: not a safetensors file ({e})") from None
    return tensors, {k: _json_or_str(v) for k, v in raw_meta.items()}


def load_metadata(path: str | Path) -> dict:
    """The metadata of a safetensors file (JSON values decoded) without reading its tensors; ``{}`` if unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - missing, truncated, or not safetensors: nothing recorded
        return {}
    return {k: _json_or_str(v) for k, v in raw_meta.items()}


def _json_or_str(value: str):
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


# ---- trainer state (torch.save, loaded with weights_only=True) ----------------------------------

def save_state(path: str | Path, state: dict) -> Path:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_state(path: str | Path) -> dict:
    """A trainer state written by :func:`save_state`; never unpickles anything but tensors and containers."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--resume: {path} not found (a run folder holds {STATE_FILE} after its first epoch)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file (torch_load_reason: without torch's advice to load unsafely)
        raise ValueError(f"--resume: cannot load {path} (truncated, corrupt, or not a state.pt of mobileconv train: "
                         f"{torch_load_reason(e)})") from None


def get_rng_states() -> dict:
    """Python, NumPy and torch (CPU and CUDA) generator states as tensors and plain containers."""
    version, py_state, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": [version, list(py_state), gauss],
        "numpy": [np_kind, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    version, py_state, gauss = states["python"]
    random.setstate((version, tuple(py_state), gauss))
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = states["numpy"]
    np.random.set_state((np_kind, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# ---- averaging (timm's avg_checkpoints.py) ------------------------------------------------------

def average_checkpoints(sources: list[str | Path], dst: str | Path, top: int | None = None,
                        use_ema: bool = False, metric: str = "top1") -> dict:
    """Write to ``dst`` the mean of the weights of ``sources``, as timm's ``avg_checkpoints.py`` makes it.

    A source is a checkpoint file (any that :func:`~mobileconv.deploy.weights.read_checkpoint` reads, timm's and
    torchvision's included) or a run folder of ``mobileconv train --checkpoint-hist N``, for its
    ``checkpoint-EPOCH.safetensors`` files. ``top`` keeps the ``top`` best of them by the test ``metric`` (``top1``,
    ``top5`` or ``loss``, as ``--eval-metric``) that ``mobileconv train`` records in its weights files.
    Floating-point tensors are averaged in float64 and stored in their own dtype; integer ones (BatchNorm's
    ``num_batches_tracked``) are taken from the latest epoch (the last source where no epoch is recorded). The
    sources must hold the same tensor names and shapes. ``dst`` gets the latest source's metadata (model, classes,
    normalisation...) with ``averaged_epochs`` in place of its epoch and metrics; nothing is written unless every
    source is read and fits. Returns ``{"files", "epochs", "tensors"}``.
    """
    from ..deploy.weights import check_output_path, read_checkpoint  # noqa: PLC0415 - deploy imports this module
    from .config import EVAL_METRICS  # noqa: PLC0415 - config imports the data package
    from .metrics import RECORDED_METRICS, metric_of, rank_key  # noqa: PLC0415 - metrics imports this module

    if metric not in EVAL_METRICS:
        raise ValueError(f"--metric must be one of {', '.join(EVAL_METRICS)}, got {metric!r}")
    check_output_path(dst)
    read = [(path, *read_checkpoint(path, use_ema=use_ema)) for path in _average_sources(sources)]
    if top is not None:
        rows = [{"epoch": _recorded(meta, "epoch") or 0, **{k: _recorded(meta, k) for k in RECORDED_METRICS}}
                for _, _, meta in read]
        missing = [str(path) for (path, _, _), row in zip(read, rows) if metric_of(row, metric) is None]
        if missing:
            raise ValueError(f"--top {top} ranks checkpoints by the test {metric} that mobileconv train records in its "
                             f"weights files; {', '.join(missing)} record(s) none")
        order = sorted(range(len(read)), key=lambda i: rank_key(rows[i], metric))
        read = [read[i] for i in order[:top]]
    epochs = [_recorded(meta, "epoch") for _, _, meta in read]
    if None not in epochs:  # oldest first: the last is the latest
        read, epochs = [read[i] for i in sorted(range(len(read)), key=epochs.__getitem__)], sorted(epochs)
    _check_averageable(read)
    averaged = {}
    for name, value in read[-1][1].items():
        if value.is_floating_point():
            averaged[name] = (sum(tensors[name].double() for _, tensors, _ in read) / len(read)).to(value.dtype)
        else:  # num_batches_tracked: the latest epoch's count
            averaged[name] = value
    meta = {k: _json_or_str(str(v)) for k, v in read[-1][2].items() if k not in ("epoch", *RECORDED_METRICS)}
    if None not in epochs:
        meta["averaged_epochs"] = epochs
    save_weights(dst, averaged, meta)
    return {"files": [str(path) for path, _, _ in read], "epochs": None if None in epochs else epochs,
            "tensors": len(averaged)}


def _check_averageable(read: list[tuple[Path, dict[str, torch.Tensor], dict]]) -> None:
    """Refuse checkpoints of different recorded models, tensor names or shapes."""
    models = {str(meta["model"]) for _, _, meta in read if "model" in meta}
    if len(models) > 1:
        raise ValueError(f"the checkpoints are of different models ({', '.join(sorted(models))}): only weights of one "
                         f"model can be averaged")
    first_path, first, _ = read[0]
    for path, tensors, _ in read[1:]:
        if tensors.keys() != first.keys():
            extra, lacking = sorted(tensors.keys() - first.keys()), sorted(first.keys() - tensors.keys())
            raise ValueError(f"{path} does not hold the tensors of {first_path}: " + "; ".join(
                f"{what} {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                for what, keys in (("extra", extra), ("missing", lacking)) if keys))
        for name, value in tensors.items():
            if value.shape != first[name].shape:
                raise ValueError(f"{path}: {name} has shape {tuple(value.shape)}, {first_path} "
                                 f"{tuple(first[name].shape)}: checkpoints of different models cannot be averaged")


def _average_sources(sources: list[str | Path]) -> list[Path]:
    files: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            found = epoch_files(source)
            if not found:
                raise ValueError(f"{source} holds no {EPOCH_FILE.format(epoch='EPOCH')} files (a run trained with "
                                 f"--checkpoint-hist N keeps them); pass checkpoint files or such a run folder")
            files += [found[epoch] for epoch in sorted(found)]
        else:
            files.append(source)
    if len(set(files)) != len(files):
        twice = sorted({str(f) for f in files if files.count(f) > 1})
        raise ValueError(f"a checkpoint is given twice: {', '.join(twice)}")
    return files


def _recorded(meta: dict, key: str) -> float | None:
    """A number the metadata records under ``key`` (its values are JSON text), else None."""
    value = _json_or_str(str(meta.get(key)))
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
