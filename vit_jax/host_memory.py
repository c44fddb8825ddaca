"""Host memory that XLA:CPU's steps reuse instead of faulting it in again (glibc malloc settings).

XLA:CPU allocates a step's temporaries (the activations the backward pass keeps: about 4 GB for
the ViT-S/16 batch-32 train step) with malloc, from its worker threads, and frees them when the
step ends. glibc hands blocks that large back to the kernel (they are mmap'ed chunks, or trimmed
from the threads' arenas), so every step faults all of those pages in again and the kernel zeroes
each one: about 1.1M page faults and 2.1-2.6 s of system time in a 7.4-7.9 s step on the 2-core
development CPU (6.2-6.7 s without them). Three mallopt settings keep the memory in the process: one arena (the worker threads' blocks
come from the main heap, which can grow without mmap), no mmap'ed chunks, and no trimming. After
the first step a step then faults no page (BENCHMARKS.md: the step's time with and without).

The cost is that the process keeps its peak heap, which a training process needs again at every
step anyway. mallopt changes glibc's behaviour for the whole process, so the library does not do
it on import: the command lines (vit_jax.main, vit_jax.bench) call `keep_freed_memory` at start,
before the backend's threads exist (an arena a thread already holds stays its own). Set
VIT_JAX_KEEP_HOST_MEMORY=0 to leave glibc's defaults.
"""
from __future__ import annotations

import ctypes
import os
import platform

ENV = "VIT_JAX_KEEP_HOST_MEMORY"
# glibc's malloc.h
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8


def keep_freed_memory() -> bool:
    """Applies the three settings; True if they took (glibc, and not turned off by ENV)."""
    if os.environ.get(ENV, "1") == "0" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # -1 reads as SIZE_MAX in glibc's size_t threshold: never trim (mallopt takes an int)
    return all(mallopt(option, value) == 1
               for option, value in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1)))
