"""A checkpoint whose keys collide once wrapper prefixes are removed (``module.x`` beside ``x``) is refused:
which of the two tensors the model should take cannot be known."""
import pytest
import torch

import mobileconv
from mobileconv.deploy.weights import load_pretrained


@pytest.mark.parametrize("prefix, owner", [("module.", ""), ("_orig_mod.", ""), ("module.", "model.")])
def test_colliding_keys_are_refused_and_the_model_is_unchanged(tmp_path, prefix, owner):
    model = mobileconv.create_model("mobilenetv3_small_100_cifar", num_classes=10)
    state = model.state_dict()
    mixed = {f"{owner}{k}": torch.zeros_like(v) for k, v in state.items()}
    mixed[f"{owner}{prefix}conv_stem.weight"] = torch.ones_like(state["conv_stem.weight"])
    torch.save(mixed, tmp_path / "mixed.pt")
    before = {k: v.clone() for k, v in state.items()}
    with pytest.raises(ValueError, match=rf"mixed.pt: keys .*conv_stem.weight' and '{owner}{prefix}conv_stem.weight' "
                                         r"both become 'conv_stem.weight' without their wrapper prefixes"):
        load_pretrained(model, tmp_path / "mixed.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_one_wrapping_alone_still_loads(tmp_path):
    model = mobileconv.create_model("mobilenetv3_small_100_cifar", num_classes=10)
    source = mobileconv.create_model("mobilenetv3_small_100_cifar", num_classes=10)
    torch.save({f"model.module.{k}": v for k, v in source.state_dict().items()}, tmp_path / "wrapped.pt")
    load_pretrained(model, tmp_path / "wrapped.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, source.state_dict()[k]), k


def test_eval_names_the_file_whose_keys_collide(tmp_path, capsys):
    from mobileconv.cli import main

    state = mobileconv.create_model("mobilenetv3_small_100_cifar", num_classes=10).state_dict()
    mixed = {f"model.{k}": v for k, v in state.items()}
    mixed["model.module.classifier.weight"] = state["classifier.weight"]
    torch.save(mixed, tmp_path / "mixed.pt")
    assert main(["eval", "--checkpoint", str(tmp_path / "mixed.pt"), "--model", "mobilenetv3_small_100_cifar",
                 "--data", "digits", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'mixed.pt'}: keys 'model.classifier.weight' and 'model.module.classifier.weight' both " \
           "become 'classifier.weight'" in err
