"""Large tensors from the heap instead of fresh pages (glibc), for CPU training and inference.

Under glibc's default settings every allocation above the mmap threshold (dynamic, at most
32 MiB) is a new ``mmap`` and every free an ``munmap``. The next step's tensors of the same size
then arrive as new pages that the kernel zeroes on first touch: a batch-32 MixNet-S training
step at 224x224 takes some 330,000 page faults and half a second of kernel time. Raising the
mmap threshold keeps those blocks in the heap, reused from step to step, which is what jemalloc
and tcmalloc (the allocators PyTorch's CPU tuning guide recommends) do by default. Trimming is
switched off as well: with a trim threshold (1 GiB was tried), whenever more than that lay free
at the top of the heap, as it can between a backward pass and the next forward, glibc gave it
back and the next step faulted it in again (MixNet-S at batch 32: 23,000-229,000 faults in four
training steps of ten, which took 1.04-1.7x as long as the others; benchmarks/README.md).
The cost is memory: the heap keeps its peak size, freed blocks stay with the process instead of
going back to the system.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# blocks up to this size come from the heap
HEAP_THRESHOLD = 1 << 30
# a trim threshold of -1 (SIZE_MAX to glibc): free memory at the top of the heap is never given back
NEVER_TRIM = -1

_applied = False


def keep_large_allocations_on_heap() -> bool:
    """Tell glibc's malloc to serve blocks up to 1 GiB from the heap and never trim it; whether it took effect.

    Process-wide and lasting: for a program that owns its process (``mobileconv train`` calls it
    unless ``--no-heap-malloc``; ``mobileconv bench --heap-malloc``). Returns ``False``, changing
    nothing, where the C library is not glibc (macOS, Windows, musl).
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mmap threshold first: switching trimming off alone would not stop the mmap'ing
    _applied = bool(mallopt(M_MMAP_THRESHOLD, HEAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
    return _applied
