"""Large tensors from the heap instead of fresh pages (glibc), for CPU training and inference.

Under glibc's default settings every allocation above the mmap threshold (dynamic, at most
32 MiB) is a new ``mmap`` and every free an ``munmap``. The next step's tensors of the same size
then arrive as new pages that the kernel zeroes on first touch: a batch-32 MixNet-S training
step at 224x224 takes some 330,000 page faults and half a second of kernel time. Raising the
mmap and trim thresholds keeps those blocks in the heap, reused from step to step, which is what
jemalloc and tcmalloc (the allocators PyTorch's CPU tuning guide recommends) do by default.
The cost is memory: freed blocks stay with the process instead of going back to the system.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# blocks up to this size come from the heap, and the heap keeps this much free memory
HEAP_THRESHOLD = 1 << 30

_applied = False


def keep_large_allocations_on_heap() -> bool:
    """Tell glibc's malloc to serve and keep blocks up to 1 GiB on the heap; whether it took effect.

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
    # mmap threshold first: raising the trim threshold alone would not stop the mmap'ing
    _applied = bool(mallopt(M_MMAP_THRESHOLD, HEAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, HEAP_THRESHOLD))
    return _applied
