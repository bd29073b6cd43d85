"""Counting what trimming to the task feature lengths cuts off, per task, as the pipeline runs.

A seqio preprocessor (`count_truncation`) placed after tokenisation and before
`append_eos_after_trim` adds each example's untrimmed lengths (EOS included where the feature adds
one) to per-task int64 counters (tf.Variables updated inside tf.data, so counting costs no Python
call per example). Counts cover examples *produced* by the pipeline, which runs a little ahead of
the trainer (prefetch, shuffle buffers); each epoch is counted again.
"""
from __future__ import annotations

import threading
from typing import Mapping, Optional

import numpy as np
import tensorflow as tf

FIELDS = ("examples", "inputs_tokens", "inputs_truncated_examples", "inputs_truncated_tokens",
          "targets_tokens", "targets_truncated_examples", "targets_truncated_tokens")


class TruncationCounter:
  """Totals over the examples a task produced: untrimmed tokens, examples and tokens cut off.

  Counted in a tf.Variable by tf.data pipelines and in a numpy array by Python code (`add`).
  """

  def __init__(self):
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

  def reset(self) -> None:
    with self._lock:
      self.variable.assign(tf.zeros([len(FIELDS)], tf.int64))
      self._python[:] = 0


_COUNTERS: dict[str, TruncationCounter] = {}
_LOCK = threading.Lock()


def counter(task_name: str) -> TruncationCounter:
  with _LOCK:
    if task_name not in _COUNTERS:
      with tf.init_scope():  # created eagerly even when first asked for inside a tf.function
        _COUNTERS[task_name] = TruncationCounter()
    return _COUNTERS[task_name]


def all_totals() -> dict[str, dict[str, int]]:
  """{task name: totals} for every task that produced examples in this process."""
  with _LOCK:
    names = sorted(_COUNTERS)
  return {name: _COUNTERS[name].totals() for name in names}


def reset_all() -> None:
  """Zeroes every task's counters (a new run in the same process starts counting afresh)."""
  with _LOCK:
    counters = list(_COUNTERS.values())
  for c in counters:
    c.reset()


def summarise(totals: Mapping[str, int]) -> dict[str, float]:
  """Shares of examples truncated, per feature."""
  n = max(totals["examples"], 1)
  return {f"{k}_truncated_share": totals[f"{k}_truncated_examples"] / n for k in ("inputs", "targets")}


def count_truncation(dataset: tf.data.Dataset, output_features: Mapping,
                     sequence_length: Optional[Mapping[str, int]] = None, *,
                     task_name: str) -> tf.data.Dataset:
  """seqio preprocessor: counts untrimmed lengths and truncation; passes examples through unchanged.

  Use with `functools.partial(count_truncation, task_name=...)` right after
  `seqio.preprocessors.tokenize`.
  """
  variable = counter(task_name).variable

  def lengths(ex, key):
    n = tf.size(ex[key], out_type=tf.int64)
    if output_features[key].add_eos:
      n += 1
    limit = (sequence_length or {}).get(key)
    if limit is None:
      return n, tf.constant(0, tf.int64), tf.constant(0, tf.int64)
    cut = tf.maximum(n - limit, 0)
    return n, tf.cast(cut > 0, tf.int64), cut

  def count(ex):
    update = [tf.constant(1, tf.int64)]
    for key in ("inputs", "targets"):
      update.extend(lengths(ex, key))
    with tf.control_dependencies([variable.assign_add(tf.stack(update))]):
      return {k: tf.identity(v) for k, v in ex.items()}

  return dataset.map(count, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def describe(all_task_totals: Mapping[str, Mapping[str, int]], lengths: Mapping[str, int]) -> list[str]:
  """One line per task whose examples were cut, for a run's log: what share, at which length."""
  lines = []
  for task, totals in sorted(all_task_totals.items()):
    shares = summarise(totals)
    cut = [f"{key} {shares[f'{key}_truncated_share']:.0%} cut at {lengths.get(key)} tokens"
           for key in ("inputs", "targets") if totals[f"{key}_truncated_examples"]]
    if cut:
      lines.append(f"truncation in {task} ({totals['examples']} examples so far): " + ", ".join(cut))
  return lines
