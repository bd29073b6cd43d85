"""What a batch source counted while it read: truncation and skipped bad lines, per (task, split).

A `DataStats` belongs to one batch source (the training batches, the validation batches, the data
report): its `stats()` report only what that source read. Code that reads data on a source's behalf
but cannot be handed the object (seqio preprocessors such as `truncation.count_truncation`, the
`JsonlDataSource` seqio calls) finds it through `collecting(stats)`, which the source enters while it
*builds* its pipeline; they bind to it then, so tf.data threads count into the right object later.
Outside `collecting` nothing is counted (bad lines are still logged).
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import threading
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

FIELDS = ("examples", "inputs_tokens", "inputs_truncated_examples", "inputs_truncated_tokens",
          "targets_tokens", "targets_truncated_examples", "targets_truncated_tokens")


class TruncationCounter:
  """Totals over the examples a task produced: untrimmed tokens, examples and tokens cut off.

  Counted in a tf.Variable by tf.data pipelines and in a numpy array by Python code (`add`).
  """

  def __init__(self):
    with tf.init_scope():  # created eagerly even when first asked for inside a tf.function
      self.variable = tf.Variable(tf.zeros([len(FIELDS)], tf.int64), trainable=False)
    self._python = np.zeros(len(FIELDS), np.int64)
    self._lock = threading.Lock()

  def add(self, values) -> None:
    with self._lock:
      self._python += np.asarray(values, np.int64)

  def totals(self) -> dict[str, int]:
    with self._lock:
      values = self.variable.numpy() + self._python
    return dict(zip(FIELDS, (int(v) for v in values)))


class BadLineLog:
  """Thread-safe record of rejected lines (lenient mode) and unusable folders, per data source.

  A line is counted once however many epochs read it: the key is (source, path, line).
  """

  def __init__(self):
    self._lock = threading.Lock()
    self._seen: dict[str, dict[tuple[str, int], str]] = {}

  def record(self, source: str, path: str, line: int, reason: str, why: str = "") -> None:
    """Counts a skipped line (or folder: line 0); logs the first five and the 10th, 100th, ..."""
    with self._lock:
      lines = self._seen.setdefault(source, {})
      if (path, line) in lines:
        return
      lines[(path, line)] = reason
      n = len(lines)
    if n <= 5 or math.log10(n).is_integer():
      log_skipped(source, path, line, reason, why, n)

  def counts(self, source: Optional[str] = None) -> dict:
    """{source: {reason: count}} (or {reason: count} for one source)."""
    with self._lock:
      out = {}
      for name, lines in self._seen.items():
        per = out.setdefault(name, {})
        for reason in lines.values():
          per[reason] = per.get(reason, 0) + 1
    return out.get(source, {}) if source is not None else out

  def examples(self, source: str, limit: int = 5) -> list[str]:
    """A few `path:line (reason)` strings, to show in reports."""
    with self._lock:
      items = sorted(self._seen.get(source, {}).items())[:limit]
    return [f"{p}:{n} ({r})" for (p, n), r in items]


def log_skipped(source: str, path: str, line: int, reason: str, why: str = "",
                n: Optional[int] = None) -> None:
  so_far = f"; {n} bad lines skipped so far in {source}" if n is not None else f" in {source}"
  logging.warning("lenient mode: skipped %s:%d (%s%s)%s", path, line, reason,
                  f": {why}" if why else "", so_far)


class DataStats:
  """Truncation counters and bad lines of the examples one batch source read from `split`."""

  def __init__(self, split: str):
    self.split = split
    self.bad_lines = BadLineLog()
    self._truncation: dict[str, TruncationCounter] = {}
    self._lock = threading.Lock()

  def sharing_bad_lines(self) -> "DataStats":
    """A DataStats that logs bad lines into this one's and keeps its truncation counts apart (for
    pipelines whose examples are counted elsewhere, e.g. by the decoder-only layout)."""
    view = DataStats(self.split)
    view.bad_lines = self.bad_lines
    return view

  def truncation_counter(self, task_name: str) -> TruncationCounter:
    with self._lock:
      if task_name not in self._truncation:
        self._truncation[task_name] = TruncationCounter()
      return self._truncation[task_name]

  def add_truncation(self, counts: Mapping[str, np.ndarray]) -> None:
    """Adds {task: counts in FIELDS order} (e.g. the examples of a batch handed out)."""
    for task, values in counts.items():
      self.truncation_counter(task).add(values)

  def truncation(self) -> dict[str, dict[str, int]]:
    with self._lock:
      counters = sorted(self._truncation.items())
    return {name: c.totals() for name, c in counters}

  def as_dict(self) -> dict:
    """{"split", "truncation": {task: totals}, "bad_lines": {task: {reason: n}}} (JSON-able)."""
    return {"split": self.split, "truncation": self.truncation(),
            "bad_lines": self.bad_lines.counts()}


def merged(stats: Sequence[dict]) -> dict:
  """The sum of several `as_dict()`s of one split (a process reading several data shards)."""
  out = {"split": stats[0]["split"] if stats else None, "truncation": {}, "bad_lines": {}}
  for s in stats:
    for task, totals in s["truncation"].items():
      mine = out["truncation"].setdefault(task, dict.fromkeys(FIELDS, 0))
      for k, v in totals.items():
        mine[k] += v
    for task, reasons in s["bad_lines"].items():
      mine = out["bad_lines"].setdefault(task, {})
      for k, v in reasons.items():
        mine[k] = mine.get(k, 0) + v
  return out


_CURRENT: contextvars.ContextVar[Optional[DataStats]] = contextvars.ContextVar(
    "xmtf_jax_data_stats", default=None)


@contextlib.contextmanager
def collecting(stats: Optional[DataStats]) -> Iterator[Optional[DataStats]]:
  """Within the block (this thread), pipelines being built count into `stats`."""
  token = _CURRENT.set(stats)
  try:
    yield stats
  finally:
    _CURRENT.reset(token)


def current() -> Optional[DataStats]:
  """The DataStats of the batch source whose pipeline is being built here, or None."""
  return _CURRENT.get()
