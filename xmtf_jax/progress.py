"""Progress of a counted job (examples scored, decoded, read): done/total, rate and time left.

Training reports steps, tokens/s and MFU through `xmtf_jax.train.reporting.ProgressMeter`, which uses
`format_duration` from here.
"""
from __future__ import annotations

import datetime
import math
import sys
import time
from typing import Callable


def format_duration(seconds: float) -> str:
  """H:MM:SS, or "?" when unknown."""
  if not math.isfinite(seconds) or seconds < 0:
    return "?"
  return str(datetime.timedelta(seconds=int(round(seconds))))


def to_stderr(message: str) -> None:
  """A print_fn for reports whose stdout is data (e.g. JSON)."""
  print(message, file=sys.stderr, flush=True)


class Progress:
  """Prints items/s and the time left every `every_seconds` (or not at all with print_fn None).

  unit: what is counted ("examples", "jobs"); detail: more text for each line (e.g. rows/s)."""

  def __init__(self, total: int, print_fn: Callable[[str], None] | None = print,
               every_seconds: float = 10.0, label: str = "scored", unit: str = "examples",
               detail: Callable[[], str] | None = None):
    self.total, self.done, self.print_fn, self.every, self.label = total, 0, print_fn, every_seconds, label
    self.unit, self.detail = unit, detail
    self.start = self.last = time.perf_counter()

  def update(self, count: int) -> None:
    self.done += count
    now = time.perf_counter()
    if self.print_fn and (now - self.last >= self.every or self.done >= self.total):
      self.last = now
      rate = self.done / max(now - self.start, 1e-9)
      left = (self.total - self.done) / rate if rate > 0 else float("inf")
      extra = f"; {self.detail()}" if self.detail else ""
      self.print_fn(f"{self.label} {self.done}/{self.total} {self.unit}, {rate:.1f} {self.unit}/s, "
                    f"about {format_duration(left)} left{extra}")
