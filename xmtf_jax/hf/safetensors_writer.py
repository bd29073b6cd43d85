"""The safetensors side of an export: the shard plan from abstract shapes, and streamed writing.

The plan (every HF tensor's name, shape, bytes and shard) is known before any data is read, so each
file's header is written first and the tensors follow one at a time as they are fetched: host memory
holds one tensor, never a shard.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Callable, Optional, Sequence

import ml_dtypes
import numpy as np

from xmtf_jax import paths
from xmtf_jax.errors import UserError
from xmtf_jax.hf import accounting, families

# Output dtype -> (numpy dtype, safetensors dtype name). float16 is left out on purpose: mT5's
# activations overflow it (HF's own docs warn against fp16 for T5 models).
DTYPES = {"float32": (np.dtype(np.float32), "F32"), "bfloat16": (np.dtype(ml_dtypes.bfloat16), "BF16")}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_SIZE = "5GB"


# ----------------------------------------------------------------------------------------------------
# The plan: every tensor's name, shape and place, from abstract shapes only.


@dataclasses.dataclass(frozen=True)
class TensorEntry:
  name: str                      # HF state-dict name
  path: tuple[str, ...]          # our parameter path
  layout: str                    # the family's parameter_mapping layout
  shape: tuple[int, ...]         # HF shape
  nbytes: int                    # in the output dtype


@dataclasses.dataclass(frozen=True)
class ShardPlan:
  filename: str
  entries: tuple[TensorEntry, ...]

  @property
  def nbytes(self) -> int:
    return sum(e.nbytes for e in self.entries)


def parse_size(size: int | str) -> int:
  """Bytes from 123, "500MB", "5GB" (powers of 10, as HF) or "2GiB" (powers of 2)."""
  if isinstance(size, int):
    value = size
  else:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?B)?\s*", str(size).upper())
    if not match:
      raise UserError(f"max_shard_size={size!r}: write bytes or a size like '500MB', '5GB', '2GiB'")
    number, prefix, unit = match.groups()
    base = 1024 if unit == "IB" else 1000
    value = int(float(number) * base ** " KMGT".index(prefix or " "))
  if value <= 0:
    raise UserError(f"max_shard_size={size!r} must be positive")
  return value


def tensor_entries(config: Any, dtype: str = "float32") -> list[TensorEntry]:
  """Every HF tensor of `config` (either family), in HF order, with its shape and size (no parameter
  is allocated)."""
  if dtype not in DTYPES:
    raise UserError(f"dtype={dtype!r}: choose one of {sorted(DTYPES)}")
  itemsize = DTYPES[dtype][0].itemsize
  hf_family = families.for_config(config)
  shapes = accounting.our_shapes(config, hf_family.parameter_mapping)  # per-layer paths
  entries = []
  for path, name, layout in hf_family.parameter_mapping(config):
    shape = hf_family.hf_shape(layout, shapes[path])
    entries.append(TensorEntry(name, path, layout, shape, int(np.prod(shape)) * itemsize))
  return entries


def plan_shards(entries: Sequence[TensorEntry], max_shard_size: int | str) -> list[ShardPlan]:
  """One `model.safetensors` when everything fits in `max_shard_size`, else shards filled in order
  (a tensor larger than the limit gets a shard of its own, as HF does)."""
  limit = parse_size(max_shard_size)
  groups: list[list[TensorEntry]] = [[]]
  for entry in entries:
    if groups[-1] and sum(e.nbytes for e in groups[-1]) + entry.nbytes > limit:
      groups.append([])
    groups[-1].append(entry)
  if len(groups) == 1:
    return [ShardPlan(SINGLE_FILE, tuple(groups[0]))]
  n = len(groups)
  return [ShardPlan(f"model-{i + 1:05d}-of-{n:05d}.safetensors", tuple(g)) for i, g in enumerate(groups)]


# ----------------------------------------------------------------------------------------------------
# Writing.


def safetensors_header(entries: Sequence[TensorEntry], dtype: str) -> bytes:
  header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
  offset = 0
  for e in entries:
    header[e.name] = {"dtype": DTYPES[dtype][1], "shape": list(e.shape),
                      "data_offsets": [offset, offset + e.nbytes]}
    offset += e.nbytes
  raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
  raw += b" " * (-len(raw) % 8)  # the format pads the header with spaces to an 8-byte boundary
  return len(raw).to_bytes(8, "little") + raw


def write_shard(path: Optional[str], shard: ShardPlan, dtype: str,
                 fetch: Callable[[TensorEntry], np.ndarray]) -> None:
  """Streams one safetensors file: the header (known from the plan), then each tensor as fetched.
  `path` None: this process only takes part in the fetches (multi-host, not process 0)."""
  handle = paths.open(path, "wb") if path else None  # a bucket: uploaded in blocks as it grows
  try:
    if handle:
      handle.write(safetensors_header(shard.entries, dtype))
    for entry in shard.entries:
      array = fetch(entry)
      if handle:
        # Raw bytes, no copy (bfloat16 has no buffer-protocol format code, so view it as bytes).
        handle.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
      del array
  finally:
    if handle:
      handle.close()
