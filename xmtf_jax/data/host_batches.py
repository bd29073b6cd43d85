"""This process's part of every global batch, read from one or more data shards.

The data stream is split into `num_data_shards` shards (default: one per process); process p reads the
contiguous block of shards [p*k, (p+1)*k) with k = num_data_shards / process_count and hands over
their rows in shard order. The global batch is the concatenation of all shards' rows in shard order,
whatever the number of processes, so a run with 1 process reading 2 shards sees exactly the batches
of a run with 2 processes reading one each.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from xmtf_jax.data import batch_source, decoder_only, stats
from xmtf_jax.data import pipeline as input_pipeline
from xmtf_jax.errors import UserError


def shards_of_process(num_data_shards: int, process_index: int, process_count: int) -> range:
  if num_data_shards % process_count:
    raise UserError(f"num_data_shards={num_data_shards} must be a multiple of the number of "
                     f"processes ({process_count})")
  per_process = num_data_shards // process_count
  return range(process_index * per_process, (process_index + 1) * per_process)


class HostBatches:
  """The tf.data batch source (`batch_source.BatchSource`): host-local numpy batches
  (batch_size / process_count rows) with a restorable position."""

  def __init__(self, iterators: Sequence[input_pipeline.BatchIterator],
               process_index: Optional[int] = None, process_count: Optional[int] = None):
    self.iterators = list(iterators)
    self.process_index, self.process_count = batch_source.process_index_and_count(
        process_index, process_count)

  def shapes(self) -> dict[str, tuple[int, int]]:
    parts = [it.shapes() for it in self.iterators]
    return {k: (sum(p[k][0] for p in parts), length) for k, (_, length) in parts[0].items()}

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    """The next rows; for a single pass (repeat=False) an exhausted shard gives all-zero rows (loss
    weight 0) until every shard of this process is exhausted, then StopIteration."""
    parts, exhausted = [], 0
    for it in self.iterators:
      try:
        parts.append(next(it))
      except StopIteration:
        exhausted += 1
        parts.append(batch_source.zero_batch(it.shapes()))
    if exhausted == len(parts):
      raise StopIteration
    if len(parts) == 1:
      return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def get_state(self) -> list[dict]:
    return [it.get_state() for it in self.iterators]

  def set_state(self, saved_by_process: Sequence[Sequence[Mapping[str, Any]]]) -> None:
    """Continues from the positions every process saved (`get_state` of each, in process order)."""
    if len(saved_by_process) != self.process_count:
      raise UserError(
          f"the input position was saved by {len(saved_by_process)} process(es) and this run has "
          f"{self.process_count}: the tf.data pipeline continues its stream only with as many "
          "processes. Restart with that many, switch to the indexed pipeline for new runs "
          "(TrainConfig.input_pipeline = 'indexed'), or set TrainConfig.restore_input_position = "
          "False to start the data stream from the beginning.")
    states = saved_by_process[self.process_index]
    if isinstance(states, Mapping):
      raise UserError("the saved input position was written by the indexed input pipeline; "
                       "resume with TrainConfig.input_pipeline = 'indexed' (or set "
                       "TrainConfig.restore_input_position = False)")
    if len(states) != len(self.iterators):
      raise UserError(f"the saved input position covers {len(states)} data shard(s) of this process, "
                       f"this run reads {len(self.iterators)}; keep num_data_shards and the number of "
                       "processes, or set TrainConfig.restore_input_position=False")
    for it, state in zip(self.iterators, states):
      it.set_state(state)

  def stats(self) -> dict:
    """What this process's shards counted (truncation, bad lines), summed."""
    return stats.merged([it.stats() for it in self.iterators])

  def close(self) -> None:
    for it in self.iterators:
      it.close()


def make_host_batches(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], split: str,
                      batch_size: int, *, use_packing: bool, shuffle: bool, seed: int, repeat: bool,
                      num_data_shards: Optional[int] = None, process_index: Optional[int] = None,
                      process_count: Optional[int] = None,
                      feature_layout: str = decoder_only.ENCODER_DECODER) -> HostBatches:
  """HostBatches of this process (default jax.process_index() of jax.process_count())."""
  index, count = batch_source.process_index_and_count(process_index, process_count)
  num_data_shards = num_data_shards or count
  if batch_size % num_data_shards:
    raise UserError(f"BATCH_SIZE={batch_size} must be a multiple of the number of data shards "
                     f"({num_data_shards}, by default the number of processes)")
  shards = shards_of_process(num_data_shards, index, count)
  return HostBatches([
      input_pipeline.make_batch_iterator(
          mixture_or_task_name, task_feature_lengths, split, batch_size, use_packing=use_packing,
          shuffle=shuffle, seed=seed, shard_index=shard, num_shards=num_data_shards, repeat=repeat,
          feature_layout=feature_layout)
      for shard in shards], index, count)
