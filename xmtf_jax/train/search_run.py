"""Running a search (`plan_search` says what may be tried): in which order, under which time limit,
and which candidates are skipped because the results so far show they cannot fit or cannot win.

Why: a real-size compile takes minutes (one pure data-parallel mt5-xl compile took 16), and a search
must finish in the time a user waits for it. Three rules, none of which needs a compile of its own:

- Order: ladders with FSDP before those without, remat 'minimal' before 'dots' before 'none' (the
  order of the memory they keep), smaller `model` axes first. So each ladder's memory dominators, the
  same mesh with FSDP, or with a remat policy that keeps less, have finished when it starts.
- Cannot fit: without FSDP a device holds all its FSDP sibling holds and more (parameters, gradients
  and optimizer state unsplit over `data`), and 'dots' keeps all 'minimal' keeps plus the matmul
  outputs. A ladder therefore starts at the micro-batch count at which its dominators first fit, and
  is skipped when one of them fits at no count tried, or timed out (nothing is known, and a program
  that keeps more compiles no faster).
- Cannot win: the `model`-axis collectives (each layer's activation all-reduces) do not depend on
  FSDP, which splits over `data`; the FSDP sibling's estimated `model`-axis seconds bound the
  estimate of the same mesh without FSDP from below (the estimate overlaps at best). If that bound is
  no better than the best fitting row so far, the ladder is skipped.
- Time limit: with `timeout_s`, each compile runs in a worker process that is killed at the limit; the
  row says "timed out after N s" in the table and in the cache (a rerun with a longer limit compiles
  it again), and its ladder stops (more micro-batches compile no faster).

Skipped candidates are rows too ("skipped: why"), so the table shows everything the space held.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import threading
import time
from typing import Any, Callable, Optional

from xmtf_jax.train import hardware
from xmtf_jax.train import plan as train_plan
from xmtf_jax.train import plan_search
from xmtf_jax.train.plan_search import GIB, Candidate, Row

# Less kept memory first (network.REMAT_POLICIES; plan_search.canonical_remat names them).
REMAT_MEMORY_ORDER = ("minimal", "dots", "none")
TIMED_OUT = "timed out after"


def _remat_rank(name: str) -> int:
  return REMAT_MEMORY_ORDER.index(name) if name in REMAT_MEMORY_ORDER else len(REMAT_MEMORY_ORDER)


def order_groups(groups: list[list[Candidate]]) -> list[list[Candidate]]:
  """FSDP first, then less remat memory, then smaller model axes (see the module doc)."""
  return sorted(groups, key=lambda g: (not g[0].fsdp, _remat_rank(g[0].remat), g[0].model, g[0].remat))


def dominators(groups: list[list[Candidate]]) -> tuple[list[list[int]], list[Optional[int]]]:
  """Per ladder: the ladders that keep no more memory (FSDP sibling; nearest less-memory remat), and
  the FSDP sibling whose `model`-axis time bounds it (None where it has FSDP or has none)."""
  index = {(g[0].data, g[0].model, g[0].fsdp, g[0].remat): i for i, g in enumerate(groups)}
  memory, sibling = [], []
  for g in groups:
    c = g[0]
    doms = []
    fsdp_sibling = index.get((c.data, c.model, True, c.remat)) if not c.fsdp else None
    if fsdp_sibling is not None:
      doms.append(fsdp_sibling)
    lower = [r for r in REMAT_MEMORY_ORDER[:_remat_rank(c.remat)] if (c.data, c.model, c.fsdp, r) in index]
    if lower:
      doms.append(index[(c.data, c.model, c.fsdp, lower[-1])])
    memory.append(doms)
    sibling.append(fsdp_sibling)
  return memory, sibling


def _exit_with(parent: int) -> None:
  """A worker outlives no killed search: compiles can run for many minutes."""
  while os.getppid() == parent:
    time.sleep(5)
  os._exit(1)


def _worker(base: plan_search.SearchBase, candidate: Candidate, conn: Any, parent: int) -> None:
  threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
  try:
    conn.send(plan_search.compile_candidate(base, candidate))
  finally:
    conn.close()


def _describe(c: Candidate) -> str:
  return f"{c.mesh} fsdp={'on' if c.fsdp else 'off'} remat={c.remat}"


class _Compiler:
  """Compiles in this process (no limit, one at a time) or in worker processes killed at the limit."""

  def __init__(self, base: plan_search.SearchBase, workers: int, timeout_s: Optional[float]):
    self.base, self.timeout_s = base, timeout_s
    self.in_process = timeout_s is None and workers <= 1
    self.slots = max(workers, 1)
    self.running: dict[Candidate, tuple[Any, Any, float]] = {}
    self.context = multiprocessing.get_context("spawn")

  def free(self) -> bool:
    return len(self.running) < self.slots

  def start(self, candidate: Candidate) -> Optional[tuple[dict, float]]:
    """In process: the result and seconds now; else None (`wait` returns it later)."""
    begun = time.perf_counter()
    if self.in_process:
      return plan_search.compile_candidate(self.base, candidate), time.perf_counter() - begun
    receive, send = self.context.Pipe(duplex=False)
    process = self.context.Process(target=_worker, args=(self.base, candidate, send, os.getpid()),
                                           daemon=True)
    process.start()
    send.close()
    self.running[candidate] = (process, receive, begun)
    return None

  def wait(self) -> list[tuple[Candidate, dict, float]]:
    """Blocks until a worker answers, dies or reaches the limit; returns those results."""
    timeout = None
    if self.timeout_s is not None:
      now = time.perf_counter()
      timeout = max(0.0, min(begun + self.timeout_s - now for _, _, begun in self.running.values()))
    waitables = [r for _, r, _ in self.running.values()] + [p.sentinel for p, _, _ in self.running.values()]
    multiprocessing.connection.wait(waitables, timeout=timeout)
    finished = []
    for candidate, (process, receive, begun) in list(self.running.items()):
      seconds = time.perf_counter() - begun
      if receive.poll():
        try:
          result = receive.recv()
        except EOFError:
          process.join()
          result = {"error": f"the compile worker exited with status {process.exitcode} (out of host memory?)"}
      elif not process.is_alive():
        result = {"error": f"the compile worker exited with status {process.exitcode} (out of host memory?)"}
      elif self.timeout_s is not None and seconds >= self.timeout_s:
        process.kill()
        result = {"error": f"{TIMED_OUT} {self.timeout_s:g} s", "timed_out_s": self.timeout_s}
      else:
        continue
      process.join()
      receive.close()
      del self.running[candidate]
      finished.append((candidate, result, seconds))
    return finished

  def stop(self) -> None:
    for process, receive, _ in self.running.values():
      process.kill()
      process.join()
      receive.close()
    self.running.clear()


def run_search(base: plan_search.SearchBase, groups: list[list[Candidate]], chip: hardware.Chip, *,
               workers: int = 1, cache_folder: Optional[str] = None, exhaustive: bool = False,
               timeout_s: Optional[float] = None, progress: Callable[[str], None] = lambda line: None
               ) -> list[Row]:
  """Compiles and skips per the module doc (`exhaustive`: every rung, nothing skipped); returns every
  row, sorted (`plan_search.sort_rows`)."""
  cache = plan_search._Cache(cache_folder, base.fingerprint())
  groups = order_groups(groups)
  memory_doms, fsdp_sibling = dominators(groups)
  cursor: list[Optional[int]] = [None] * len(groups)  # the rung to compile next
  # When finished: fit, none (fits nowhere), timeout, unknown (an error), skipped (cannot win).
  outcome: list[Optional[str]] = [None] * len(groups)
  first_fit = [0] * len(groups)
  group_of = {c: i for i, g in enumerate(groups) for c in g}
  rows: dict[Candidate, Row] = {}
  started, compile_times = time.perf_counter(), []
  compiler = _Compiler(base, workers, timeout_s)

  def say(candidate: Candidate, row: Row, how: str) -> None:
    what = (("skipped: " + row.skipped) if row.skipped else ("error: " + row.error) if row.error else
            f"{'fits' if row.fits else 'does not fit'}, peak {row.plan.peak_bytes / GIB:.2f} GiB, "
            f"{plan_search.short(row.estimate)}")
    left = sum(len(g) - (cursor[i] or 0) for i, g in enumerate(groups) if outcome[i] is None)
    eta = sum(compile_times) / len(compile_times) * left / compiler.slots if compile_times else 0.0
    progress(f"search [{len(rows)} done, <= {left} to go] {_describe(candidate)} micro-batches="
             f"{candidate.microbatches}: {what} ({how}; elapsed {time.perf_counter() - started:.0f} s, "
             f"ETA <= {eta:.0f} s)")

  def skip(g: int, first: int, reason: str, last: Optional[int] = None) -> None:
    skipped = groups[g][first:last]
    for candidate in skipped:
      rows[candidate] = Row(candidate, skipped=reason)
    if skipped:
      counts = ",".join(str(c.microbatches) for c in skipped)
      say(dataclasses.replace(skipped[0], microbatches=counts), rows[skipped[0]], "not compiled")

  def finish(g: int, how: str, fit_at: int = 0) -> None:
    outcome[g], first_fit[g] = how, fit_at

  def begin(g: int) -> None:
    """Where ladder g starts, or that it is skipped (its dominators have finished)."""
    cursor[g] = 0
    if exhaustive:
      return
    for d in memory_doms[g]:
      if outcome[d] == "timeout":
        skip(g, 0, f"not compiled: {_describe(groups[d][0])} keeps less memory and timed out (this "
                   "would compile no faster; a longer --search_timeout_s compiles both)")
        return finish(g, "timeout")
      if outcome[d] == "none":
        skip(g, 0, f"cannot fit: {_describe(groups[d][0])} keeps less memory and fits at no micro-batch "
                   "count tried")
        return finish(g, "none")
    need = max([first_fit[d] for d in memory_doms[g] if outcome[d] == "fit"], default=0)
    start = next((i for i, c in enumerate(groups[g]) if c.microbatches >= need), None)
    if start is None or start > 0:
      why = next(d for d in memory_doms[g] if outcome[d] == "fit" and first_fit[d] == need)
      skip(g, 0, f"cannot fit: {_describe(groups[why][0])} keeps less memory and needs {need} "
                 "micro-batches", start)
      if start is None:
        return finish(g, "skipped")
      cursor[g] = start
    s = fsdp_sibling[g]
    best = min((r.estimate.seconds_overlapped for r in rows.values() if r.fits and r.estimate), default=None)
    bounds = [r.estimate.communication_seconds.get("model", 0.0) for r in rows.values()
              if s is not None and group_of[r.candidate] == s and r.estimate is not None]
    if best is not None and bounds and min(bounds) >= best:
      skip(g, cursor[g], f"cannot win: {_describe(groups[s][0])} spends {min(bounds):.3g} s on the model "
                         f"axis (estimate), not below the best fitting {best:.3g} s/step")
      return finish(g, "skipped")

  def record(candidate: Candidate, result: dict, cached: bool, seconds: float = 0.0) -> None:
    row = rows[candidate] = plan_search._row(candidate, result, cached, chip)
    if not cached:
      cache.put(candidate, result)
      compile_times.append(seconds)
    g = group_of[candidate]
    ladder, position = groups[g], groups[g].index(candidate)
    if exhaustive:
      if position + 1 < len(ladder):
        cursor[g] = position + 1
      else:
        finish(g, "fit" if row.fits else "unknown")
    elif row.fits:
      finish(g, "fit", candidate.microbatches)
    elif row.plan is None:  # nothing known about its memory
      finish(g, "timeout" if row.error.startswith(TIMED_OUT) else "unknown")
    elif (row.plan.parameter_bytes + row.plan.optimizer_state_bytes > row.plan.hbm_bytes * train_plan.HBM_HEADROOM
          or position + 1 >= len(ladder)):
      finish(g, "none")  # micro-batches cannot shrink parameters and optimizer state
    else:
      cursor[g] = position + 1
    say(candidate, row, "cached" if cached else f"{seconds:.0f} s")

  def next_candidate() -> Optional[Candidate]:
    busy = {group_of[c] for c in compiler.running}
    for g in range(len(groups)):
      if outcome[g] is not None or g in busy:
        continue
      if cursor[g] is None:
        if any(outcome[d] is None for d in memory_doms[g]) and not exhaustive:
          continue
        begin(g)
        if outcome[g] is not None:
          continue
      return groups[g][cursor[g]]
    return None

  try:
    while True:
      while compiler.free():
        candidate = next_candidate()
        if candidate is None:
          break
        saved = cache.get(candidate)
        if saved is not None and not _retry(saved, timeout_s):
          record(candidate, saved, cached=True)
          continue
        done = compiler.start(candidate)
        if done is not None:
          record(candidate, done[0], cached=False, seconds=done[1])
      if not compiler.running:
        break
      for candidate, result, seconds in compiler.wait():
        record(candidate, result, cached=False, seconds=seconds)
  finally:
    compiler.stop()
  return plan_search.sort_rows(list(rows.values()))


def _retry(saved: dict, timeout_s: Optional[float]) -> bool:
  """A cached time-out is compiled again under a longer limit (or none)."""
  limit = saved.get("timed_out_s")
  return limit is not None and (timeout_s is None or timeout_s > limit)
