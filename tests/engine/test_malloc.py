"""mobileconv.engine.malloc: large blocks stay on the heap, so a repeated allocation stops faulting in fresh pages.

The setting is process-wide, so each case runs in a fresh interpreter; the oracle is the kernel's
count of minor page faults (``getrusage``), not the code under test.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")

# A training step's pattern, `steps` times: `blocks` tensors of `mib` MiB allocated, written, then freed.
PROBE = """
import json, resource, sys
import torch
from mobileconv.engine.malloc import keep_large_allocations_on_heap
mode, steps, blocks, mib = sys.argv[1], *map(int, sys.argv[2:5])
applied = keep_large_allocations_on_heap() if mode == "heap" else None
faults = []
for _ in range(steps):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensors = [torch.empty(mib * 2**18).fill_(1.0) for _ in range(blocks)]
    del tensors
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _probe(mode: str, steps: int = 6, blocks: int = 1, mib: int = 64) -> dict:
    argv = [sys.executable, "-c", PROBE, mode, str(steps), str(blocks), str(mib)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_large_blocks_are_reused_from_the_heap():
    pages = 64 * 2**20 // 4096
    default, heap = _probe("default"), _probe("heap")
    assert heap["applied"] is True
    # glibc's default: every 64 MiB block is a fresh mmap, faulted in page by page on each allocation
    assert min(default["faults"][1:]) > pages // 2
    # on the heap: the first allocation faults its pages in, the later ones reuse them (all but
    # the odd one: the heap can move once while it grows to its working size)
    assert sorted(heap["faults"][1:])[-2] < pages // 20


def test_the_heap_is_not_trimmed_between_steps():
    # more than 1 GiB freed at the top of the heap between two steps (a backward pass freeing a
    # forward pass's activations): a heap that trims gives it back and faults it in again
    result = _probe("heap", steps=4, blocks=8, mib=160)
    assert result["applied"] is True
    pages = 8 * 160 * 2**20 // 4096
    faults = result["faults"]
    assert faults[0] > pages // 2, faults  # the first step faults its pages in (the oracle works)
    # the later ones reuse them: in all, less than half a step's pages while the heap settles
    # (measured: 0-41,000 of 327,680), and none once it has; a trimming heap faults ~all every step
    assert sum(faults[1:]) < pages // 2 and faults[-1] < pages // 20, faults


@pytest.mark.parametrize("flag, calls", [([], 1), (["--no-heap-malloc"], 0)])
def test_train_applies_it_unless_told_not_to(tmp_path, monkeypatch, flag, calls):
    from mobileconv.cli import main
    from mobileconv.engine import trainer

    from .helpers import TINY

    seen = []
    monkeypatch.setattr(trainer, "keep_large_allocations_on_heap", lambda: seen.append(True) or True)
    assert main(["train", *TINY, "--epochs", "1", *flag, "--out", str(tmp_path / "run")]) == 0
    assert len(seen) == calls
