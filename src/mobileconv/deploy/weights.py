"""Load published timm / torchvision checkpoints into mobileconv models, and mobileconv's own format.

mobileconv's checkpoint format is a safetensors file of ``model.state_dict()`` (what
``safetensors.torch.save_file(model.state_dict(), path)`` writes); :func:`save_weights` adds
metadata (``format``, ``bn_eps`` and, from ``convert``, the model name) that the loader uses.

:func:`load_pretrained` (what ``create_model(..., pretrained=path)`` calls) accepts that, or a
timm or torchvision ``state_dict`` as ``.safetensors`` or ``.pth`` / ``.pt`` / ``.bin``
(read with ``torch.load(weights_only=True)``: loading never runs code). The source is
detected from the keys:

* timm: mobileconv names its modules exactly as timm's EfficientNet / MobileNetV3 family
  does, so the keys are used as they are;
* torchvision MobileNetV2 / V3 (``features.<i>...``, ``classifier.<i>...``): renamed by
  structure (see :mod:`mobileconv.deploy._torchvision_map`).

Prefixes that wrappers add to the keys are removed: ``module.`` (DataParallel / DDP,
``AveragedModel``) and ``_orig_mod.`` (``torch.compile``) always, ``model.`` / ``net.`` (a
PyTorch Lightning module holding the network as ``self.model`` / ``self.net``) when every key
carries it and the keys fit the model better without it.

Conventions of the source are carried over: float16 tensors are cast to the model's dtype, a
missing ``num_batches_tracked`` keeps the model's value, and BatchNorm eps is set to the one
the source implies, whatever an earlier load left in the model: torchvision MobileNetV3 was
trained with ``eps=1e-3``, MobileNetV2 with ``1e-5``; a mobileconv file records its own
(metadata ``bn_eps``); a timm checkpoint, or any file without that metadata, gets the model's
architecture default (:func:`architecture_bn_eps`: ``1e-3`` for the ``tf_`` forms, as timm's
``tf_`` ports, ``1e-5`` otherwise, as timm's other models). A model mobileconv did not build
has no such default and keeps its eps.

Loading is all-or-nothing: the mapped tensors are checked against the model (missing,
unexpected, shape or dtype mismatch, sparse / quantized / meta tensors, NaN or inf values in the
model's dtype) before anything in the model changes.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import stat
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from ..layers.split_batchnorm import AUX_KEY
from ..models._builder import ArchSpec
from ._torchvision_map import (TORCHVISION_BN_EPS, is_torchvision_layout, map_torchvision, torchvision_family,
                               torchvision_num_classes)

FORMAT = "mobileconv"
# metadata keys of `mobileconv train`'s weights files (recognised as mobileconv's even without ``format``)
TRAINER_KEYS = ("model", "dataset", "num_classes", "img_size")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# keys under which training scripts nest the weights (timm: state_dict / state_dict_ema, torchvision: model)
WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")
# the entries holding the EMA weights, in timm's order of preference (timm's load_state_dict(use_ema=True))
EMA_KEYS = ("state_dict_ema", "model_ema")
# prefixes added by DistributedDataParallel / DataParallel and torch.compile
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# attribute names under which a wrapper module holds the network (a LightningModule's self.model / self.net): its
# state_dict keys are "model.<key>"; removed only when every key carries the prefix and the model takes them so
OWNER_PREFIXES = ("model.", "net.")
HEAD_KEYS = ("classifier.weight", "classifier.bias")
SOURCES = {  # detected source -> how error messages describe it
    "mobileconv": "mobileconv checkpoint",
    "timm": "keys named as in timm / mobileconv",
    "torchvision": "torchvision MobileNetV2/V3 layout",
}
MAX_LISTED = 12
EXPECTED = ("a checkpoint: a safetensors file of a model state_dict, or a PyTorch .pth/.pt/.bin state_dict "
            "(timm, torchvision or mobileconv)")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside ``torch.compile``'s ``OptimizedModule`` (``_orig_mod``) and ``DataParallel`` /
    ``DistributedDataParallel`` (``module``), in any nesting; ``model`` itself when it is not wrapped.

    The wrappers share the inner model's parameters and buffers but prefix its ``state_dict`` keys
    (``_orig_mod.``, ``module.``), so loading and saving go through the inner model: a checkpoint
    loads into a wrapped model as into the model, and a wrapped model saves the model's keys.
    """
    while True:
        if type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def load_pretrained(model: nn.Module, pretrained: str | os.PathLike, *, drop_head: bool = False,
                    use_ema: bool = False) -> str:
    """Load a checkpoint file into ``model`` in place (``create_model(..., pretrained=path)``).

    Args:
        model: a mobileconv model, or one wrapped by ``torch.compile`` / ``DataParallel`` / DDP
            (loaded into the model it wraps, :func:`unwrap_model`).
        pretrained: path to a mobileconv, timm or torchvision checkpoint (detected from its keys).
        drop_head: keep the model's own classifier instead of the checkpoint's (fine-tuning to
            another number of classes).
        use_ema: load a training checkpoint's EMA weights (see :func:`read_checkpoint`).

    Returns:
        The detected source: ``"mobileconv"``, ``"timm"`` or ``"torchvision"``.

    Raises:
        FileNotFoundError: no file at ``pretrained``.
        ValueError: not a checkpoint, or one that does not fit ``model`` (the message lists the
            missing, unexpected and mismatched keys), or holds NaN / inf values, or ``use_ema=True``
            and it holds no EMA weights; ``model`` is then left unchanged.
    """
    state_dict, metadata = read_checkpoint(pretrained, use_ema=use_ema)
    return load_state_dict(model, state_dict, metadata, drop_head=drop_head, name=str(pretrained))


def read_checkpoint(path: str | os.PathLike, *,
                    use_ema: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a checkpoint file as ``(state_dict, metadata)`` without running any code.

    The format is recognised from the file's first bytes (safetensors header, zip archive or
    legacy torch file), so the suffix does not matter. Wrappers are removed: a nested
    ``state_dict`` / ``model`` / ``state_dict_ema`` / ``model_ema`` entry, ``module.`` prefixes
    and the ``n_averaged`` counter of a ``torch.optim.swa_utils.AveragedModel`` (torchvision's
    EMA). A training checkpoint's ``args`` (an ``argparse.Namespace``, :data:`SAFE_GLOBALS`) is
    allowed beside the weights; TorchScript / ``torch.export`` archives are refused as what they are.

    ``use_ema=False`` takes the training weights (``state_dict``, else ``model``) when a checkpoint
    holds both those and EMA weights; a checkpoint with EMA weights only gives those.
    ``use_ema=True`` takes the EMA weights (``state_dict_ema``, else ``model_ema``: timm's
    ``load_checkpoint(use_ema=True)`` order; ``mobileconv train --ema``'s ``state.pt`` entry
    ``ema``), a bare ``AveragedModel.state_dict()`` (``module.`` keys and ``n_averaged``: the
    averaged weights), or a mobileconv file whose metadata records ``ema=true`` (the weights
    files of ``mobileconv train --ema``); any other checkpoint is a ``ValueError``, never a
    silent fallback to the non-EMA weights.

    The metadata is the safetensors header's; for a ``state.pt`` of ``mobileconv train``, what it
    records about its run (:func:`run_state_metadata`), in the same form; ``{}`` for other torch files.
    """
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"pretrained must be the path of a checkpoint file, got {path!r} "
                         "(mobileconv does not download weights: pass a local file)")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(2, "checkpoint file not found", str(path))
    if path.is_dir():
        raise ValueError(f"{path} is a directory; expected {EXPECTED}")
    if not path.is_file():  # reading a FIFO would wait for a writer forever; a pipe cannot be read twice
        raise ValueError(f"{path} is not a regular file (a FIFO, device or socket); expected {EXPECTED}")
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":  # u64 header length, then the JSON header
        state_dict, metadata = _read_safetensors(path)
    elif head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save zip archive, or legacy pickle protocol 2
        state_dict = _read_torch(path)
        metadata = run_state_metadata(state_dict)
    else:
        raise ValueError(f"{path} is not a checkpoint (unrecognised file contents); expected {EXPECTED}")
    if use_ema:
        state_dict = _ema_weights(state_dict, metadata, path)
    return _unwrap(state_dict, path), metadata


# what `mobileconv train`'s state.pt records about its run, under the names of its weights files' metadata:
# metadata key -> (entry of the state, entry of its "config" or None)
RUN_STATE_FIELDS = {"model": (None, "model"), "dataset": (None, "data"), "img_size": (None, "img_size"),
                    "num_classes": ("num_classes", None), "classes": ("classes", None), "mean": ("mean", None),
                    "std": ("std", None), "epoch": ("epoch", None)}


def run_state_metadata(obj: object) -> dict[str, str]:
    """The metadata a ``mobileconv train`` weights file would record, read from its ``state.pt`` (``obj``).

    A state.pt holds its run's resolved options (``config``: model, data, img_size) and, since runs
    record them there, its ``classes``, ``mean`` and ``std``, so that a state.pt copied out of its run
    folder is evaluated with its training preprocessing. Values are JSON-encoded unless strings, as in
    a weights file's header. ``{}`` for anything else (a timm or torchvision checkpoint).
    """
    if not (isinstance(obj, Mapping) and isinstance(obj.get("config"), Mapping)
            and isinstance(obj.get("model"), Mapping) and isinstance(obj.get("num_classes"), int)
            and isinstance(obj.get("epoch"), int)):
        return {}
    metadata = {}
    for key, (entry, option) in RUN_STATE_FIELDS.items():
        value = obj.get(entry) if entry is not None else obj["config"].get(option)
        if value is None:
            continue
        try:
            metadata[key] = value if isinstance(value, str) else json.dumps(value)
        except (TypeError, ValueError):  # not plain data (a tensor): not recorded, as if absent
            continue
    return metadata


def detect_source(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> str:
    """``"mobileconv"`` (our metadata), ``"torchvision"`` (its key layout) or ``"timm"`` (same names as ours).

    mobileconv's metadata is ``format="mobileconv"``, or the keys a ``mobileconv train`` run records
    (:data:`TRAINER_KEYS`: files written before it recorded ``format``).
    """
    metadata = metadata or {}
    if metadata.get("format") == FORMAT or all(k in metadata for k in TRAINER_KEYS):
        return "mobileconv"
    return "torchvision" if is_torchvision_layout(dict(state_dict)) else "timm"


def checkpoint_num_classes(state_dict: Mapping[str, torch.Tensor], where: str = "checkpoint") -> int | None:
    """Number of classes of the checkpoint's classifier (None when it has none).

    Keys that all carry an :data:`OWNER_PREFIXES` prefix (a Lightning checkpoint) are read without it.
    """
    for keys in (state_dict, *(_without_prefix(state_dict, prefix, where) for prefix in OWNER_PREFIXES)):
        if keys is None:
            continue
        if "classifier.weight" in keys:
            return int(keys["classifier.weight"].shape[0])
        num_classes = torchvision_num_classes(dict(keys))
        if num_classes is not None:
            return num_classes
    return None


def load_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None,
                    *, drop_head: bool = False, name: str = "checkpoint") -> str:
    """Map ``state_dict`` (any supported source) onto ``model``, check everything, then copy it in.

    See :func:`load_pretrained`; ``name`` is used in error messages.
    """
    model = unwrap_model(model)  # a torch.compile / DataParallel wrapper: load into the model it holds
    target = model.state_dict()
    state_dict = _without_owner_prefix(state_dict, target, name)
    source = detect_source(state_dict, metadata)
    if source == "torchvision":
        try:
            mapped, unmapped = map_torchvision(dict(state_dict), list(target))
        except ValueError as e:
            raise ValueError(f"{name} ({SOURCES[source]}): {e}; the model was not changed") from e
    else:
        mapped, unmapped = {k: (k, v) for k, v in state_dict.items()}, []
    if not any(AUX_KEY in k for k in target):  # a --split-bn run's auxiliary batch norms: training only
        mapped = {k: v for k, v in mapped.items() if AUX_KEY not in k}
    keep = HEAD_KEYS if drop_head else ()  # model keys that keep their values
    if drop_head or not any(k in target for k in HEAD_KEYS):  # the model keeps its head (or has none)
        mapped = {k: v for k, v in mapped.items() if k not in HEAD_KEYS}
    _check_fits(mapped, unmapped, target, keep, source, name)
    bn_eps = _source_bn_eps(source, state_dict, metadata or {}, name)
    if bn_eps is None:  # timm, or no recorded eps: the architecture's, never what an earlier load left
        bn_eps = architecture_bn_eps(model)
    _check_bn_eps(model, bn_eps, name)

    new_state = {k: mapped[k][1].to(dtype=v.dtype) if k in mapped else v for k, v in target.items()}
    _check_finite(new_state, mapped, source, name)
    _check_running_vars(new_state, mapped, source, name)
    with torch.no_grad():
        model.load_state_dict(new_state, strict=True)
    if bn_eps is not None:
        set_bn_eps(model, bn_eps)
    return source


def set_bn_eps(model: nn.Module, eps: float | Mapping[str, float]) -> None:
    """Set the eps of every BatchNorm in ``model`` (one value, or ``{module name: eps}``)."""
    for module_name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps = float(eps[module_name] if isinstance(eps, Mapping) else eps)


def architecture_bn_eps(model: nn.Module) -> float | None:
    """The BatchNorm eps ``model``'s architecture is built with (``ArchSpec.bn_eps``: ``1e-3`` for the
    ``tf_`` forms, ``1e-5`` otherwise); None for a model that mobileconv's builder did not make."""
    arch = getattr(model, "arch", None)
    return arch.bn_eps if isinstance(arch, ArchSpec) else None


def bn_eps_of(model: nn.Module) -> float | dict[str, float] | None:
    """The model's BatchNorm eps: one float when all agree, else ``{module name: eps}``; None without BN."""
    eps = {n: m.eps for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    if not eps:
        return None
    values = set(eps.values())
    return values.pop() if len(values) == 1 else eps


def save_weights(model: nn.Module, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``model.state_dict()`` as mobileconv's safetensors checkpoint, atomically.

    The file is what ``safetensors.torch.save_file(model.state_dict(), path)`` writes, plus
    metadata ``format="mobileconv"`` and ``bn_eps`` (JSON), which :func:`load_pretrained` restores.
    The tensors go to a temporary file in the same directory, which is flushed to disk and then
    replaces ``path`` (:func:`write_atomically`), so neither a failure nor a crash leaves a partial
    file (a link is followed, see :func:`check_output_path`).
    """
    from safetensors.torch import save_file

    path = check_output_path(path)
    model = unwrap_model(model)  # the model's own keys, without torch.compile / DataParallel prefixes
    meta = {"format": FORMAT, **{k: str(v) for k, v in (metadata or {}).items()}}
    eps = bn_eps_of(model)
    if eps is not None:
        meta["bn_eps"] = json.dumps(eps)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


# ---- crash-safe writes (shared by save_weights, engine.checkpoint.atomic_write and deploy.export) --------------

TEMP_NAME_BYTES = 64  # of the output's name in its temporary file's (a 255-byte name must still fit)


def write_atomically(path: Path, write_to: Callable[[Path], None]) -> Path:
    """Fill a new temporary file beside ``path`` with ``write_to(tmp)``, then make it ``path``, crash-safely.

    The temporary file (:func:`temporary_path`) gets the mode ``open(path, "w")`` would leave
    (:func:`replacement_mode`), is flushed to disk (:func:`fsync_file`) and renamed onto ``path``
    (``os.replace``), and the rename is made durable (:func:`fsync_dir`): after a crash or power loss
    ``path`` is the old file or the complete new one, never an empty or partial one. If anything
    before the rename fails, the temporary file is removed and ``path`` is unchanged. ``path`` is
    written as it is: callers resolve links first (:func:`check_output_path`).
    """
    tmp = temporary_path(path)
    try:
        write_to(tmp)
        os.chmod(tmp, replacement_mode(path))  # mkstemp made it private (0600)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def temporary_path(path: Path) -> Path:
    """A new empty file beside ``path`` (same file system, so ``os.replace`` is atomic), created with
    ``O_EXCL`` (``mkstemp``): never an existing file or a link planted at a predictable name.

    Named ``.<name>.tmp-<random><suffix>`` with ``<name>`` cut to :data:`TEMP_NAME_BYTES` bytes, so any
    name that ``path`` itself may have (255 bytes on most file systems) leaves room for the rest; the
    suffix (``.onnx``, ``.pt2``) is kept when it is short, for writers that go by it.
    """
    stem = path.name
    while len(os.fsencode(stem)) > TEMP_NAME_BYTES:
        stem = stem[:-1]
    suffix = path.suffix if len(os.fsencode(path.suffix)) <= 16 else ""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{stem}.tmp-", suffix=suffix, dir=path.parent)
    except OSError as e:
        raise type(e)(f"cannot write {path}: {e.strerror or e}") from e
    os.close(fd)
    return Path(name)


def fsync_file(path: Path) -> None:
    """Flush a written file's data to disk (before it is renamed over another)."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_output_path(path: str | os.PathLike) -> Path:
    """The regular file an atomic write (temporary file, then rename) replaces at ``path``.

    An ``OSError`` names the problem if it cannot be written. A symbolic link is followed (the
    file it points to is replaced, the link kept, as ``open(path, "w")`` would write it); an
    existing path that is not a regular file (``/dev/stdout``, a FIFO, a device) is refused with a
    ``ValueError``, since the rename would put the new file in its place.
    """
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"the output path must be a file name, got {path!r}")
    if str(path).endswith(("/", os.sep)):  # Path() drops the slash: "sub/" would become a file named sub
        raise IsADirectoryError(f"cannot write {str(path)!r}: it names a folder (give a file name inside it)")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a directory (give a file name inside it)")
    parent = path.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise FileNotFoundError(f"cannot write {path}: {parent} {what}")
    try:  # tried, not read from permission bits: root passes os.access on read-only mounts and /proc
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise PermissionError(f"cannot write {path}: directory {parent} is not writable ({e.strerror or e})") from e
    if path.exists() and not path.is_file():  # exists() and is_file() follow links
        raise ValueError(f"cannot write {path}: it exists and is not a regular file (a device, FIFO or socket)")
    return check_output_path(path.resolve()) if path.is_symlink() else path


def new_file_mode() -> int:
    """The permissions ``open(path, "w")`` would give a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def replacement_mode(path: Path) -> int:
    """The permissions for a file that replaces ``path``: the old file's, else a new file's (as ``open`` keeps them)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return new_file_mode()


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, model_name: str,
                       num_classes: int | None = None, use_ema: bool = False) -> dict[str, object]:
    """Load ``src`` (timm / torchvision / mobileconv) into ``create_model(model_name)``, write ``dst``.

    ``num_classes`` defaults to the checkpoint classifier's. Nothing is written unless the
    whole checkpoint fits the model. ``dst`` records the model name, ``num_classes`` and the
    source; a mobileconv checkpoint's own metadata (from ``mobileconv train``: dataset, classes,
    img_size, mean, std...) is kept. ``use_ema`` takes the checkpoint's EMA weights (see
    :func:`read_checkpoint`), and ``dst`` then records ``ema=true``. Returns a summary (source,
    num_classes, tensors, params, bn_eps).
    """
    from ..models import create_model

    check_output_path(dst)  # before reading and checking the whole checkpoint
    state_dict, metadata = read_checkpoint(src, use_ema=use_ema)
    if num_classes is None:
        num_classes = checkpoint_num_classes(state_dict, str(src))
        if num_classes is None and str(metadata.get("num_classes")) == "0":  # a head-less file `convert` wrote
            num_classes = 0
        if num_classes is None:
            raise ValueError(f"{src} has no classifier to infer the number of classes from; pass --num-classes")
    model = create_model(model_name, num_classes=num_classes)
    source = load_state_dict(model, state_dict, metadata, name=str(src))
    kept = {k: v for k, v in metadata.items() if k != "bn_eps"} if source == "mobileconv" else {}
    if use_ema:
        kept["ema"] = "true"  # JSON, as `mobileconv train` records it
    # a converted timm / torchvision file stays what it was converted from (eval / predict crop its images so)
    origin = metadata.get("converted_from") if metadata.get("converted_from") in ("timm", "torchvision") else source
    save_weights(model, dst, {**kept, "model": model_name, "num_classes": num_classes, "converted_from": origin})
    return {"source": source, "num_classes": num_classes, "tensors": len(model.state_dict()),
            "params": sum(p.numel() for p in model.parameters()), "bn_eps": bn_eps_of(model)}


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors checkpoint (truncated or corrupt?): {e}; "
                         f"expected {EXPECTED}") from e


# Plain-data classes that training scripts pickle beside the weights, allowed in torch.load(weights_only=True):
# timm's train.py and torchvision's reference scripts store their argparse options as checkpoint["args"].
# Unpickling a Namespace only sets attributes (no constructor runs), whose values stay restricted as usual.
SAFE_GLOBALS = (argparse.Namespace,)


def _read_torch(path: Path) -> object:
    program = _program_archive(path)
    if program is not None:
        raise ValueError(f"{path} is {program}, not a state_dict: it cannot be loaded as weights; "
                         f"expected {EXPECTED}")
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    allowed = contextlib.nullcontext() if safe_globals is None else safe_globals(list(SAFE_GLOBALS))
    try:
        # an open file, not its name: torch.load reads a name ending in .safetensors as safetensors, whatever it holds
        with warnings.catch_warnings(), allowed, open(path, "rb") as file:
            warnings.simplefilter("ignore", UserWarning)  # torch warns about any pickle protocol but 2
            return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise ValueError(f"{path} could not be read as a PyTorch state_dict with torch.load(weights_only=True) "
                         f"(truncated, corrupt, or it holds objects other than tensors): {torch_load_reason(e)}; "
                         f"expected {EXPECTED}") from e


def _program_archive(path: Path) -> str | None:
    """What a zip archive holds when it is a saved program or NumPy arrays rather than a ``torch.save`` file, else None.

    ``torch.jit.save`` (TorchScript, ``mobileconv export --format torchscript``) archives hold
    ``constants.pkl`` and ``code/``; ``torch.export.save`` (``.pt2``) ones an ``archive_format`` record;
    ``numpy.savez`` ones only ``.npy`` files.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            records = {name.split("/", 1)[-1] for name in archive.namelist()}
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError):
        return None  # not a readable zip (NotImplementedError: a corrupt "version needed" field): torch.load reports it
    if "constants.pkl" in records:
        return "a TorchScript archive (torch.jit.save; load it with torch.jit.load)"
    if "archive_format" in records:
        return "a torch.export program (.pt2; load it with torch.export.load)"
    if records and all(name.endswith(".npy") for name in records):
        return "a NumPy archive (.npz: numpy.savez; load it with numpy.load)"
    return None


def torch_load_reason(error: Exception) -> str:
    """The informative line of a torch.load error, without torch's advice (never to load with weights_only=False).

    torch wraps the unpickler's reason in advice that varies with the release and the kind of
    failure: after ``WeightsUnpickler error:`` (an unknown global), or on a line of its own (a
    blocked module such as ``posix``). Both are handled: the text after the last
    ``WeightsUnpickler error:`` (else all of it) is taken, the ``Weights only load failed.``
    prefix and every line mentioning ``weights_only`` are dropped, and the first line left is the
    reason, up to torch's ``Please use `torch.serialization...``` suggestion.
    """
    text = str(error).rpartition("WeightsUnpickler error:")[2]
    lines = (line.strip().removeprefix("Weights only load failed.").strip() for line in text.splitlines())
    reason = next((line for line in lines if line and "weights_only" not in line), "")
    return reason.split(" Please use `torch.serialization")[0] or type(error).__name__


def _ema_weights(obj: object, metadata: Mapping[str, str], path: Path) -> object:
    """The EMA entry of a training checkpoint (``use_ema=True``); a ValueError naming what was expected if none."""
    expected = (f"expected a training checkpoint with EMA weights under {' or '.join(map(repr, EMA_KEYS))} "
                f"(timm's train.py --model-ema, torchvision's references --model-ema), or from mobileconv train "
                f"--ema (a weights file recording ema=true, or its state.pt); load without use_ema (CLI: without "
                f"--use-ema) to take its weights")
    if isinstance(obj, Mapping) and not _all_tensors(obj):
        entry = next((obj[k] for k in EMA_KEYS if isinstance(obj.get(k), Mapping)), None)
        if entry is not None:
            return entry
        own = obj.get("ema")  # mobileconv train's state.pt: {"ema": ModelEma.state_dict() = {"module": ..., ...}}
        if isinstance(own, Mapping) and isinstance(own.get("module"), Mapping):
            return own["module"]
        entries = sorted(str(k) for k in obj)
        more = f" ... and {len(entries) - MAX_LISTED} more" if len(entries) > MAX_LISTED else ""
        raise ValueError(f"{path} holds no EMA weights (use_ema=True): its entries are "
                         f"{entries[:MAX_LISTED]}{more}; {expected}")
    if isinstance(obj, Mapping) and _is_averaged_model_state(obj):  # torch's AveragedModel, saved on its own
        return obj
    if metadata.get("ema") == "true":  # mobileconv train --ema: the file's weights are the EMA's
        return obj
    recorded = f" (its metadata records ema={metadata['ema']})" if "ema" in metadata else ""
    raise ValueError(f"{path} holds one set of weights (a plain state_dict){recorded}, no EMA weights "
                     f"(use_ema=True); {expected}")


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Find the tensor mapping inside a training checkpoint and strip ``module.`` prefixes."""
    while isinstance(obj, Mapping) and not _all_tensors(obj):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state_dict; expected {EXPECTED}")
    if not obj:
        raise ValueError(f"{path} holds an empty mapping, not a state_dict; expected {EXPECTED}")
    if not _all_tensors(obj):
        others = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
        raise ValueError(f"{path} holds a mapping with non-tensor entries {others[:MAX_LISTED]} and no "
                         f"nested state_dict under {list(WRAPPER_KEYS)}; expected {EXPECTED}")
    if _is_averaged_model_state(obj):
        obj = {k: v for k, v in obj.items() if k != "n_averaged"}  # AveragedModel's update counter, not a weight
    return _renamed(obj, _without_wrapper_prefixes, str(path))


def _renamed(state_dict: Mapping[str, torch.Tensor], rename: Callable[[str], str],
             where: str) -> dict[str, torch.Tensor]:
    """``{rename(key): value}``; a ValueError when two keys become one (``module.x`` beside ``x``): which of the
    two tensors the model should take cannot be known, and a dict would keep the later one silently."""
    renamed, origin = {}, {}
    for key, value in state_dict.items():
        new = rename(key)
        if new in renamed:
            raise ValueError(f"{where}: keys {origin[new]!r} and {key!r} both become {new!r} without their "
                             f"wrapper prefixes ({', '.join(WRAPPER_PREFIXES + OWNER_PREFIXES)}): the file mixes "
                             f"two wrappings of the model; save one of them")
        renamed[new], origin[new] = value, key
    return renamed


def _without_wrapper_prefixes(key: str) -> str:
    while key.startswith(WRAPPER_PREFIXES):  # stacked in either order: DDP(compile(m)), compile(DDP(m))
        key = key.split(".", 1)[1]
    return key


def _is_averaged_model_state(obj: Mapping) -> bool:
    """``torch.optim.swa_utils.AveragedModel.state_dict()`` (torchvision's EMA): the averaged module's keys under
    ``module.`` and the ``n_averaged`` update counter."""
    return "n_averaged" in obj and len(obj) > 1 and all(k.startswith("module.") for k in obj if k != "n_averaged")


def _without_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str,
                    where: str = "checkpoint") -> dict[str, torch.Tensor] | None:
    """The keys without ``prefix`` (and the wrapper prefixes under it) when every key carries it, else None."""
    if not state_dict or not all(k.startswith(prefix) for k in state_dict):
        return None
    return _renamed(state_dict, lambda k: _without_wrapper_prefixes(k[len(prefix):]), where)


def _without_owner_prefix(state_dict: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                          where: str = "checkpoint") -> Mapping[str, torch.Tensor]:
    """``state_dict`` without the :data:`OWNER_PREFIXES` prefix that every key carries (Lightning's ``model.``),
    when the model takes more of the keys without it: a model with a child of that name keeps its keys."""
    for prefix in OWNER_PREFIXES:
        stripped = _without_prefix(state_dict, prefix, where)
        if stripped is not None and _keys_taken(stripped, target) > _keys_taken(state_dict, target):
            return stripped
    return state_dict


def _keys_taken(state_dict: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> int:
    """How many keys name a model tensor (all of a torchvision layout's, which is renamed by structure)."""
    if is_torchvision_layout(dict(state_dict)):
        return len(state_dict)
    return sum(key in target for key in state_dict)


def _all_tensors(obj: Mapping) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _check_fits(mapped: dict[str, tuple[str, torch.Tensor]], unmapped: list[str], target: dict[str, torch.Tensor],
                keep: tuple[str, ...], source: str, name: str) -> None:
    """Raise a ValueError listing every missing / unexpected / mismatched key (model unchanged)."""
    def origin(key: str) -> str:
        src = mapped[key][0]
        return key if src == key else f"{key} (from {src})"

    missing = [k for k in target if k not in mapped and k not in keep and not k.endswith("num_batches_tracked")]
    unexpected = [origin(k) for k in mapped if k not in target] + unmapped
    mismatched = [f"{origin(k)}: checkpoint {list(v.shape)} vs model {list(target[k].shape)}"
                  for k, (_, v) in mapped.items() if k in target and v.shape != target[k].shape]
    unusable = [f"{origin(k)}: {_unusable(v)}" for k, (_, v) in mapped.items() if k in target and _unusable(v)]
    wrong_dtype = [f"{origin(k)}: checkpoint {v.dtype} vs model {target[k].dtype}" for k, (_, v) in mapped.items()
                   if k in target and not _unusable(v) and not _dtype_fits(v, target[k])]
    if not (missing or unexpected or mismatched or unusable or wrong_dtype):
        return
    head_only = (not (missing or unexpected or unusable or wrong_dtype)
                 and all(m.startswith(HEAD_KEYS) for m in mismatched))
    if head_only and _only_classes_differ(mapped, target):
        ckpt_classes = mapped["classifier.weight"][1].shape[0]
        model_classes = target["classifier.weight"].shape[0]
        raise ValueError(f"{name}: the checkpoint's classifier has {ckpt_classes} classes but the model has "
                         f"{model_classes}; create the model with num_classes={ckpt_classes} (CLI: --num-classes "
                         f"{ckpt_classes}), or in Python load_pretrained(..., drop_head=True) to keep the model's own classifier")
    lines = [f"{name} ({SOURCES[source]}) does not fit the model; the model was not changed."]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched),
                         ("dtype mismatch", wrong_dtype), ("unusable", unusable)):
        if items:
            lines.append(_listed_keys(title, items))
    raise ValueError("\n".join(lines))


def _listed_keys(title: str, keys: list[str]) -> str:
    """``  TITLE keys (N): a, b, ... and M more``: an error message's line of keys, at most MAX_LISTED shown."""
    more = f" ... and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else ""
    return f"  {title} keys ({len(keys)}): {', '.join(keys[:MAX_LISTED])}{more}"


def _shown_key(key: str, mapped: dict[str, tuple[str, torch.Tensor]]) -> str:
    """A model key, with the checkpoint key it was mapped from where that differs (torchvision's names)."""
    src = mapped[key][0]
    return key if src == key else f"{key} (from {src})"


def _unusable(value: torch.Tensor) -> str | None:
    """Why a checkpoint tensor cannot be copied into a model's dense tensor, or None if it can."""
    if value.is_quantized:
        return f"a quantized tensor ({value.dtype})"
    if value.layout != torch.strided:
        return f"a {value.layout} tensor, not a dense one"
    if value.is_meta:
        return "a tensor on the meta device, without values"
    return None


def _dtype_fits(value: torch.Tensor, model_value: torch.Tensor) -> bool:
    """Floating-point model tensors take floats only (at the model's precision: integer weights would be
    quantised ones); integer buffers (``num_batches_tracked``) take integers or floats (``{k: v.float()}``)."""
    if value.dtype == torch.bool or value.is_complex():
        return False
    return value.is_floating_point() or not model_value.is_floating_point()


def _check_finite(new_state: dict[str, torch.Tensor], mapped: dict[str, tuple[str, torch.Tensor]], source: str,
                  name: str) -> None:
    """A ValueError listing the checkpoint's tensors with NaN / inf values in the model's dtype (model unchanged)."""
    bad = []
    for key, value in new_state.items():
        if key in mapped and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            original = mapped[key][1]
            overflow = original.dtype != value.dtype and bool(torch.isfinite(original.float()).all())
            bad.append(f"{_shown_key(key, mapped)}{f': too large for {value.dtype}' if overflow else ''}")
    if bad:
        raise ValueError(f"{name} ({SOURCES[source]}) holds NaN or infinite values (a diverged run?); the model was "
                         f"not changed.\n{_listed_keys('non-finite', bad)}")


def _check_running_vars(new_state: dict[str, torch.Tensor], mapped: dict[str, tuple[str, torch.Tensor]], source: str,
                        name: str) -> None:
    """A ValueError listing the BatchNorm running variances with negative entries (model unchanged).

    A variance is never negative; such a BN would give NaN (``sqrt(var + eps)``) in eval mode.
    """
    bad = [_shown_key(key, mapped) for key, value in new_state.items()
           if key in mapped and key.endswith("running_var") and value.is_floating_point() and bool((value < 0).any())]
    if bad:
        raise ValueError(f"{name} ({SOURCES[source]}) holds negative BatchNorm running variances (a corrupt file?); "
                         f"the model was not changed.\n{_listed_keys('negative running_var', bad)}")


def _only_classes_differ(mapped: dict[str, tuple[str, torch.Tensor]], target: dict[str, torch.Tensor]) -> bool:
    """The classifiers differ in their number of outputs only (not in their input width, or a malformed bias)."""
    weight, model_weight = mapped["classifier.weight"][1], target["classifier.weight"]
    bias = mapped.get("classifier.bias", (None, None))[1]
    return (weight.dim() == model_weight.dim() and weight.shape[1:] == model_weight.shape[1:]
            and weight.shape[0] != model_weight.shape[0] and (bias is None or list(bias.shape) == [weight.shape[0]]))


def _check_bn_eps(model: nn.Module, eps: float | dict[str, float] | None, name: str) -> None:
    if not isinstance(eps, dict):
        return
    norms = {n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    if set(eps) != norms or not all(isinstance(v, (int, float)) for v in eps.values()):
        raise ValueError(f"{name}: metadata bn_eps names {len(eps)} BatchNorm layers, the model has {len(norms)} "
                         f"(differing: {sorted(set(eps) ^ norms)[:MAX_LISTED]})")


def _source_bn_eps(source: str, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
                   name: str) -> float | dict[str, float] | None:
    """The BatchNorm eps the checkpoint was trained with, or None to keep the model's."""
    if source == "torchvision":
        return TORCHVISION_BN_EPS[torchvision_family(dict(state_dict))]
    if source == "mobileconv" and "bn_eps" in metadata:
        try:
            eps = json.loads(metadata["bn_eps"])
        except json.JSONDecodeError as e:
            raise ValueError(f"{name}: metadata bn_eps={metadata['bn_eps']!r} is not JSON (a number or "
                             f"{{module: eps}})") from e
        values = eps.values() if isinstance(eps, dict) else [eps]
        if not isinstance(eps, (int, float, dict)) or not all(_valid_eps(v) for v in values):
            raise ValueError(f"{name}: metadata bn_eps must be a positive finite number or {{module: eps}} of them, "
                             f"got {eps!r}")
        return eps
    return None


def _valid_eps(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
