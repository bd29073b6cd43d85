"""Training batches whose order is a pure function of the seed: resumable in O(1), on any host count.

The global batch is `global_batch_size` rows; row r of every batch reads its own stream of global
example indices r, r + G, r + 2G, ... (G = global batch size). Global example i is placed by
`global_order.MixingOrder` (task and the task's example number, at the configured rates) and read by
line offset (`indexed_examples`). Unpacked, row r of batch s is example s*G + r. Packed, a row takes
the next examples of its stream while both features still fit (the first always fits: it is
trimmed), so rows honour segment boundaries and never split an example. With
`feature_layout='decoder_only'` the examples are data/decoder_only.py's, packed next-fit the same way
into rows of inputs + targets positions.

Process p of P builds rows [p*G/P, (p+1)*G/P). The state is, per row, how many examples of its
stream were consumed (run-length encoded: unpacked runs store one pair); a restore reads the
states that every process saved, so it continues the same global batches with any process count
that divides G, at the same cost at step 10 and at step 100,000.

Single pass (validation, the data report): global example i is instead the i-th of the tasks'
splits read once, task after task in the mixture's order, lines in file order; a row whose stream
has ended gets all-zero rows (loss weight 0), and the source stops when all of this process's rows
have ended.

Statistics (`stats()`): bad lines when read; truncation of the standard tasks when the batch holding
the example is handed out, so the counts are those of the examples consumed.

Compared with the tf.data pipeline (data/pipeline.py): no shuffle buffers (every line of an epoch
is equally likely anywhere), mixing rates met to one example per task per block instead of sampled,
and packing is next-fit per row instead of seqio's windowed packing (see the benchmark for both
efficiencies).
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import seqio

from xmtf_jax.data import batch_source, decoder_only, global_order, indexed_examples, stats
from xmtf_jax.data import tasks as data_tasks
from xmtf_jax.errors import UserError

STATE_VERSION = 2
PIPELINE = "indexed"


@dataclasses.dataclass(frozen=True)
class IndexedSpec(batch_source.StreamSpec):
  """What determines the global stream (saved with the position; the process count is not in it)."""
  block_size: int = 4096
  single_pass: bool = False
  feature_layout: str = decoder_only.ENCODER_DECODER


class ConcatOrder:
  """Single pass: global example i is example k of task t, the tasks' examples one after another."""

  def __init__(self, sizes: Sequence[int]):
    self.starts = np.concatenate([[0], np.cumsum(np.asarray(sizes, np.int64))])
    self.total = int(self.starts[-1])

  def assign(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tasks = np.searchsorted(self.starts, indices, side="right") - 1
    return tasks, indices - self.starts[tasks]


_NO_EXAMPLE = (np.zeros(0, np.int32), np.zeros(0, np.int32))


def _run_lengths(values: np.ndarray) -> list[list[int]]:
  runs: list[list[int]] = []
  for v in values.tolist():
    if runs and runs[-1][0] == v:
      runs[-1][1] += 1
    else:
      runs.append([v, 1])
  return runs


def _expand(runs: Sequence[Sequence[int]]) -> np.ndarray:
  return np.concatenate([np.full(int(n), int(v), np.int64) for v, n in runs]) if runs else \
      np.zeros(0, np.int64)


def unpacked_features(examples, lengths: Mapping[str, int]) -> dict[str, np.ndarray]:
  """seqio's EncDecFeatureConverter(pack=False) on one example per row, in numpy."""
  rows = len(examples)
  enc = np.zeros((rows, lengths["inputs"]), np.int32)
  dec = np.zeros((rows, lengths["targets"]), np.int32)
  for r, (inputs, targets) in enumerate(examples):
    enc[r, :len(inputs)] = inputs
    dec[r, :len(targets)] = targets
  shifted = np.concatenate([np.zeros((rows, 1), np.int32), dec[:, :-1]], axis=1)
  return {"encoder_input_tokens": enc, "decoder_target_tokens": dec,
          "decoder_input_tokens": shifted, "decoder_loss_weights": (dec != 0).astype(np.int32)}


def packed_features(rows_of_examples, lengths: Mapping[str, int]) -> dict[str, np.ndarray]:
  """seqio's EncDecFeatureConverter(pack=True) layout for rows of given examples, in numpy."""
  rows = len(rows_of_examples)
  out = {k: np.zeros((rows, lengths["inputs"]), np.int32)
         for k in ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions")}
  out.update({k: np.zeros((rows, lengths["targets"]), np.int32)
              for k in ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                        "decoder_segment_ids", "decoder_positions")})
  for r, examples in enumerate(rows_of_examples):
    at_in = at_out = 0
    for segment, (inputs, targets) in enumerate(examples, start=1):
      n, m = len(inputs), len(targets)
      out["encoder_input_tokens"][r, at_in:at_in + n] = inputs
      out["encoder_segment_ids"][r, at_in:at_in + n] = segment
      out["encoder_positions"][r, at_in:at_in + n] = np.arange(n)
      out["decoder_target_tokens"][r, at_out:at_out + m] = targets
      out["decoder_input_tokens"][r, at_out + 1:at_out + m] = targets[:-1]
      out["decoder_segment_ids"][r, at_out:at_out + m] = segment
      out["decoder_positions"][r, at_out:at_out + m] = np.arange(m)
      at_in, at_out = at_in + n, at_out + m
  out["decoder_loss_weights"] = (out["decoder_target_tokens"] != 0).astype(np.int32)
  return out


class IndexedBatches:
  """This process's rows of every global batch, with get_state/set_state (see module docstring)."""

  def __init__(self, spec: IndexedSpec, process_index: int, process_count: int, *,
               index_dir: Optional[str] = None, prefetch: int = 2):
    if spec.global_batch_size % process_count:
      raise UserError(f"BATCH_SIZE={spec.global_batch_size} must be a multiple of the number of "
                       f"processes ({process_count})")
    self.spec = spec
    provider = data_tasks.get_mixture_or_task(spec.mixture_or_task_name)
    if isinstance(provider, seqio.Mixture):
      tasks = [t for t in provider.tasks if spec.split in t.splits]
      if not spec.single_pass:  # one pass reads every task of the split, as the tf.data one does
        rates = [float(provider.get_rate(t)) for t in tasks]
        tasks, rates = [t for t, r in zip(tasks, rates) if r > 0], [r for r in rates if r > 0]
    else:
      tasks, rates = [provider], [1.0]
    if not tasks:
      raise UserError(f"no task of {spec.mixture_or_task_name!r} has a {spec.split!r} split")
    self.task_names = [t.name for t in tasks]
    self._stats = stats.DataStats(spec.split)
    self.reader = indexed_examples.ExampleReader(tasks, spec.split, spec.task_feature_lengths,
                                                 seed=spec.seed, shuffle=spec.shuffle,
                                                 index_dir=index_dir, sink=self._stats,
                                                 feature_layout=spec.feature_layout)
    self._decoder_only = spec.feature_layout == decoder_only.DECODER_ONLY
    if self._decoder_only:
      self._pad_id = indexed_examples.pad_id_of(tasks[0])
    if spec.single_pass:
      self.order = ConcatOrder([t.size for t in self.reader.tasks])
    else:
      self.order = global_order.MixingOrder(rates, spec.seed, spec.block_size)
    rows = spec.global_batch_size // process_count
    self.rows = range(process_index * rows, (process_index + 1) * rows)
    self._prefetch = prefetch
    self._reset(np.zeros(rows, np.int64))

  # ---- position ---------------------------------------------------------------------------------

  def _reset(self, positions: np.ndarray) -> None:
    self._stop_producer()
    self._positions = positions.copy()   # after the batches handed out
    self._next = positions.copy()        # first example of each row's stream not yet taken
    self._buffers = [[] for _ in self.rows]  # tokenized examples from _next on
    self._ready: queue.Queue = queue.Queue(maxsize=max(self._prefetch, 1))
    self._thread: Optional[threading.Thread] = None
    self._stop = threading.Event()
    self._ended = False  # single pass: every row of this process has ended

  @property
  def local_batch_size(self) -> int:
    return len(self.rows)

  def shapes(self) -> dict[str, tuple[int, int]]:
    return batch_source.batch_shapes(self.spec.task_feature_lengths, self.local_batch_size,
                                     self.spec.use_packing, self.spec.feature_layout)

  def get_state(self) -> dict:
    return {"version": STATE_VERSION, "pipeline": PIPELINE, "spec": dataclasses.asdict(self.spec),
            "rows": [self.rows.start, self.rows.stop], "positions": _run_lengths(self._positions)}

  def set_state(self, states: Union[Mapping, Sequence[Mapping]]) -> None:
    """Continues from the states every process saved (a list, any process count) or one state."""
    states = [states] if isinstance(states, Mapping) else list(states)
    positions = np.full(self.spec.global_batch_size, -1, np.int64)
    for state in states:
      if not isinstance(state, Mapping):  # the tf.data pipeline saves a list of shard states
        state = {"pipeline": "tf_data", "version": 1}
      if state.get("version") != STATE_VERSION or state.get("pipeline") != PIPELINE:
        raise UserError(
            f"the saved input position was written by the {state.get('pipeline', 'tf_data')!r} "
            f"input pipeline (state version {state.get('version')}); this run uses the indexed "
            "one. Resume with the same TrainConfig.input_pipeline, or set "
            "TrainConfig.restore_input_position = False to start the data from the beginning.")
      batch_source.check_same_spec(
          state["spec"], self.spec,
          "Restore with the same mixture, lengths, batch size, packing and seed (the number of "
          "hosts may change), or set TrainConfig.restore_input_position = False to start the data "
          "from the beginning.")
      lo, hi = state["rows"]
      positions[lo:hi] = _expand(state["positions"])
    if (positions[self.rows.start:self.rows.stop] < 0).any():
      raise ValueError(f"the saved input position does not cover rows {self.rows.start}.."
                       f"{self.rows.stop - 1} of the global batch (states of {len(states)} "
                       "process(es) given); pass the states of every process that saved it")
    self._reset(positions[self.rows.start:self.rows.stop])
    if self._positions.any():
      logging.info("input pipeline (indexed): resumed at %d examples per row",
                   int(self._positions.min()))

  def stats(self) -> dict:
    """What this source counted (`stats.DataStats.as_dict`): truncation of the examples handed out
    (standard tasks; a task's own preprocessors count when tokenizing), bad lines read."""
    return self._stats.as_dict()

  # ---- batches ----------------------------------------------------------------------------------

  def _fetch(self, row_offsets: list[int], counts: list[int]) -> None:
    """Appends the next `counts[j]` examples of row row_offsets[j]'s stream to its buffer."""
    G = self.spec.global_batch_size
    which, indices = [], []
    for j, n in zip(row_offsets, counts):
      first = int(self._next[j]) + len(self._buffers[j])
      row = self.rows.start + j
      wanted = [(first + c) * G + row for c in range(n)]
      if self.spec.single_pass:
        wanted = [i for i in wanted if i < self.order.total]
      which += [j] * len(wanted)
      indices += wanted
    if not indices:
      return
    tasks, ks = self.order.assign(np.array(indices, np.int64))
    for j, example in zip(which, self.reader.examples(tasks, ks)):
      self._buffers[j].append(example)

  def _row_ended(self, j: int) -> bool:
    """Single pass: row j's stream holds no example beyond its buffer."""
    if not self.spec.single_pass:
      return False
    after = int(self._next[j]) + len(self._buffers[j])
    return after * self.spec.global_batch_size + self.rows.start + j >= self.order.total

  def _take_rows(self) -> list[list]:
    """The examples of each row of the next batch (advances `_next`); [] for an ended row."""
    lengths = self.spec.task_feature_lengths
    n_rows = len(self.rows)
    empty = [j for j in range(n_rows) if not self._buffers[j]]
    if empty:
      self._fetch(empty, [1] * len(empty))
    if not self.spec.use_packing:
      taken = [[self._buffers[j].pop(0)] if self._buffers[j] else [] for j in range(n_rows)]
      self._next += np.array([len(t) for t in taken], np.int64)
      return taken
    if self._decoder_only:  # one row of L = I + T positions; an example takes decoder_only.size
      capacity = (decoder_only.row_length(lengths),)
      size = lambda ex: (decoder_only.size(ex),)  # noqa: E731
    else:
      capacity = (lengths["inputs"], lengths["targets"])
      size = lambda ex: (len(ex[0]), len(ex[1]))  # noqa: E731
    decided: dict[int, int] = {}
    while len(decided) < n_rows:
      undecided = []
      for j in range(n_rows):
        if j in decided:
          continue
        buf, used, count = self._buffers[j], (0,) * len(capacity), 0
        for example in buf:
          after = tuple(u + n for u, n in zip(used, size(example)))
          if count and any(a > c for a, c in zip(after, capacity)):
            decided[j] = count
            break
          used, count = after, count + 1
        else:
          # full (nothing more can fit: targets end with EOS), or the end of a single pass
          if used[-1] >= capacity[-1] or self._row_ended(j):
            decided[j] = count
          else:
            undecided.append(j)
      if undecided:
        self._fetch(undecided, [2] * len(undecided))
    taken = []
    for j in range(n_rows):
      taken.append(self._buffers[j][:decided[j]])
      del self._buffers[j][:decided[j]]
      self._next[j] += decided[j]
    return taken

  def _make_batch(self) -> tuple[dict, np.ndarray, dict]:
    """(batch, positions after it, truncation counts of its examples by task)."""
    rows = self._take_rows()
    if not any(rows):
      raise StopIteration  # single pass: every row of this process has ended
    counts = indexed_examples.truncation_of([ex for row in rows for ex in row])
    lengths = self.spec.task_feature_lengths
    if self._decoder_only:
      if self.spec.use_packing:
        return decoder_only.packed_features(rows, lengths, self._pad_id), self._next.copy(), counts
      return (decoder_only.unpacked_features([r[0] if r else _NO_EXAMPLE for r in rows], lengths,
                                             self._pad_id), self._next.copy(), counts)
    if self.spec.use_packing:
      return packed_features(rows, lengths), self._next.copy(), counts
    return (unpacked_features([r[0] if r else _NO_EXAMPLE for r in rows], lengths),
            self._next.copy(), counts)

  def _produce(self) -> None:
    while not self._stop.is_set():
      try:
        item = self._make_batch()
      except BaseException as e:  # handed to the consumer, raised from __next__
        item = e
      while not self._stop.is_set():
        try:
          self._ready.put(item, timeout=0.2)
          break
        except queue.Full:
          continue
      if isinstance(item, BaseException):
        return

  def _stop_producer(self) -> None:
    thread = getattr(self, "_thread", None)
    if thread is not None:
      self._stop.set()
      thread.join()

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._ended:
      raise StopIteration
    try:
      if not self._prefetch:
        item = self._make_batch()
      else:
        if self._thread is None:
          self._thread = threading.Thread(target=self._produce, name="indexed-input", daemon=True)
          self._thread.start()
        item = self._ready.get()
        if isinstance(item, BaseException):
          raise item
    except StopIteration:
      self._ended = True
      raise
    batch, self._positions, counts = item
    self._stats.add_truncation(counts)  # counted as handed out: consumed examples only
    return batch

  def close(self) -> None:
    self._stop_producer()
    self.reader.close()


def make_indexed_batches(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                         split: str, global_batch_size: int, *, use_packing: bool, seed: int,
                         shuffle: bool = True, single_pass: bool = False,
                         process_index: Optional[int] = None, process_count: Optional[int] = None,
                         index_dir: Optional[str] = None, prefetch: int = 2,
                         feature_layout: str = decoder_only.ENCODER_DECODER) -> IndexedBatches:
  """This process's IndexedBatches (defaults: jax.process_index() of jax.process_count()).

  feature_layout: 'encoder_decoder' (seqio's EncDecFeatureConverter features) or 'decoder_only'
  (data/decoder_only.py).

  single_pass: read each task's split once, in a fixed order (implies shuffle=False), padding
  ended rows with zeros, then stop (validation).
  """
  process_index, process_count = batch_source.process_index_and_count(process_index, process_count)
  start = time.time()
  spec = IndexedSpec(mixture_or_task_name, {k: int(task_feature_lengths[k])
                                            for k in ("inputs", "targets")},
                     split, int(global_batch_size), bool(use_packing),
                     bool(shuffle) and not single_pass, int(seed), single_pass=bool(single_pass),
                     feature_layout=feature_layout)
  batch_source.check_layout(feature_layout)
  batches = IndexedBatches(spec, process_index, process_count, index_dir=index_dir,
                           prefetch=prefetch)
  logging.info("input pipeline (indexed): %d task(s), %d lines, set up in %.1fs",
               len(batches.task_names), sum(t.size for t in batches.reader.tasks),
               time.time() - start)
  return batches
