"""A seqio DataSource over JSON-lines files that checks every record and never drops one silently.

Why not seqio's `TextLineDataSource` + a JSON preprocessor: xP3 users need bad lines reported with
their file and line number (strict mode) or skipped *and counted* (lenient mode, in the DataStats
of the batch source that read them: data/stats.py), and hosts of a pod
must read disjoint parts of single big files (`merged_en.jsonl`). Local lines are read by TF's C++
reader; only this host's share of lines reaches the (Python) JSON check, in batches to amortise the
call. Files behind a URL (gs://) are read through xmtf_jax.paths (fsspec) in a Python generator with
the same batches, so a bucket gives the same stream as a local copy, and tests can point it at a GCS
emulator (tf.io.gfile cannot be pointed at one). File lists may hold glob patterns with `*`
(`gs://bucket/xP3/*/merged_*.jsonl`); other characters are literal (xP3 names contain `?`).

Sharding: line `k` (1-based) of every file goes to host `(k - 1) % num_shards`. Every host reads all
bytes but parses only its share; at xP3 rates (~1 MB of text per global step) the extra bytes are
negligible, shards are balanced to one example, and the union of the shards is exactly the split.
"""
from __future__ import annotations

import dataclasses
import io
import json
import zipfile
import zlib
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from xmtf_jax import paths
from xmtf_jax.data import stats
from xmtf_jax.data.config import DataConfig
from xmtf_jax.errors import UserError

HOW_TO_FIX = ("Fix or delete that line, or read the data in lenient mode (gin: `DATA_STRICT = False`, "
              "i.e. `mixtures.DataConfig.strict = False`), which skips bad lines and counts them in "
              "the data report.")

# Reasons a line is rejected; the keys of the bad-line counts.
INVALID_UTF8 = "invalid_utf8"
MALFORMED_JSON = "malformed_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
NON_STRING_FIELD = "non_string_field"
EMPTY_TARGET = "empty_target"
BAD_ANSWER_CHOICES = "bad_answer_choices"
EMPTY_FOLDER = "empty_folder"
MISSING_FOLDER = "missing_folder"
MISSING_FILE = "missing_file"

_JSON_TYPES = {dict: "an object", list: "an array", type(None): "null", bool: "a boolean",
               int: "a number", float: "a number"}


def _json_type(value) -> str:
  return _JSON_TYPES.get(type(value), type(value).__name__)


class BadDataError(UserError):
  """A record, file or folder of a dataset that cannot be used as is."""


@dataclasses.dataclass(frozen=True)
class RecordSchema:
  """Which JSON fields a record must carry; each becomes a string feature of the same name.

  `string_fields` must be present and be strings; `nonempty_fields` must also hold a non-blank
  string; `list_fields` must be non-empty lists of strings (1-D string features); if
  `choices_field` is set, `targets` must be one of its entries (rank-classification tasks).
  """
  string_fields: tuple[str, ...] = ("inputs", "targets")
  nonempty_fields: tuple[str, ...] = ("targets",)
  list_fields: tuple[str, ...] = ()
  choices_field: Optional[str] = None


def record_bad(sink: Optional[stats.DataStats], source: str, path: str, line: int, reason: str,
               why: str = "") -> None:
  """Counts a skipped line (or missing file: line 0) in the batch source's `sink`; logs it."""
  if sink is None:
    stats.log_skipped(source, path, line, reason, why)
  else:
    sink.bad_lines.record(source, path, line, reason, why)


def unwrap_tf_error(error: Exception) -> Exception:
  """The BadDataError behind a tf.errors.OpError raised by a pipeline, or `error` itself.

  TF wraps a Python exception raised inside tf.data into an OpError whose text ends with the
  exception's own traceback line, `xmtf_jax.data.jsonl_source.BadDataError: <message>`; the message
  is read back from there (nothing is remembered between calls)."""
  if not isinstance(error, tf.errors.OpError):
    return error
  marker = f"{BadDataError.__module__}.{BadDataError.__qualname__}: "
  text = getattr(error, "message", str(error))
  start = text.rfind(marker)
  if start < 0:
    return error
  message = text[start + len(marker):]
  end = message.find("\n\n\n")  # TF appends blank lines and its node name after the traceback
  return BadDataError((message if end < 0 else message[:end]).strip())


def check_record(line: bytes, schema: RecordSchema) -> tuple[Optional[dict], Optional[str], str]:
  """Parses and checks one line. Returns (record, None, "") or (None, reason, explanation)."""
  try:
    text = line.decode("utf-8")
  except UnicodeDecodeError as e:
    return None, INVALID_UTF8, f"invalid UTF-8 at byte {e.start} ({e.reason})"
  try:
    record = json.loads(text)
  except json.JSONDecodeError as e:
    what = "empty line" if not text.strip() else f"{e.msg} at column {e.colno}"
    return None, MALFORMED_JSON, f"malformed JSON: {what}"
  if not isinstance(record, dict):
    return None, NOT_AN_OBJECT, f"expected a JSON object, got {_json_type(record)}"
  for field in schema.string_fields:
    if field not in record:
      return None, MISSING_FIELD, f"missing field {field!r} (fields present: {sorted(record)})"
    if not isinstance(record[field], str):
      return None, NON_STRING_FIELD, (f"field {field!r} must be a string, got "
                                      f"{_json_type(record[field])}")
  for field in schema.nonempty_fields:
    if not record[field].strip():
      return None, EMPTY_TARGET, f"field {field!r} is empty"
  for field in schema.list_fields:
    value = record.get(field)
    if field not in record:
      return None, MISSING_FIELD, f"missing field {field!r} (fields present: {sorted(record)})"
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
      return None, BAD_ANSWER_CHOICES, f"field {field!r} must be a non-empty list of strings"
  if schema.choices_field and record["targets"] not in record[schema.choices_field]:
    return None, BAD_ANSWER_CHOICES, (f"targets {record['targets']!r} is not one of "
                                      f"{schema.choices_field} {record[schema.choices_field]}")
  for field in schema.string_fields + schema.list_fields:
    values = record[field] if isinstance(record[field], list) else [record[field]]
    for v in values:
      try:
        v.encode("utf-8")
      except UnicodeEncodeError:
        return None, INVALID_UTF8, f"field {field!r} holds an unpaired surrogate escape"
  return record, None, ""


def _parse_batch(source_name: str, schema: RecordSchema, strict: bool, sink, num_shards: int,
                 shard_index: int, path: bytes, line_numbers: np.ndarray, lines: np.ndarray):
  """numpy_function body: this shard's good records of a batch of lines of one file, as columns.

  Lines of other shards are skipped before parsing, so each host parses only its share.
  """
  columns = {f: [] for f in schema.string_fields}
  lists = {f: ([], []) for f in schema.list_fields}
  for number, line in zip(line_numbers, lines):
    if (number - 1) % num_shards != shard_index:
      continue
    record, reason, why = check_record(line, schema)
    if record is None:
      where = path.decode("utf-8", "replace")
      if strict:
        raise BadDataError(f"{where}, line {int(number)}: {why}. {HOW_TO_FIX}")
      record_bad(sink, source_name, where, int(number), reason, why)
      continue
    for f in schema.string_fields:
      columns[f].append(record[f].encode("utf-8"))
    for f in schema.list_fields:
      values, lengths = lists[f]
      values.extend(v.encode("utf-8") for v in record[f])
      lengths.append(len(record[f]))
  outputs = [np.array(columns[f], dtype=object).reshape([-1]) for f in schema.string_fields]
  for f in schema.list_fields:
    values, lengths = lists[f]
    outputs += [np.array(values, dtype=object).reshape([-1]), np.array(lengths, np.int64)]
  return outputs


def _line_batches(path: bytes, batch_size: int):
  """(path, line numbers, lines) batches of a text file read through xmtf_jax.paths; lines split as
  tf.data.TextLineDataset splits them (without "\n" or "\r\n")."""
  numbers, lines = [], []
  with paths.open(path.decode("utf-8"), "rb") as f:
    for number, line in enumerate(f, start=1):
      line = line[:-1] if line.endswith(b"\n") else line
      numbers.append(number)
      lines.append(line[:-1] if line.endswith(b"\r") else line)
      if len(lines) == batch_size:
        yield path, np.array(numbers, np.int64), np.array(lines, dtype=object)
        numbers, lines = [], []
  if lines:
    yield path, np.array(numbers, np.int64), np.array(lines, dtype=object)


def expand_patterns(files: Sequence[str]) -> list[str]:
  """Entries with a `*` replaced by the files they match (sorted). A pattern that matches nothing
  stays as it is: `existing_files` reports it, naming task and split, when the data is built."""
  expanded = []
  for entry in files:
    matches = paths.glob(entry) if "*" in entry else []
    expanded.extend(matches or [entry])
  return expanded


def _zip_batches(path: bytes, batch_size: int):
  """(member path, line numbers, lines) batches of every .jsonl member of a zip (P3's train file)."""
  path = path.decode("utf-8")
  with paths.open(path, "rb") as f, zipfile.ZipFile(f) as archive:
    for member in sorted(archive.namelist()):
      if not member.endswith(".jsonl"):
        continue
      where = f"{path}!{member}".encode("utf-8")
      numbers, lines = [], []
      with archive.open(member) as stream:
        for number, line in enumerate(io.BufferedReader(stream), start=1):
          numbers.append(number)
          lines.append(line.rstrip(b"\r\n"))
          if len(lines) == batch_size:
            yield where, np.array(numbers, np.int64), np.array(lines, dtype=object)
            numbers, lines = [], []
      if lines:
        yield where, np.array(numbers, np.int64), np.array(lines, dtype=object)


_BATCH_SIGNATURE = (tf.TensorSpec([], tf.string), tf.TensorSpec([None], tf.int64),
                    tf.TensorSpec([None], tf.string))


class JsonlDataSource(seqio.DataSource):
  """Records from `.jsonl` files (or `.zip` archives of them), checked against a `RecordSchema`.

  Args:
    name: names this source in errors and bad-line counts (the task name).
    files: split name -> file paths (local or gs://).
    schema: the fields to read and check.
    strict: raise BadDataError on the first bad line (naming file and line) instead of counting it;
      None follows the DataConfig the task was registered for (`configure`; gin DATA_STRICT;
      strict until then), read when data is built.
    count_fn: paths -> number of lines; gives `num_input_examples` (cached line counts).
  """

  def __init__(self, name: str, files: Mapping[str, Sequence[str]], *,
               schema: RecordSchema = RecordSchema(), strict: Optional[bool] = None,
               count_fn: Optional[Callable[[Sequence[str]], int]] = None,
               parse_batch_size: int = 128, max_open_files: int = 32,
               shuffle_buffer_size: int = 1024):
    self._name = name
    self._files = {split: tuple(sorted(expand_patterns(names))) for split, names in files.items()
                   if names}
    self._schema = schema
    self._strict = strict
    self._count_fn = count_fn
    self._parse_batch_size = parse_batch_size
    self._max_open_files = max_open_files
    self._shuffle_buffer_size = shuffle_buffer_size
    self._config: Optional[DataConfig] = None
    super().__init__(splits=tuple(self._files), num_input_examples=None, caching_permitted=False)

  @property
  def name(self) -> str:
    return self._name

  @property
  def schema(self) -> RecordSchema:
    return self._schema

  @property
  def strict(self) -> bool:
    if self._strict is not None:
      return self._strict
    return self._config.strict if self._config is not None else True

  @property
  def config(self) -> Optional[DataConfig]:
    """The DataConfig of the run this source's task was last registered for (None: none yet)."""
    return self._config

  def configure(self, config: DataConfig) -> None:
    """Holds the run's data settings (registration: `mixtures.register_for`); with `strict=None`
    the source follows `config.strict`."""
    self._config = config

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True  # line-level sharding, see the module docstring

  def list_shards(self, split: str) -> Sequence[str]:
    return self._files[split]

  def files(self, split: str) -> tuple[str, ...]:
    return self._files[split]

  def existing_files(self, split: str, sink: Optional[stats.DataStats] = None) -> tuple[str, ...]:
    """The split's files with globs expanded; a missing file (or a glob matching nothing) is an error
    naming the task and split (strict), or is skipped and counted in `sink` (lenient; default: the
    DataStats being collected, `stats.collecting`)."""
    sink = sink or stats.current()
    found = []
    for pattern in self._files[split]:
      is_pattern = "*" in pattern
      matches = paths.glob(pattern) if is_pattern else [pattern] if paths.exists(pattern) else []
      if not matches:
        what = "matches no file" if is_pattern else "does not exist"
        if self.strict:
          raise BadDataError(f"task {self._name!r}, split {split!r}: data file {pattern} {what}. Fix the "
                      "path in the task's definition (or the data root, XP3_DATA_DIR), or read the "
                      "data in lenient mode (gin: DATA_STRICT = False) to skip it.")
        record_bad(sink, self._name, pattern, 0, MISSING_FILE)
      found += matches
    if not found:
      raise BadDataError(f"task {self._name!r}, split {split!r}: none of its data files exist "
                  f"({', '.join(self._files[split])})")
    return tuple(found)

  def num_input_examples(self, split: str) -> Optional[int]:
    if self._count_fn is None or split not in self._files:
      return None
    return self._count_fn(self._files[split])

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None,
                  use_cached=False, num_epochs=1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs
    if split not in self._files:
      raise UserError(f"{self._name}: no files for split {split!r} (has {list(self._files)})")
    sink = stats.current()  # bound now: tf.data threads count into it later
    files = self.existing_files(split, sink)
    num_shards, index = (shard_info.num_shards, shard_info.index) if shard_info else (1, 0)
    batch_size = self._parse_batch_size

    # Lines travel in per-file batches (path, line numbers, lines) so that the per-line work in
    # tf.data is only TF's reader; checking, sharding and filtering happen per batch in Python.
    def file_batches(path):
      lines = tf.data.TextLineDataset(path, buffer_size=1 << 16).enumerate(start=1)
      return lines.batch(batch_size).map(lambda numbers, text: (path, numbers, text))

    def remote_file_batches(path):
      return tf.data.Dataset.from_generator(_line_batches, args=(path, batch_size),
                                            output_signature=_BATCH_SIGNATURE)

    text_files = [f for f in files if not f.endswith(".zip")]
    read = remote_file_batches if any(paths.is_remote(f) for f in text_files) else file_batches
    datasets = []
    if text_files:
      names = tf.data.Dataset.from_tensor_slices(list(text_files))
      if shuffle:
        names = names.shuffle(len(text_files), seed=seed, reshuffle_each_iteration=True)
      datasets.append(names.interleave(
          read, cycle_length=min(len(text_files), self._max_open_files), block_length=1,
          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))
    for archive in (f for f in files if f.endswith(".zip")):
      datasets.append(tf.data.Dataset.from_generator(
          _zip_batches, args=(archive, batch_size), output_signature=_BATCH_SIGNATURE))
    ds = datasets[0]
    for more in datasets[1:]:
      ds = ds.concatenate(more)
    ds = self._parse(ds, num_shards, index, sink)
    if shuffle and self._shuffle_buffer_size:
      # seqio gives every task of a mixture the same seed, so tasks of identical structure would
      # be shuffled identically; a small shuffle with a per-task seed decorrelates them.
      task_seed = None if seed is None else (seed + zlib.crc32(self._name.encode())) % (2**31 - 1)
      ds = ds.shuffle(self._shuffle_buffer_size, seed=task_seed, reshuffle_each_iteration=True)
    return ds

  def _parse(self, batches: tf.data.Dataset, num_shards: int, shard_index: int,
             sink: Optional[stats.DataStats]) -> tf.data.Dataset:
    schema, strict = self._schema, self.strict
    out_types = [tf.string] * len(schema.string_fields) + [tf.string, tf.int64] * len(schema.list_fields)

    def parse(path, numbers, lines):
      outputs = tf.numpy_function(
          lambda p, n, l: _parse_batch(self._name, schema, strict, sink, num_shards,
                                       shard_index, p, n, l),
          [path, numbers, lines], out_types, stateful=False)
      for t in outputs:
        t.set_shape([None])
      features = dict(zip(schema.string_fields, outputs[:len(schema.string_fields)]))
      rest = outputs[len(schema.string_fields):]
      for i, field in enumerate(schema.list_fields):
        features[field] = tf.RaggedTensor.from_row_lengths(rest[2 * i], rest[2 * i + 1])
      return features

    ds = batches.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
    if schema.list_fields:
      def dense_lists(ex):  # a ragged row of rank 0 after unbatch: make it a plain 1-D tensor
        ex = dict(ex)
        for field in schema.list_fields:
          ex[field] = tf.reshape(tf.convert_to_tensor(ex[field]), [-1])
        return ex
      ds = ds.map(dense_lists)
    return ds
