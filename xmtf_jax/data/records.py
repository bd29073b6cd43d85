"""One reader of record files (.jsonl/.json/.tsv/.csv/.parquet): held-out raw data and infer inputs.

Errors name the file and line (or row) and say what was expected.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Iterator

from xmtf_jax import paths
from xmtf_jax.errors import UserError

RAW_EXTENSIONS = (".jsonl", ".json", ".tsv", ".csv", ".parquet")


class RecordsError(UserError):
  """A record file that cannot be read as records; the message names file and line."""


def read_records(path: str) -> Iterator[tuple[int, dict]]:
  """Yields (line or row number, record) from a .jsonl/.json/.tsv/.csv/.parquet file."""
  ext = os.path.splitext(path)[1].lower()
  if ext in (".jsonl", ".json"):
    with paths.open(path) as f:
      for line_number, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise RecordsError(f"{path}:{line_number}: not a JSON object per line ({e.msg})") from e
        if not isinstance(record, dict):
          raise RecordsError(f"{path}:{line_number}: expected a JSON object, found "
                                 f"{type(record).__name__}")
        yield line_number, record
  elif ext in (".tsv", ".csv"):
    with paths.open(path, newline="") as f:
      # Raw text may hold quotes; tsv files are read without quote processing.
      reader = (csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if ext == ".tsv"
                else csv.DictReader(f))
      for row_number, row in enumerate(reader, start=2):  # line 1 is the header
        if None in row:
          raise RecordsError(f"{path}:{row_number}: more columns than the header "
                                 f"{reader.fieldnames}")
        yield row_number, dict(row)
  elif ext == ".parquet":
    try:
      import pyarrow.parquet as pq  # optional: only needed for parquet copies of the datasets
    except ImportError as e:
      raise RecordsError(f"{path}: reading parquet needs pyarrow; `pip install pyarrow`, or "
                             "convert the file to .jsonl") from e
    with paths.open(path, "rb") as f:
      table = pq.read_table(f)
    for row_number, record in enumerate(table.to_pylist(), start=1):
      yield row_number, record
  else:
    raise RecordsError(f"{path}: unsupported file type '{ext}'; use one of {RAW_EXTENSIONS}")
