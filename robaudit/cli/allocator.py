"""glibc malloc settings for the robaudit process: tensors of a few MB are reused, not faulted in anew.

PyTorch's CPU tensors come from malloc. With glibc's defaults, a freed activation of a
few MB is handed back to the kernel (the heap top is trimmed, or the block was mmapped)
and the next step's tensor of the same size is faulted in again, page by page. On the
sample LeNet a PGD step spends a fifth of its time in those page faults (168,000 minor
faults for 4 batches × 20 steps; benchmarks/RESULTS.md). Two settings stop it:

* ``M_MMAP_THRESHOLD`` = 32 MiB (glibc's largest on 64-bit): blocks below it come from
  the heap and are reused; larger ones (ImageNet activations) are mmapped as before;
* ``M_TRIM_THRESHOLD`` = 256 MiB: the heap top is returned to the kernel only beyond that;
* ``M_MMAP_MAX`` = 0: blocks above 32 MiB come from the heap too. The Fourier blocks of one
  ImageNet-sized convolution are 57 MB, and each mmapped copy was faulted in anew: `layers` on
  resnet18 took 2.1 million page faults and a quarter of its time in the kernel (8 of 33 s);
  glibc still falls back to mmap when the heap cannot grow;
* ``M_ARENA_MAX`` = 1: threads (the layer bounds run on every core) share that one heap; per-thread
  arenas are capped at 64 MiB heaps that are created and unmapped again, which faults as much.

The process keeps up to 256 MiB of freed memory for reuse (its peak is unchanged). Applied by
the console entry point only, on glibc, and never when the user set any ``MALLOC_*`` variable
(their settings win, as with ``OMP_WAIT_POLICY``) or ``ROBAUDIT_MALLOC=default``.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -3, -4, -8  # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20


def tune() -> bool:
    """Apply the settings above; True if glibc accepted all four."""
    if not sys.platform.startswith("linux") or os.environ.get("ROBAUDIT_MALLOC", "") == "default":
        return False
    if any(name.startswith("MALLOC_") for name in os.environ):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library the interpreter runs on
        mallopt = libc.mallopt
        if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: their own allocators
            return False
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    results = [mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD), mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD),
               mallopt(M_MMAP_MAX, 0), mallopt(M_ARENA_MAX, 1)]
    return all(r == 1 for r in results)
