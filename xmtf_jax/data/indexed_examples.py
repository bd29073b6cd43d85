"""Example k of a task, read by line offset and tokenized by the task's own seqio preprocessors.

`TaskLines` maps a task's example number k to a line: epoch k // n, then a seeded Permutation of
the n lines of the split's files (data/global_order.py), and reads and checks that line with the
same rules as the tf.data source (`jsonl_source.check_record`). A bad line is an error naming file
and line (strict), or is counted in the reader's `stats` and replaced by the task's next example
(lenient), so the stream keeps its length and stays a pure function of the seed.

`TaskTokenizer` runs the task's preprocessors (tokenize, truncation counts, EOS, trimming: whatever
the seqio Task lists) in one long-lived tf.data pipeline per task, fed record by record from a
queue, so users' tasks and mixtures need no change. Preprocessors must be one-to-one (seqio's
tokenize, append_eos, rekey, ...): a filtering preprocessor is reported instead of hanging.
`DecoderOnlyTokenizer` makes the decoder-only layout's examples (data/decoder_only.py) instead.
"""
from __future__ import annotations

import concurrent.futures
import functools
import queue
import threading
import time
from typing import Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from xmtf_jax import paths
from xmtf_jax.data import decoder_only, global_order, jsonl_source, line_index, stats, truncation
from xmtf_jax.data import tasks as data_tasks
from xmtf_jax.data.jsonl_source import HOW_TO_FIX, JsonlDataSource
from xmtf_jax.errors import UserError


class Example(tuple):
  """(inputs, targets) int32 token arrays of one example, plus its `task` name and `truncation`:
  its counts in `stats.FIELDS` order, added to a DataStats when the example is handed out (None
  where the task's own tf.data preprocessors counted it when it was tokenized)."""

  def __new__(cls, inputs, targets, task: str, truncation: Optional[np.ndarray] = None):
    self = super().__new__(cls, (inputs, targets))
    self.task = task
    self.truncation = truncation
    return self


def truncation_of(examples: Sequence[Example]) -> dict[str, np.ndarray]:
  """{task: summed truncation counts} of the examples that carry theirs."""
  out: dict[str, np.ndarray] = {}
  for ex in examples:
    if getattr(ex, "truncation", None) is not None:
      out[ex.task] = out.get(ex.task, 0) + ex.truncation
  return out


@functools.lru_cache(maxsize=1)
def _remote_reads() -> concurrent.futures.ThreadPoolExecutor:
  return concurrent.futures.ThreadPoolExecutor(32, thread_name_prefix="line-reads")


class TaskLines:
  """The (checked) records of one task's split, by example number."""

  def __init__(self, task: seqio.Task, split: str, *, seed: int, shuffle: bool,
               index_dir: Optional[str] = None, sink: Optional[stats.DataStats] = None):
    source = task.source
    if not isinstance(source, JsonlDataSource):
      raise UserError(
          f"task {task.name!r} reads its data with a {type(source).__name__}; the indexed input "
          "pipeline reads JSON-lines tasks (`add_jsonl_task`). Use the tf.data pipeline for it "
          "(gin: TrainConfig.input_pipeline = 'tf_data').")
    self._sink = sink
    files = source.existing_files(split, sink)
    archives = [f for f in files if f.endswith(".zip")]
    if archives:
      raise UserError(
          f"task {task.name!r}, split {split!r}: {archives[0]} is a zip archive, which cannot be "
          "read by line offset. Unzip it (the .jsonl members), or use the tf.data pipeline (gin: "
          "TrainConfig.input_pipeline = 'tf_data').")
    self.task = task
    self.name = task.name
    self.schema = source.schema
    self.strict = source.strict
    self.lines = line_index.FileSetIndex(files, index_dir)
    self.size = self.lines.num_lines
    self.remote = any(paths.is_remote(f) for f in files)
    if not self.size:
      raise UserError(f"task {task.name!r} has no examples in split {split!r}: its data files "
                       f"are empty ({', '.join(files)}). Remove it from the mixture or fix its "
                       "files; `python -m xmtf_jax.data_report` lists every task's size.")
    self._seed, self._shuffle = int(seed), bool(shuffle)
    self._permutations: dict[int, global_order.Permutation] = {}

  def lines_of(self, ks: np.ndarray) -> np.ndarray:
    """The lines (of the whole file set, 0-based) that the task's examples `ks` read."""
    epochs, local = np.divmod(np.asarray(ks, np.int64), self.size)
    if not self._shuffle:
      return local
    out = np.empty_like(local)
    for epoch in np.unique(epochs):
      where = epochs == epoch
      out[where] = self._permutation(int(epoch))(local[where])
    return out

  def _permutation(self, epoch: int) -> global_order.Permutation:
    perm = self._permutations.get(epoch)
    if perm is None:
      if len(self._permutations) > 4:
        self._permutations.clear()
      perm = global_order.Permutation(
          self.size, global_order.derive_key("lines", self._seed, self.name, epoch))
      self._permutations[epoch] = perm
    return perm

  def records(self, ks: Sequence[int]) -> list[dict]:
    """The records of examples `ks` (lenient: a bad line's example reads the next good one)."""
    files, lines = self.lines.locate(self.lines_of(np.asarray(ks, np.int64)))
    read = lambda fl: self.lines.files[fl[0]].read(int(fl[1]))
    if self.remote and len(ks) > 1:  # one ranged request per line: overlap their latencies
      texts = list(_remote_reads().map(read, zip(files, lines)))
    else:
      texts = [read(fl) for fl in zip(files, lines)]
    out = []
    for k, f, line, text in zip(ks, files, lines, texts):
      record, reason, why = jsonl_source.check_record(text, self.schema)
      out.append(record if record is not None else self._bad(int(k), f, int(line), reason, why))
    return out

  def _bad(self, k: int, f: int, line: int, reason: str, why: str) -> dict:
    for attempt in range(1, self.size + 1):
      path = self.lines.files[f].path
      if self.strict:
        raise jsonl_source.BadDataError(f"{path}, line {line + 1}: {why}. {HOW_TO_FIX}")
      jsonl_source.record_bad(self._sink, self.name, path, line + 1, reason, why)
      files, lines = self.lines.locate(self.lines_of(np.array([k + attempt])))
      f, line = int(files[0]), int(lines[0])
      record, reason, why = jsonl_source.check_record(self.lines.files[f].read(line), self.schema)
      if record is not None:
        return record
    raise jsonl_source.BadDataError(
        f"task {self.name!r}: every one of its {self.size} lines is bad (lenient mode skipped them "
        "all); see the warnings above and `python -m xmtf_jax.data_report`.")


class TaskTokenizer:
  """Records in, preprocessed `inputs`/`targets` token arrays out, through the task's seqio steps."""

  STALL_SECONDS = 60.0

  def __init__(self, task: seqio.Task, schema: jsonl_source.RecordSchema,
               sequence_length: Mapping[str, int], seed: int, text: bool = False):
    """text: hand out the `inputs`/`targets` strings as tokenized (`*_pretokenized`) instead of
    their ids (the decoder-only layout tokenizes them itself)."""
    self.name = task.name
    self._text = text
    self._fields = tuple(schema.string_fields)
    self._list_fields = tuple(schema.list_fields)
    self._queue: queue.Queue = queue.Queue()
    self._closed = threading.Event()
    self._pulling = threading.Event()
    signature = {f: tf.TensorSpec([], tf.string) for f in self._fields}
    signature.update({f: tf.TensorSpec([None], tf.string) for f in self._list_fields})
    ds = tf.data.Dataset.from_generator(self._records, output_signature=signature)
    ds = task.preprocess_precache(ds, seed=seed)
    ds = task.preprocess_postcache(ds, sequence_length=dict(sequence_length), seed=seed)
    ds = seqio.utils.trim_dataset(ds, dict(sequence_length), task.output_features)
    if text:
      missing = {"inputs_pretokenized", "targets_pretokenized"} - set(ds.element_spec)
      if missing:
        raise UserError(
            f"task {task.name!r}: its preprocessors keep no {' and '.join(sorted(missing))} (the "
            "text seqio's tokenize copies), which the decoder-only layout tokenizes itself. "
            "Tokenize with seqio.preprocessors.tokenize (copy_pretokenized=True, the default).")
      ds = ds.map(lambda ex: {"inputs": ex["inputs_pretokenized"],
                              "targets": ex["targets_pretokenized"]})
    else:
      ds = ds.map(lambda ex: {"inputs": tf.cast(ex["inputs"], tf.int32),
                              "targets": tf.cast(ex["targets"], tf.int32)})
    options = tf.data.Options()
    options.deterministic = True
    self._iterator = ds.with_options(options).as_numpy_iterator()

  def _records(self):
    waited = 0.0
    while True:
      try:
        item = self._queue.get(timeout=0.2)
      except queue.Empty:
        if self._closed.is_set():
          return
        waited = waited + 0.2 if self._pulling.is_set() else 0.0
        if waited > self.STALL_SECONDS:
          raise RuntimeError(
              f"task {self.name!r}: its preprocessors returned fewer examples than they were given "
              "(a filtering preprocessor?). The indexed input pipeline needs one example out per "
              "record in; use the tf.data pipeline (gin: TrainConfig.input_pipeline = 'tf_data').")
        continue
      waited = 0.0
      yield item

  def push(self, records: Sequence[dict]) -> None:
    for r in records:
      item = {f: r[f].encode("utf-8") for f in self._fields}
      item.update({f: [v.encode("utf-8") for v in r[f]] for f in self._list_fields})
      self._queue.put(item)

  def pull(self, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    self._pulling.set()
    try:
      for _ in range(n):
        ex = next(self._iterator)
        if self._text:
          out.append((ex["inputs"].decode("utf-8"), ex["targets"].decode("utf-8")))
        else:
          out.append(Example(ex["inputs"], ex["targets"], self.name))
    except tf.errors.OpError as e:
      bad = jsonl_source.unwrap_tf_error(e)
      raise bad if bad is not e else e
    finally:
      self._pulling.clear()
    return out

  def close(self) -> None:
    self._closed.set()


def pad_id_of(task: seqio.Task) -> int:
  """The pad id of the task's `targets` vocabulary (BLOOM's <pad> = 3, SentencePiece's 0)."""
  return int(data_tasks.resolved(task.output_features["targets"].vocabulary).pad_id)


def _has_standard_steps(task: seqio.Task) -> bool:
  """Whether the task's steps are exactly `data.tasks.preprocessors` (its text is the record's)."""
  steps = list(task.preprocessors)
  return (len(steps) == 3 and steps[0] is seqio.preprocessors.tokenize
          and isinstance(steps[1], functools.partial)
          and steps[1].func is truncation.count_truncation
          and steps[2] is seqio.preprocessors.append_eos_after_trim)


def _is_standard(task: seqio.Task) -> bool:
  """Whether the task's steps are exactly `data.tasks.preprocessors` with SentencePiece features."""
  vocabularies = [data_tasks.resolved(task.output_features[k].vocabulary)
                  for k in ("inputs", "targets")]
  return _has_standard_steps(task) and all(
      isinstance(v, seqio.SentencePieceVocabulary) for v in vocabularies)


class StandardTokenizer:
  """`data.tasks.preprocessors` (tokenize, count truncation, EOS after trimming) in plain Python.

  For tasks made by `add_jsonl_task` (all of xP3 and the demo) it gives the ids seqio's TF ops give
  (tests/test_indexed_pipeline.py compares them) at a small fraction of the per-example cost:
  SentencePiece encodes a whole batch in one call. Each example carries its truncation counts
  (`Example.truncation`), counted when the pipeline hands it out.
  """

  def __init__(self, task: seqio.Task, sequence_length: Mapping[str, int]):
    self.name = task.name
    self._features = {k: task.output_features[k] for k in ("inputs", "targets")}
    self._lengths = dict(sequence_length)
    self._done: list = []

  def push(self, records: Sequence[dict]) -> None:
    columns, counts = {}, [np.ones(len(records), np.int64)]
    for key, feature in self._features.items():
      encode = feature.vocabulary.tokenizer.EncodeAsIds  # per text: a batch call costs ~150 us
      ids = [encode(r[key]) for r in records]
      eos = int(bool(feature.add_eos))
      limit = self._lengths[key]
      untrimmed = np.array([len(x) + eos for x in ids], np.int64)
      cut = np.maximum(untrimmed - limit, 0)
      counts += [untrimmed, (cut > 0).astype(np.int64), cut]
      keep = limit - eos
      columns[key] = [np.array(x[:keep] + [feature.vocabulary.eos_id] * eos, np.int32) for x in ids]
    per_example = np.stack(counts, axis=1)  # [examples, len(stats.FIELDS)]
    self._done.extend(Example(i, t, self.name, c)
                      for i, t, c in zip(columns["inputs"], columns["targets"], per_example))

  def pull(self, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out, self._done = self._done[:n], self._done[n:]
    return out

  def close(self) -> None:
    pass


class DecoderOnlyTokenizer:
  """Examples of the decoder-only layout (data/decoder_only.py): inputs and " " + targets tokenized
  separately with the task's `targets` vocabulary, EOS appended to the targets, both trimmed; each
  carries its truncation counts. The text is the record's `inputs`/`targets` for standard tasks, else
  what the task's own preprocessors hand to seqio's tokenize (`texts`: a TaskTokenizer(text=True))."""

  def __init__(self, task: seqio.Task, sequence_length: Mapping[str, int],
               texts: Optional[TaskTokenizer] = None):
    self.name = task.name
    self._vocabulary = data_tasks.resolved(task.output_features["targets"].vocabulary)
    self._lengths = dict(sequence_length)
    self._texts = texts
    self._pending: list[tuple[str, str]] = []

  def push(self, records: Sequence[dict]) -> None:
    if self._texts is not None:
      self._texts.push(records)
    else:
      self._pending.extend((r["inputs"], r["targets"]) for r in records)

  def pull(self, n: int) -> list[Example]:
    if self._texts is not None:
      pairs = self._texts.pull(n)
    else:
      pairs, self._pending = self._pending[:n], self._pending[n:]
    out = []
    for inputs, targets in self.encode(pairs):
      inputs, targets, counts = decoder_only.trim(inputs, targets, self._vocabulary.eos_id,
                                                  self._lengths)
      out.append(Example(inputs, targets, self.name, counts))
    return out

  def encode(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    vocab = self._vocabulary
    texts = [t for i, o in pairs for t in (i, decoder_only.target_text(o))]
    if hasattr(vocab, "encode_batch"):  # BpeVocabulary: one call for all
      ids = vocab.encode_batch(texts)
    else:
      ids = [list(vocab.encode(t)) for t in texts]
    return list(zip(ids[0::2], ids[1::2]))

  def close(self) -> None:
    if self._texts is not None:
      self._texts.close()


class ExampleReader:
  """Tokenized examples of a mixture's tasks by (task number, example number).

  Bad lines, and the truncation that a task's own tf.data preprocessors count, go to `sink` (the
  batch source's DataStats, kept as `self.stats`); the fast tokenizer's counts travel with each
  `Example`.
  """

  def __init__(self, tasks: Sequence[seqio.Task], split: str, sequence_length: Mapping[str, int],
               *, seed: int, shuffle: bool, index_dir: Optional[str] = None,
               fast_tokenizer: bool = True, sink: Optional[stats.DataStats] = None,
               feature_layout: str = decoder_only.ENCODER_DECODER):
    start = time.time()
    self.feature_layout = feature_layout
    self.stats = sink if sink is not None else stats.DataStats(split)
    self.tasks = [TaskLines(t, split, seed=seed, shuffle=shuffle, index_dir=index_dir,
                            sink=self.stats) for t in tasks]
    self.index_seconds = time.time() - start
    self._lengths = dict(sequence_length)
    self._seed = int(seed)
    self._fast = fast_tokenizer
    self._tokenizers: dict = {}

  def _tokenizer(self, t: int):
    if t not in self._tokenizers:
      lines = self.tasks[t]
      if self.feature_layout == decoder_only.DECODER_ONLY:
        texts = None
        if not _has_standard_steps(lines.task):
          with stats.collecting(None):  # the layout counts truncation, not the task's steps
            texts = TaskTokenizer(lines.task, lines.schema, self._lengths, self._seed, text=True)
        self._tokenizers[t] = DecoderOnlyTokenizer(lines.task, self._lengths, texts)
      elif self._fast and _is_standard(lines.task):
        self._tokenizers[t] = StandardTokenizer(lines.task, self._lengths)
      else:
        with stats.collecting(self.stats):  # its count_truncation step binds to our counters
          self._tokenizers[t] = TaskTokenizer(lines.task, lines.schema, self._lengths, self._seed)
    return self._tokenizers[t]

  def examples(self, task_ids: np.ndarray, ks: np.ndarray) -> list[Example]:
    """(inputs, targets) int32 token arrays of each (task, k), in the order asked."""
    out: list = [None] * len(task_ids)
    wanted: dict[int, list[int]] = {}
    for position, t in enumerate(task_ids):
      wanted.setdefault(int(t), []).append(position)
    for t, where in wanted.items():  # all tasks tokenize in parallel before the first pull
      self._tokenizer(t).push(self.tasks[t].records([int(ks[p]) for p in where]))
    for t, where in wanted.items():
      for p, example in zip(where, self._tokenizer(t).pull(len(where))):
        out[p] = example
    return out

  def close(self) -> None:
    for tokenizer in self._tokenizers.values():
      tokenizer.close()
    for lines in self.tasks:
      for f in lines.lines.files:
        f.close()
