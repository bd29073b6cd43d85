"""glibc malloc settings that keep XLA:CPU's per-step temporaries in the heap.

Why: XLA:CPU allocates each step's temporary buffers afresh (mt5-small: logits and their gradient are
1 GiB each). glibc serves large blocks with a fresh `mmap` and hands them back with `munmap`, so the
kernel zeroes and faults in gigabytes of pages per step: on the 2-core development machine that was a
third of the mt5-small train step (README, Benchmarks). With mmap off, no trimming and one arena,
freed blocks are reused from step to step; the process keeps its peak heap, which a training process
wants anyway. glibc reads these settings only at start-up (`mallopt` later cannot raise the trim
threshold past 2 GiB, nor move threads that already have arenas), so CLI entry points re-execute
themselves once with them set. Only where JAX can only run on the CPU (no TPU or GPU plugin installed,
or JAX_PLATFORMS=cpu): accelerator hosts keep glibc's defaults. XMTF_CPU_MALLOC=0 opts out.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from typing import Sequence

TUNED_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
             "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
_MARKER = "XMTF_CPU_MALLOC"  # "1": already applied (set by the re-execution); "0": opted out


def jax_is_cpu_only() -> bool:
  """True when JAX cannot pick an accelerator: told so, or no TPU/GPU plugin is installed."""
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return all(p.strip() == "cpu" for p in platforms.split(","))
  if importlib.util.find_spec("libtpu") is not None or importlib.util.find_spec("jax_plugins"):
    return False
  return not list(importlib.metadata.entry_points(group="jax_plugins"))


def _on_glibc() -> bool:
  try:
    return sys.platform.startswith("linux") and bool(os.confstr("CS_GNU_LIBC_VERSION"))
  except (ValueError, OSError):
    return False


def is_tuned() -> bool:
  return all(os.environ.get(k) == v for k, v in TUNED_ENV.items())


def reexec_tuned(module: str | None, argv: Sequence[str]) -> None:
  """Re-executes this process (`python -m module argv` or `python argv[0] argv[1:]`) with TUNED_ENV.

  Returns (doing nothing) when already tuned, opted out, on an accelerator host, or not on glibc.
  Call it first thing under `if __name__ == "__main__"`, before threads or a JAX backend exist.
  """
  if os.environ.get(_MARKER) in ("0", "1") or is_tuned() or not jax_is_cpu_only():
    return
  if not _on_glibc():
    return
  env = dict(os.environ, **TUNED_ENV, **{_MARKER: "1"})
  command = [sys.executable, *(["-m", module] if module else []), *argv]
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, command, env)
