"""Audit of checkpoint reading and writing: Lightning keys, BN eps per source, AveragedModel EMA, atomic writes.

Oracles: the reference logits of timm and torchvision (``../shared/fixtures/reference``), the
BatchNorm eps those libraries build the models with (timm: ``1e-5``, ``1e-3`` for its ``tf_``
ports; torchvision MobileNetV3: ``1e-3``), tensors produced by plain torch (``AveragedModel``),
and file contents, modes and links as the test made them.
"""
from __future__ import annotations

import os
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import mobileconv
from mobileconv.deploy.weights import checkpoint_num_classes, convert_checkpoint, load_pretrained, read_checkpoint
from mobileconv.engine import checkpoint as ckpt
from mobileconv.engine.ema import ModelEma

from ._torchvision_oracle import V3_LARGE, make_state_dict
from .test_weights import TinyNet, random_state, same_state

TV_STEM, TV_MODEL = "torchvision_mobilenet_v3_small", "mobilenetv3_small_100"
TIMM_STEM, TIMM_MODEL = "timm_mobilenetv3_large_100", "mobilenetv3_large_100"


def bn_eps(model: nn.Module) -> set[float]:
    return {m.eps for m in model.modules() if isinstance(m, nn.BatchNorm2d)}


def max_error(model: nn.Module, reference_dir, stem: str) -> float:
    io = load_file(str(reference_dir / f"{stem}.io.safetensors"))
    with torch.no_grad():
        return (model.eval()(io["x"]) - io["logits"]).abs().max().item()


def lightning_checkpoint(state: dict[str, torch.Tensor], attribute: str = "model") -> dict:
    """What ``Trainer.save_checkpoint`` writes for a LightningModule holding the network as ``self.<attribute>``."""
    return {"epoch": 4, "global_step": 800, "pytorch-lightning_version": "2.4.0",
            "state_dict": {f"{attribute}.{k}": v for k, v in state.items()},
            "optimizer_states": [{"state": {}, "param_groups": []}], "lr_schedulers": [],
            "hparams_name": "kwargs", "hyper_parameters": {"lr": 0.1, "model_name": "mobilenet_v3_small"}}


# ---- PyTorch Lightning checkpoints: keys "model.<key>" ------------------------------------------

@pytest.mark.parametrize("attribute", ["model", "net"])
def test_lightning_checkpoint_of_torchvision_weights_converts_and_reproduces_torchvision(
        reference_dir, tmp_path, attribute):
    """Was: "has no classifier to infer the number of classes from", and every key missing when loaded."""
    src, dst = tmp_path / "epoch=4-step=800.ckpt", tmp_path / "small.safetensors"
    torch.save(lightning_checkpoint(load_file(str(reference_dir / f"{TV_STEM}.safetensors")), attribute), src)
    summary = convert_checkpoint(src, dst, TV_MODEL)
    assert summary["source"] == "torchvision" and summary["num_classes"] == 1000
    model = mobileconv.create_model(TV_MODEL, pretrained=dst)
    assert max_error(model, reference_dir, TV_STEM) < 1e-4  # conftest: 1 thread, torchvision's order


def test_lightning_checkpoint_of_timm_weights_loads(reference_dir, tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save(lightning_checkpoint(load_file(str(reference_dir / f"{TIMM_STEM}.safetensors"))), path)
    model = mobileconv.create_model(TIMM_MODEL)
    assert load_pretrained(model, path) == "timm"
    # 8e-4 on 1 thread is float32 summation order (tests/models/test_pretrained.py); a wrong tensor gives > 1
    assert max_error(model, reference_dir, TIMM_STEM) < 2e-3


def test_checkpoint_num_classes_reads_lightning_keys():
    assert checkpoint_num_classes({"model.conv_stem.weight": torch.zeros(1), "model.classifier.weight":
                                   torch.zeros(7, 4)}) == 7
    assert checkpoint_num_classes({"model.features.0.0.weight": torch.zeros(1),
                                   "model.classifier.3.weight": torch.zeros(11, 16)}) == 11


class Holder(nn.Module):  # a network that genuinely has a child called "model"
    def __init__(self) -> None:
        super().__init__()
        self.model = TinyNet()


def holder_state(seed: int) -> dict[str, torch.Tensor]:
    return {f"model.{k}": v for k, v in random_state(seed=seed).items()}


def test_model_with_a_child_named_model_keeps_its_keys_and_strips_lightnings(tmp_path):
    own, lightning = tmp_path / "own.pth", tmp_path / "lightning.ckpt"
    torch.save(holder_state(1), own)
    torch.save({"state_dict": {f"model.{k}": v for k, v in holder_state(2).items()}}, lightning)
    model = Holder()
    load_pretrained(model, own)
    assert same_state(model, holder_state(1))
    load_pretrained(model, lightning)  # "model.model.<key>": the Lightning prefix comes off, the child's stays
    assert same_state(model, holder_state(2))


def test_prefix_on_some_keys_only_is_not_stripped(tmp_path):
    state = {f"model.{k}": v for k, v in random_state().items()}
    state["criterion.pos_weight"] = torch.ones(5)  # another module of the LightningModule
    path = tmp_path / "mixed.ckpt"
    torch.save({"state_dict": state}, path)
    model = TinyNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"unexpected keys \(9\): model\.conv_stem\.weight"):
        load_pretrained(model, path)
    assert same_state(model, before)


# ---- BatchNorm eps: the source's, never what an earlier load left -----------------------------------

@pytest.mark.parametrize("container", ["safetensors", "timm-pth"])
def test_timm_checkpoint_after_a_torchvision_load_gets_timms_eps(reference_dir, tmp_path, container):
    """A torchvision load sets eps 1e-3; the timm file loaded next into the same model kept it (logits off by 3.8)."""
    model = mobileconv.create_model(TIMM_MODEL)
    assert load_pretrained(model, save(make_state_dict(V3_LARGE), tmp_path / "tv.safetensors")) == "torchvision"
    assert bn_eps(model) == {1e-3}
    timm_file = reference_dir / f"{TIMM_STEM}.safetensors"
    if container == "timm-pth":  # what timm's train.py writes
        timm_file = tmp_path / "model_best.pth.tar"
        state = load_file(str(reference_dir / f"{TIMM_STEM}.safetensors"))
        torch.save({"epoch": 1, "arch": TIMM_MODEL, "state_dict": state}, timm_file)
    assert load_pretrained(model, timm_file) == "timm"
    assert bn_eps(model) == {1e-5}
    assert max_error(model, reference_dir, TIMM_STEM) < 2e-3  # see test_lightning_checkpoint_of_timm_weights_loads


def save(state: dict[str, torch.Tensor], path, metadata: dict[str, str] | None = None):
    save_file(state, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("metadata", [None, {"format": "mobileconv", "model": "tf_mixnet_s"}],
                         ids=["timm", "mobileconv-without-bn_eps"])
def test_file_without_recorded_eps_gets_the_architectures(reference_dir, tmp_path, metadata):
    """timm builds its tf_ ports with BN eps 1e-3 (BN_EPS_TF_DEFAULT); a file with eps 1e-5 loaded first left 1e-5."""
    state = load_file(str(reference_dir / "timm_mixnet_s.safetensors"))  # tf_mixnet_s has mixnet_s's tensors
    model = mobileconv.create_model("tf_mixnet_s")
    load_pretrained(model, save(state, tmp_path / "eps5.safetensors", {"format": "mobileconv", "bn_eps": "1e-05"}))
    assert bn_eps(model) == {1e-5}
    load_pretrained(model, save(state, tmp_path / "plain.safetensors", metadata))
    assert bn_eps(model) == {1e-3}


def test_model_mobileconv_did_not_build_keeps_its_eps(tmp_path):
    """No architecture to take a default from: a user's own module keeps the eps it was built with."""
    model = TinyNet()
    model.bn1.eps = 1e-3
    load_pretrained(model, save(random_state(), tmp_path / "w.safetensors"))
    assert model.bn1.eps == 1e-3


def test_failed_load_after_a_torchvision_load_changes_no_eps_or_buffer(reference_dir, tmp_path):
    model = mobileconv.create_model(TV_MODEL)
    load_pretrained(model, reference_dir / f"{TV_STEM}.safetensors")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["blocks.4.2.bn2.running_var"][0] = float("nan")
    with pytest.raises(ValueError, match=r"(?s)NaN or infinite.*blocks\.4\.2\.bn2\.running_var"):
        load_pretrained(model, save(state, tmp_path / "diverged.safetensors"))
    assert bn_eps(model) == {1e-3} and same_state(model, before)


# ---- torch's AveragedModel saved on its own ---------------------------------------------------------

@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_bare_averaged_model_state_dict_loads_with_use_ema(tmp_path, suffix):
    """Was: "holds one set of weights (a plain state_dict), no EMA weights" for ``module.*`` + ``n_averaged``."""
    net = TinyNet()
    averaged = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    for seed in (4, 5):
        net.load_state_dict(random_state(seed=seed))
        averaged.update_parameters(net)
    expected = {k: v.clone() for k, v in averaged.module.state_dict().items()}  # torch's own average
    path = tmp_path / f"ema{suffix}"
    if suffix == ".pth":
        torch.save(averaged.state_dict(), path)
    else:
        save_file(averaged.state_dict(), str(path))
    model = TinyNet()
    load_pretrained(model, path, use_ema=True)
    assert same_state(model, expected)
    tensors, _ = read_checkpoint(path, use_ema=True)
    assert sorted(tensors) == sorted(expected)


# ---- ModelEma.load_state_dict: all or nothing ----------------------------------------------------

@pytest.mark.parametrize("break_state", ["missing key", "other shape", "no updates"])
def test_ema_state_that_does_not_fit_changes_nothing(break_state):
    """nn.Module.load_state_dict copies every tensor that fits before it raises: the EMA was half replaced."""
    ema = ModelEma(TinyNet(), decay=0.9)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    state = {"module": random_state(seed=7), "decay": 0.5, "updates": 12}
    if break_state == "missing key":
        del state["module"]["bn1.bias"]
    elif break_state == "other shape":
        state["module"]["classifier.bias"] = torch.zeros(6)
    else:
        del state["updates"]
    with pytest.raises(ValueError, match="bn1.bias|classifier.bias|'updates'"):
        ema.load_state_dict(state)
    assert same_state(ema.module, before) and ema.updates == 0


# ---- atomic writes of the run folder ----------------------------------------------------------

@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_replaced_state_keeps_its_permissions(tmp_path, umask_022):
    """A private (0600) state.pt became world-readable (0644) at the next epoch's save."""
    path = ckpt.save_state(tmp_path / "state.pt", {"epoch": 1})
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # a new file: the umask's mode, as open() gives
    path.chmod(0o600)
    ckpt.save_state(path, {"epoch": 2})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert torch.load(path, weights_only=True) == {"epoch": 2}


def test_a_link_at_the_temporary_name_is_never_written_through(tmp_path):
    """The temporary file had a fixed name (``.state.pt.tmp-<pid>``): a link planted there was written through."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / f".state.pt.tmp-{os.getpid()}").symlink_to(victim)
    path = ckpt.save_state(tmp_path / "state.pt", {"epoch": 1})
    assert victim.read_text() == "keep me"
    assert not path.is_symlink() and torch.load(path, weights_only=True) == {"epoch": 1}


def test_write_through_a_link_replaces_its_target_and_keeps_the_link(tmp_path):
    """As ``open(link, "w")`` and ``save_weights`` do; the link itself was replaced by a file."""
    target = tmp_path / "runs" / "summary.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "summary.json"
    link.symlink_to(target)
    ckpt.atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["summary.json"]


# ---- damaged files ---------------------------------------------------------------------------------

def test_zip_field_that_torch_does_not_read_is_no_traceback(tmp_path):
    """A flipped "version needed to extract" byte made zipfile (asked whether the file is a TorchScript archive)
    raise NotImplementedError ("zip file version 20.0") as a traceback; torch.load reads the file as it is."""
    path = tmp_path / "w.pth"
    torch.save(random_state(), path)
    data = bytearray(path.read_bytes())
    data[data.find(b"PK\x01\x02") + 6] = 200  # the first central directory record, +6: version needed
    path.write_bytes(bytes(data))
    assert same_state_dict(torch.load(path, weights_only=True), random_state())
    model = TinyNet()
    load_pretrained(model, path)
    assert same_state(model, random_state())


def same_state_dict(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_refused_instead_of_waiting_for_a_writer(tmp_path):
    """Reading the first bytes of a FIFO blocked until some process wrote to it: forever."""
    import threading

    fifo = tmp_path / "weights.pth"
    os.mkfifo(fifo)
    raised = []

    def load():
        try:
            load_pretrained(TinyNet(), fifo)
        except ValueError as e:
            raised.append(str(e))

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(timeout=5)
    if reader.is_alive():  # unblock the reader with a writer that closes at once, so no thread is left behind
        os.close(os.open(fifo, os.O_WRONLY))
        reader.join()
        pytest.fail("load_pretrained waited on the FIFO")
    assert raised and raised[0].startswith(f"{fifo} is not a regular file"), raised
