"""The tensors of an HF folder, read lazily one tensor (or block of rows) at a time, whatever the family:
`model.safetensors`, sharded safetensors (`model.safetensors.index.json`), or `pytorch_model.bin` (+
index) read with `torch.load(weights_only=True)` (torch imported only then); `open_weights(folder)`
picks the source. A source has `shapes`, `origin` ({name: file}) and `read(name, rows=None)`: float32,
all of it or the rows `rows` (a slice of the first axis). `same_values` compares two tensors as
transformers compares tied ones.
"""
from __future__ import annotations

import io
import json
from typing import Any, Iterable, Mapping, Optional

import ml_dtypes
import numpy as np

from xmtf_jax import paths
from xmtf_jax.errors import MissingPathError, UserError

_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                       "BF16": ml_dtypes.bfloat16}
_REDO = ("An interrupted download or copy leaves such a file: download the folder again, or export it "
         "again (python -m xmtf_jax.export_hf) if it came from one of our checkpoints.")


class DictSource:
  """Tensors already in memory (a state dict of numpy arrays)."""

  def __init__(self, arrays: Mapping[str, Any]):
    self._arrays = arrays
    self.shapes = {k: tuple(np.shape(v)) for k, v in arrays.items()}
    self.origin = {k: "state dict" for k in arrays}

  def read(self, name: str, rows: Optional[slice] = None) -> np.ndarray:
    array = self._arrays[name]
    return np.asarray(array if rows is None else array[rows], np.float32)


class SafetensorsSource:
  """Reads the documented safetensors layout directly (8-byte header size, JSON header, raw data) so
  bfloat16 tensors work without torch, and only the requested tensor is touched: memory-mapped when
  local, one ranged read per tensor from a bucket (no local copy of the folder). A file shorter than
  its header says is refused here, naming the file, before any tensor is read."""

  def __init__(self, files: Iterable[str]):
    self.shapes, self.origin, self._where = {}, {}, {}
    for path in files:
      if not paths.exists(path):
        raise MissingPathError(f"{path}: listed in the index but missing")
      size = paths.getsize(path)
      header_size = int.from_bytes(paths.read_range(path, 0, 8), "little") if size >= 8 else 0
      if not 0 < header_size <= size - 8:
        raise UserError(f"{path} is truncated: it ends inside its header ({size} bytes). " + _REDO)
      try:
        header = json.loads(paths.read_range(path, 8, 8 + header_size))
      except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"{path} is not a safetensors file (its header does not parse). " + _REDO) from None
      data_end = 8 + header_size
      for name, info in header.items():
        if name == "__metadata__":
          continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
          raise UserError(f"{path}: tensor {name} has dtype {info['dtype']}; expected a float type")
        self.shapes[name] = tuple(info["shape"])
        self.origin[name] = path
        begin, end = info["data_offsets"]
        self._where[name] = (path, 8 + header_size + begin, 8 + header_size + end, info["dtype"])
        data_end = max(data_end, 8 + header_size + end)
      if size < data_end:
        raise UserError(f"{path} is truncated: its header describes {data_end} bytes but the file holds "
                         f"{size}. " + _REDO)

  def read(self, name: str, rows: Optional[slice] = None) -> np.ndarray:
    path, start, end, dtype = self._where[name]
    shape = self.shapes[name]
    if rows is not None:  # a block of rows of a C-ordered tensor is one byte range
      first, stop, _ = rows.indices(shape[0])
      row_bytes = (end - start) // shape[0] if shape[0] else 0
      start, end, shape = start + first * row_bytes, start + stop * row_bytes, (stop - first,) + shape[1:]
    if paths.is_remote(path):
      data = np.frombuffer(paths.read_range(path, start, end), _SAFETENSORS_DTYPES[dtype])
      return data.reshape(shape).astype(np.float32)
    if end == start:
      return np.zeros(shape, np.float32)
    data = np.memmap(path, dtype=_SAFETENSORS_DTYPES[dtype], mode="r", offset=start, shape=shape)
    return np.asarray(data, np.float32)


class TorchBinSource:
  def __init__(self, files: Iterable[str]):
    import torch  # only for .bin folders
    self._tensors, self.origin = {}, {}
    for path in files:
      # weights_only=True: tensors and plain containers only, never arbitrary unpickling. From a
      # bucket the whole file is read into memory (no mmap of a remote object).
      where = io.BytesIO(paths.read_bytes(path)) if paths.is_remote(path) else path
      try:
        state = torch.load(where, map_location="cpu", weights_only=True, mmap=not paths.is_remote(path))
      except (RuntimeError, EOFError, OSError) as error:  # a cut-off zip archive or pickle
        raise UserError(f"{path} cannot be read as a PyTorch state dict "
                         f"({str(error).splitlines()[0] if str(error) else type(error).__name__}). "
                         + _REDO) from None
      for name, tensor in state.items():
        self._tensors[name] = tensor
        self.origin[name] = path
    self.shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}

  def read(self, name: str, rows: Optional[slice] = None) -> np.ndarray:
    import torch
    tensor = self._tensors[name]
    return (tensor if rows is None else tensor[rows]).to(torch.float32).numpy()

  def shares_storage(self, a: str, b: str) -> bool:
    """True when two names are views of the same storage (torch.save of tied parameters)."""
    x, y = self._tensors[a], self._tensors[b]
    return (x.untyped_storage().data_ptr() == y.untyped_storage().data_ptr() and x.dtype == y.dtype
            and x.storage_offset() == y.storage_offset() and x.stride() == y.stride()
            and x.shape == y.shape)


def same_values(source, a: str, b: str, block_bytes: int = 64 << 20) -> bool:
  """`torch.equal` of two tensors of a source, as transformers compares tied tensors, read in blocks of
  rows (a 250k-row embedding is never held twice in float32)."""
  if a == b:
    return True
  shape = source.shapes[a]
  if shape != source.shapes[b]:
    return False
  if getattr(source, "shares_storage", None) and source.shares_storage(a, b):
    return True
  if not shape:
    return bool(np.array_equal(source.read(a), source.read(b)))
  rows = max(1, block_bytes // max(1, 4 * int(np.prod(shape[1:]))))
  return all(np.array_equal(source.read(a, slice(i, i + rows)), source.read(b, slice(i, i + rows)))
             for i in range(0, shape[0], rows))


def open_weights(folder: str):
  def sharded(index_name: str) -> list[str]:
    weight_map = json.loads(paths.read_text(paths.join(folder, index_name)))["weight_map"]
    return [paths.join(folder, name) for name in sorted(set(weight_map.values()))]

  if paths.exists(paths.join(folder, "model.safetensors")):
    return SafetensorsSource([paths.join(folder, "model.safetensors")])
  if paths.exists(paths.join(folder, "model.safetensors.index.json")):
    return SafetensorsSource(sharded("model.safetensors.index.json"))
  if paths.exists(paths.join(folder, "pytorch_model.bin")):
    return TorchBinSource([paths.join(folder, "pytorch_model.bin")])
  if paths.exists(paths.join(folder, "pytorch_model.bin.index.json")):
    return TorchBinSource(sharded("pytorch_model.bin.index.json"))
  raise MissingPathError(
      f"{folder}: no weights found (looked for model.safetensors, model.safetensors.index.json, "
      "pytorch_model.bin, pytorch_model.bin.index.json)")
