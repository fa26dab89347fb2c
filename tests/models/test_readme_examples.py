"""The README `models` section's usage example runs as written (except loading a checkpoint file)."""
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[2] / "README.md"


def models_section_code():
    text = README.read_text()
    section = text.split("<!-- section:models -->")[1].split("<!-- /section:models -->")[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return code


def test_models_readme_example_runs():
    code = models_section_code()
    lines = [line for line in code.splitlines() if "pretrained=" not in line]
    scope = {}
    exec("\n".join(lines), scope)  # noqa: S102 - our own documentation
    assert scope["feats"].shape == (2, 1536, 3, 3)
    assert scope["vec"].shape == (2, 1536)
    assert scope["backbone"].channels == [24, 40, 112, 960]
    assert scope["backbone"].reductions == [4, 8, 16, 32]
    assert scope["model"].pretrained_cfg["paper_top1"] is None  # width_mult=0.6: no paper figure
    assert isinstance(scope["logits"], torch.Tensor) and scope["logits"].shape == (2, 10)
