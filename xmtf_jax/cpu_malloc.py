"""glibc malloc settings that keep XLA:CPU's per-step temporaries in the heap.

Why: XLA:CPU allocates each step's temporary buffers afresh (mt5-small: logits and their gradient are
1 GiB each). glibc serves every block over 32 MiB-ish with a fresh `mmap` and returns it with `munmap`,
so the kernel zeroes and faults in gigabytes of pages per step: on the 2-core development machine
that was a third of the mt5-small train step and more of the tiny one (see README, Benchmarks).
With mmap off, no trimming and one arena, freed blocks are reused from step to step. The cost: the
process keeps its peak heap (it is never handed back to the OS), which is what a training process
wants anyway. Only applied on the CPU backend; accelerators allocate device memory elsewhere.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

# mallopt parameters from glibc's <malloc.h>.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_SETTINGS = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_ARENA_MAX, 1))


def tune_for_xla_cpu() -> bool:
  """Applies the settings with `mallopt`; False (and a log line) where libc has no mallopt (musl, macOS)."""
  name = ctypes.util.find_library("c")
  try:
    mallopt = ctypes.CDLL(name).mallopt
  except (OSError, AttributeError, TypeError):
    logging.info("cpu_malloc: no glibc mallopt in %r; malloc settings left as they are", name)
    return False
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  return all(mallopt(param, value) == 1 for param, value in _SETTINGS)
