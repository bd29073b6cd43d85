"""Per-host batches from a seqio mixture or task: deterministic, sharded, with a restorable position.

Contract (the trainer codes against this; see docs/architecture.md):

    it = make_batch_iterator("demo", {"inputs": 128, "targets": 64}, "train", global_batch_size=32,
                             use_packing=True, shuffle=True, seed=0)
    batch = next(it)          # dict of int32 numpy arrays, global_batch_size // num_shards rows
    state = it.get_state()    # small JSON-able dict; put it in the checkpoint
    it.set_state(state)       # (on a fresh iterator) continues exactly where `state` was taken

Each process reads a disjoint shard (line k of every file goes to shard (k-1) % num_shards), so
with the same seed the hosts' batches together form one deterministic global stream.

Saving the position: the state is the pipeline's arguments plus the number of batches handed out.
Restoring rebuilds the same deterministic pipeline and skips that many batches inside tf.data. We
chose this over tf.data iterator checkpoints because those hold every task's shuffle buffer (46
xP3 tasks x 10k examples x a few KB per host per checkpoint) and do not support the Python parsing
step; the cost of skipping is re-reading the data consumed so far (~1 s per 10-20k examples per
host; a full mT0 run is ~400k examples per host on 32 hosts), paid once per restart.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

from xmtf_jax import paths
from xmtf_jax.data import batch_source, decoder_only, decoder_only_tf, jsonl_source, stats
from xmtf_jax.data import tasks as data_tasks
from xmtf_jax.errors import UserError

STATE_VERSION = 1


def _inputs_and_targets(ex):
  return {"inputs": ex["inputs"], "targets": ex["targets"]}


def empty_tasks(mixture_or_task_name: str, split: str) -> list[str]:
  """The tasks of a mixture (or the task) whose data files for `split` hold no bytes at all."""
  provider = data_tasks.get_mixture_or_task(mixture_or_task_name)
  found = []
  for task in data_tasks.tasks_of(provider):
    source = task.source
    if split in task.splits and isinstance(source, jsonl_source.JsonlDataSource):
      try:
        files = source.existing_files(split)
      except jsonl_source.BadDataError:
        continue
      if all(paths.getsize(f) == 0 for f in files):
        found.append(task.name)
  return found


def make_dataset(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], split: str,
                 local_batch_size: int, *, use_packing: bool = False, shuffle: bool = True,
                 seed: Optional[int] = None, shard_index: int = 0, num_shards: int = 1,
                 repeat: bool = True,
                 feature_layout: str = decoder_only.ENCODER_DECODER) -> tf.data.Dataset:
  """The batched tf.data pipeline behind `make_batch_iterator` (int32 features, see
  batch_source.batch_shapes).

  With `repeat=False` the split is read once, every task to its end, and the last batch may be
  short. feature_layout 'decoder_only': data/decoder_only_tf.py instead of EncDecFeatureConverter.
  """
  provider = data_tasks.get_mixture_or_task(mixture_or_task_name)
  shard_info = seqio.ShardInfo(index=shard_index, num_shards=num_shards) if num_shards > 1 else None
  lengths = dict(task_feature_lengths)
  if feature_layout == decoder_only.DECODER_ONLY:
    ds = decoder_only_tf.dataset(provider, lengths, split, shuffle=shuffle, seed=seed,
                                 shard_info=shard_info, repeat=repeat, pack=use_packing)
    return _batched(ds, local_batch_size, repeat)
  if isinstance(provider, seqio.Mixture) and not repeat:
    # seqio's sampler stops at the first exhausted task; one pass over a split must instead read
    # every task to its end, so concatenate them (in name order).
    keys = set(provider.output_features)
    parts = [provider.get_task_dataset(task, keys, lengths, split, shuffle=shuffle, seed=seed,
                                       shard_info=shard_info, num_epochs=1)
             for task in provider.tasks if split in task.splits]
    if not parts:
      raise UserError(f"no task of {mixture_or_task_name!r} has a {split!r} split")
    ds = parts[0]
    for part in parts[1:]:
      ds = ds.concatenate(part)
  else:
    ds = provider.get_dataset(sequence_length=lengths, split=split, shuffle=shuffle, seed=seed,
                              shard_info=shard_info, num_epochs=None if repeat else 1,
                              use_cached=False)
  if not isinstance(provider, seqio.Mixture):  # a mixture already keeps only inputs and targets
    ds = ds.map(_inputs_and_targets)  # drop *_pretokenized and metadata features
  ds = seqio.EncDecFeatureConverter(pack=use_packing)(ds, lengths)
  return _batched(ds, local_batch_size, repeat)


def _batched(ds: tf.data.Dataset, local_batch_size: int, repeat: bool) -> tf.data.Dataset:
  if any(spec.dtype != tf.int32 for spec in ds.element_spec.values()):
    ds = ds.map(lambda ex: {k: tf.cast(v, tf.int32) for k, v in ex.items()})
  ds = ds.batch(local_batch_size, drop_remainder=repeat)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options).prefetch(2)


@dataclasses.dataclass(frozen=True)
class PipelineSpec(batch_source.StreamSpec):
  """Everything that determines the stream of batches (saved with the position)."""
  shard_index: int
  num_shards: int
  repeat: bool
  feature_layout: str = decoder_only.ENCODER_DECODER

  @property
  def local_batch_size(self) -> int:
    return self.global_batch_size // self.num_shards


class BatchIterator:
  """Iterator of host-local numpy batches with `get_state`/`set_state` (checkpoints persist the state)."""

  def __init__(self, spec: PipelineSpec):
    self.spec = spec
    self._batches = 0
    self._iterator = None
    self._dataset = None  # built once: a restart from position 0 iterates it again
    self._stats = stats.DataStats(spec.split)

  @property
  def local_batch_size(self) -> int:
    return self.spec.local_batch_size

  @property
  def batches_consumed(self) -> int:
    return self._batches

  def shapes(self) -> dict[str, tuple[int, int]]:
    return batch_source.batch_shapes(self.spec.task_feature_lengths, self.local_batch_size,
                                     self.spec.use_packing, self.spec.feature_layout)

  def _build(self, skip: int) -> None:
    s = self.spec
    if self._dataset is None or skip:
      with stats.collecting(self._stats):  # truncation and bad lines count into this iterator's
        empty = empty_tasks(s.mixture_or_task_name, s.split)
        if empty:  # seqio would mix the others silently, or stop with a bare StopIteration
          raise UserError(
              f"tasks with no examples in split {s.split!r}: {', '.join(empty)} (their data files "
              f"are empty), in {s.mixture_or_task_name!r}. Remove them from the mixture or fix their "
              "files; `python -m xmtf_jax.data_report` lists every task's size.")
        ds = make_dataset(s.mixture_or_task_name, s.task_feature_lengths, s.split,
                          s.local_batch_size, use_packing=s.use_packing, shuffle=s.shuffle,
                          seed=s.seed, shard_index=s.shard_index, num_shards=s.num_shards,
                          repeat=s.repeat, feature_layout=s.feature_layout)
      if not skip:
        self._dataset = ds
    else:
      ds = self._dataset
    if skip:
      ds = ds.skip(skip)
    self._iterator = ds.as_numpy_iterator()

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._iterator is None:
      self._build(self._batches)
    try:
      batch = next(self._iterator)
    except StopIteration:
      if self._batches == 0:
        empty = empty_tasks(self.spec.mixture_or_task_name, self.spec.split)
        raise UserError(
            (f"tasks with no examples in split {self.spec.split!r}: {', '.join(empty)}. " if empty else "")
            + f"{self.spec.mixture_or_task_name!r} split {self.spec.split!r} produced no examples for "
            f"data shard {self.spec.shard_index} of {self.spec.num_shards}: its files are empty, or "
            "every line was skipped as bad (lenient mode; see the warnings above), or a mixture task "
            "is empty. Check the data with `python -m xmtf_jax.data_report`.") from None
      raise
    except tf.errors.OpError as e:
      bad = jsonl_source.unwrap_tf_error(e)
      if bad is not e:
        raise bad from None
      raise
    rows = next(iter(batch.values())).shape[0]
    if rows < self.local_batch_size:  # last batch of a single pass: pad with all-zero rows
      batch = {k: np.concatenate([v, np.zeros((self.local_batch_size - rows,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    self._batches += 1
    return batch

  def get_state(self) -> dict:
    """The position as a JSON-able dict: the pipeline's arguments and the batches handed out."""
    return {"version": STATE_VERSION, "spec": dataclasses.asdict(self.spec),
            "batches_consumed": self._batches}

  def set_state(self, state: Mapping) -> None:
    """Continues from `state` (taken by `get_state` of an iterator with the same arguments)."""
    if state.get("version") != STATE_VERSION:
      raise UserError(f"input-pipeline state version {state.get('version')} is not "
                       f"{STATE_VERSION}; it was written by another version of xmtf_jax")
    batch_source.check_same_spec(
        state["spec"], self.spec,
        "Restore with the same mixture, lengths, batch size, packing, seed and number of hosts, or "
        "set TrainConfig.restore_input_position = False to start the data from the beginning.")
    n = int(state["batches_consumed"])
    start = time.time()
    self._batches = n
    self._build(n)
    if n:
      logging.info("input pipeline: restored position %d batches (fast-forward set up in %.1fs)",
                   n, time.time() - start)

  def close(self) -> None:
    """Drops the tf.data iterator (a later `next` rebuilds it at the same position)."""
    self._iterator = None
    self._dataset = None

  def stats(self) -> dict:
    """Truncation totals and bad-line counts (lenient mode) of what this iterator's pipeline read
    (`stats.DataStats.as_dict`)."""
    return self._stats.as_dict()


def make_batch_iterator(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                        split: str, global_batch_size: int, *, use_packing: bool = False,
                        shuffle: bool = True, seed: Optional[int] = None,
                        shard_index: Optional[int] = None, num_shards: Optional[int] = None,
                        repeat: bool = True,
                        feature_layout: str = decoder_only.ENCODER_DECODER) -> BatchIterator:
  """Host-local batches of `global_batch_size // num_shards` rows for this process's shard.

  Args:
    mixture_or_task_name: a registered seqio mixture or task (xP3-family names register lazily).
    task_feature_lengths: {"inputs": L_in, "targets": L_out}; longer examples are truncated
      (and counted, see `stats`).
    split: "train", "validation", ...
    global_batch_size: rows over all processes; must divide by num_shards.
    use_packing: pack several examples per row (adds *_segment_ids and *_positions).
    shuffle: shuffle files and examples (training); False reads in a fixed order.
    seed: makes the stream reproducible; None picks one (recorded in the state).
    shard_index, num_shards: default jax.process_index() / jax.process_count().
    repeat: loop forever (training); False reads the split once and pads the last batch with
      all-zero rows (loss weight 0).
    feature_layout: 'encoder_decoder' (seqio's EncDecFeatureConverter) or 'decoder_only'
      (data/decoder_only.py).
  """
  batch_source.check_layout(feature_layout)
  shard_index, num_shards = batch_source.process_index_and_count(shard_index, num_shards)
  if global_batch_size % num_shards:
    raise UserError(f"global_batch_size {global_batch_size} does not divide into {num_shards} "
                     "hosts; choose a multiple of the number of processes")
  if not 0 <= shard_index < num_shards:
    raise ValueError(f"shard_index {shard_index} is not in [0, {num_shards})")
  missing = {"inputs", "targets"} - set(task_feature_lengths)
  if missing:
    raise UserError(f"task_feature_lengths needs 'inputs' and 'targets' (missing {missing})")
  if seed is None:
    seed = int(np.random.SeedSequence().entropy % (2**31 - 1))
  spec = PipelineSpec(mixture_or_task_name, {k: int(v) for k, v in task_feature_lengths.items()},
                      split, int(global_batch_size), bool(use_packing), bool(shuffle), int(seed),
                      int(shard_index), int(num_shards), bool(repeat), feature_layout)
  return BatchIterator(spec)
