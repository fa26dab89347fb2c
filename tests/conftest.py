from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO.parent / "shared" / "fixtures" / "reference"

# Two xdist workers share two cores: one intra-op thread each avoids oversubscription.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        pytest.fail(f"reference fixtures not found at {REFERENCE_DIR} (../shared must sit beside the clone)")
    return REFERENCE_DIR


@pytest.fixture
def model_inputs(monkeypatch) -> list[torch.Tensor]:
    """The tensors ``eval`` / ``predict`` feed the model (copies), recorded by a hook on the model
    ``mobileconv.engine.inference`` builds."""
    from mobileconv.engine import inference

    seen, build = [], inference.build_model

    def recording_build(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
        return model

    monkeypatch.setattr(inference, "build_model", recording_build)
    return seen
