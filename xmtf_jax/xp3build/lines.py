"""One line of an xP3 file, byte for byte as the published files have it.

xP3 was written by the `datasets` JSON writer, which calls pandas
`to_json(orient="records", lines=True, force_ascii=False)` per batch: compact separators, raw UTF-8,
`/` escaped as `\\/`, the control characters below U+0020 escaped (`\\n`, `\\t`, `\\r`, `\\b`, `\\f` short,
the others as lowercase `\\u00xx`), everything else (U+007F, U+2028, emoji) raw, and a `\\n` after each
line. Python's `json.dumps(..., ensure_ascii=False)` escapes exactly that set except `/`, so the line
is its output with `/` escaped (a `/` in JSON text only ever comes from string content). pandas
refuses strings with lone surrogates (not encodable as UTF-8); so does `encode_line`.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Optional

_SEPARATORS = (",", ":")


class MalformedLine(ValueError):
  """A line of an xP3 file that is not one JSON object with string `inputs` and `targets`."""


def _value(value: Any) -> str:
  if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
    return json.dumps(value, ensure_ascii=False, separators=_SEPARATORS).replace("/", "\\/")
  raise TypeError(f"xP3 lines hold strings, ints, booleans or null, not {type(value).__name__}")


def encode_line(inputs: str, targets: str, extra: Optional[Mapping[str, Any]] = None) -> bytes:
  """The line pandas writes for the row {inputs, targets, **extra} (keys in that order).

  Raises UnicodeEncodeError for text with a lone surrogate (pandas raises too), TypeError for
  values that are not str/int/bool/None."""
  if not isinstance(inputs, str) or not isinstance(targets, str):
    raise TypeError("inputs and targets must be strings")
  parts = ['"inputs":', _value(inputs), ',"targets":', _value(targets)]
  for key, value in (extra or {}).items():
    if key in ("inputs", "targets"):
      raise ValueError(f"extra key {key!r} repeats a column")
    parts += [",", _value(str(key)), ":", _value(value)]
  return ("{" + "".join(parts) + "}\n").encode("utf-8")


def decode_line(line: bytes) -> dict:
  """The row of one line (with its trailing newline), or MalformedLine saying what is wrong."""
  if not line.endswith(b"\n"):
    raise MalformedLine("no newline at the end of the line")
  try:
    text = line[:-1].decode("utf-8")
  except UnicodeDecodeError as e:
    raise MalformedLine(f"not UTF-8 (byte {e.start})") from None
  if not text.strip():
    raise MalformedLine("empty line")
  try:
    row = json.loads(text)
  except json.JSONDecodeError as e:
    raise MalformedLine(f"not JSON: {e.msg} at column {e.colno}") from None
  if not isinstance(row, dict):
    raise MalformedLine(f"a JSON {type(row).__name__}, not an object")
  for key in ("inputs", "targets"):
    if key not in row:
      raise MalformedLine(f"no {key!r} field")
    if not isinstance(row[key], str):
      raise MalformedLine(f"{key!r} is a {type(row[key]).__name__}, not a string")
  return row
