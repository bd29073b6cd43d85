"""Counting what trimming to the task feature lengths cuts off, per task, as the pipeline runs.

A seqio preprocessor (`count_truncation`) placed after tokenisation and before
`append_eos_after_trim` adds each example's untrimmed lengths (EOS included where the feature adds
one) to the int64 counters of the batch source whose pipeline is being built (`stats.collecting`):
tf.Variables updated inside tf.data, so counting costs no Python call per example. Those counts
cover examples *produced* by a tf.data pipeline, which runs a little ahead of the trainer (prefetch,
shuffle buffers); each epoch is counted again. The indexed pipeline counts its standard tasks in
Python when a batch is handed out (data/indexed_pipeline.py).
"""
from __future__ import annotations

from typing import Mapping, Optional

import tensorflow as tf

from xmtf_jax.data import stats
from xmtf_jax.data.stats import FIELDS, TruncationCounter  # noqa: F401  (their home is stats.py)


def summarise(totals: Mapping[str, int]) -> dict[str, float]:
  """Shares of examples truncated, per feature."""
  n = max(totals["examples"], 1)
  return {f"{k}_truncated_share": totals[f"{k}_truncated_examples"] / n for k in ("inputs", "targets")}


def count_truncation(dataset: tf.data.Dataset, output_features: Mapping,
                     sequence_length: Optional[Mapping[str, int]] = None, *,
                     task_name: str) -> tf.data.Dataset:
  """seqio preprocessor: counts untrimmed lengths and truncation; passes examples through unchanged.

  Use with `functools.partial(count_truncation, task_name=...)` right after
  `seqio.preprocessors.tokenize`. Counts into the DataStats being collected where the dataset is
  built (`stats.collecting`); without one it passes the examples through uncounted.
  """
  sink = stats.current()
  if sink is None:
    return dataset
  variable = sink.truncation_counter(task_name).variable

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
