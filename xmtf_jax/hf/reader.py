"""Reading an HF mT5/mT0 folder: config.json plus `model.safetensors`, sharded safetensors
(`model.safetensors.index.json`), or `pytorch_model.bin` (+ index) read with
`torch.load(weights_only=True)` (torch imported only then). Every name and shape is checked before any
data is read; tensors are then converted to float32 and placed on the mesh one at a time (for a
scanned model, `T5Config.scan_layers`, one stacked tensor at a time: its layers are read and stacked).
"""
from __future__ import annotations

import io
import json
import logging
from typing import Any, Iterable, Mapping, Optional

import jax
import ml_dtypes
import numpy as np

from xmtf_jax import paths
from xmtf_jax.errors import MissingPathError, UserError
from xmtf_jax.hf.mapping import (IGNORED_HF_TENSORS, LM_HEAD, SHARED, tree_get, _our_shapes, tree_set,
                                 parameter_mapping, t5config_from_hf, to_ours, hf_shape)
from xmtf_jax.model import layer_stacking
from xmtf_jax.model.config import T5Config
from xmtf_jax.model.encoder_decoder import EncoderDecoderModel
from xmtf_jax.parallel import partitioning

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------
# Tensor sources (safetensors / torch .bin / in-memory), read lazily one tensor at a time.

_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                       "BF16": ml_dtypes.bfloat16}


class _DictSource:
  def __init__(self, arrays: Mapping[str, Any]):
    self._arrays = arrays
    self.shapes = {k: tuple(np.shape(v)) for k, v in arrays.items()}
    self.origin = {k: "state dict" for k in arrays}

  def read(self, name: str) -> np.ndarray:
    return np.asarray(self._arrays[name], np.float32)


class _SafetensorsSource:
  """Reads the documented safetensors layout directly (8-byte header size, JSON header, raw data) so
  bfloat16 tensors work without torch, and only the requested tensor is touched: memory-mapped when
  local, one ranged read per tensor from a bucket (no local copy of the folder)."""

  def __init__(self, files: Iterable[str]):
    self.shapes, self.origin, self._where = {}, {}, {}
    for path in files:
      if not paths.exists(path):
        raise MissingPathError(f"{path}: listed in the index but missing")
      header_size = int.from_bytes(paths.read_range(path, 0, 8), "little")
      header = json.loads(paths.read_range(path, 8, 8 + header_size))
      for name, info in header.items():
        if name == "__metadata__":
          continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
          raise UserError(f"{path}: tensor {name} has dtype {info['dtype']}; expected a float type")
        self.shapes[name] = tuple(info["shape"])
        self.origin[name] = path
        begin, end = info["data_offsets"]
        self._where[name] = (path, 8 + header_size + begin, 8 + header_size + end, info["dtype"])

  def read(self, name: str) -> np.ndarray:
    path, start, end, dtype = self._where[name]
    if paths.is_remote(path):
      data = np.frombuffer(paths.read_range(path, start, end), _SAFETENSORS_DTYPES[dtype])
      return data.reshape(self.shapes[name]).astype(np.float32)
    data = np.memmap(path, dtype=_SAFETENSORS_DTYPES[dtype], mode="r", offset=start,
                     shape=self.shapes[name])
    return np.asarray(data, np.float32)


class _TorchBinSource:
  def __init__(self, files: Iterable[str]):
    import torch  # only for .bin folders
    self._tensors, self.origin = {}, {}
    for path in files:
      # weights_only=True: tensors and plain containers only, never arbitrary unpickling. From a
      # bucket the whole file is read into memory (no mmap of a remote object).
      where = io.BytesIO(paths.read_bytes(path)) if paths.is_remote(path) else path
      state = torch.load(where, map_location="cpu", weights_only=True, mmap=not paths.is_remote(path))
      for name, tensor in state.items():
        self._tensors[name] = tensor
        self.origin[name] = path
    self.shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}

  def read(self, name: str) -> np.ndarray:
    import torch
    return self._tensors[name].to(torch.float32).numpy()


def open_weights(folder: str):
  def sharded(index_name: str) -> list[str]:
    weight_map = json.loads(paths.read_text(paths.join(folder, index_name)))["weight_map"]
    return [paths.join(folder, name) for name in sorted(set(weight_map.values()))]

  if paths.exists(paths.join(folder, "model.safetensors")):
    return _SafetensorsSource([paths.join(folder, "model.safetensors")])
  if paths.exists(paths.join(folder, "model.safetensors.index.json")):
    return _SafetensorsSource(sharded("model.safetensors.index.json"))
  if paths.exists(paths.join(folder, "pytorch_model.bin")):
    return _TorchBinSource([paths.join(folder, "pytorch_model.bin")])
  if paths.exists(paths.join(folder, "pytorch_model.bin.index.json")):
    return _TorchBinSource(sharded("pytorch_model.bin.index.json"))
  raise MissingPathError(
      f"{folder}: no weights found (looked for model.safetensors, model.safetensors.index.json, "
      "pytorch_model.bin, pytorch_model.bin.index.json)")


def read_plan(source, config: T5Config, origin: str) -> list[tuple[tuple[str, ...], str, str, tuple[int, ...]]]:
  """Checks every name and shape; returns [(our path, HF name to read, layout, our shape)]."""
  mapping = parameter_mapping(config)
  our_shapes = _our_shapes(config)
  available = set(source.shapes)
  expected = {hf for _, hf, _ in mapping}
  plan, problems = [], []
  missing = sorted(expected - available)
  if LM_HEAD in missing and SHARED in available:
    # What HF does silently for such folders (tied T5 v1.0 style exports); we do it and say so.
    log.warning("%s: no %s; tying the LM head to shared.weight, as transformers does", origin, LM_HEAD)
    missing.remove(LM_HEAD)
  unexpected = sorted(available - expected - set(IGNORED_HF_TENSORS))
  if missing:
    problems.append(f"missing tensors: {', '.join(missing)}")
  if unexpected:
    problems.append(f"unexpected tensors: {', '.join(unexpected)}")
  for path, hf, layout in mapping:
    read_name = hf if hf in available else (SHARED if hf == LM_HEAD else None)
    if read_name is None:
      continue
    want = hf_shape(layout, our_shapes[path])
    got = source.shapes[read_name]
    if tuple(got) != want:
      problems.append(f"shape mismatch for {read_name} (in {source.origin[read_name]}): "
                      f"expected {list(want)} from the config, got {list(got)}")
    plan.append((path, read_name, layout, our_shapes[path]))
  if problems:
    raise UserError(f"{origin} does not match the mT5 config "
                     f"({config.num_encoder_layers}/{config.num_decoder_layers} layers, d_model "
                     f"{config.d_model}, vocab {config.vocab_size}):\n  " + "\n  ".join(problems))
  return plan


def read_hf_config(folder: str, **overrides) -> T5Config:
  path = paths.join(folder, "config.json")
  if not paths.isdir(folder):
    raise MissingPathError(f"{folder}: not a directory (expected an HF mT5/mT0 folder)")
  if not paths.exists(path):
    raise MissingPathError(f"{folder}: no config.json; an HF mT5/mT0 folder holds config.json and "
                            "model.safetensors (or pytorch_model.bin)")
  return t5config_from_hf(json.loads(paths.read_text(path)), origin=path, **overrides)


def load_hf_folder(folder: str, mesh: Optional[Any] = None, logical_axis_rules=None,
                   **config_overrides) -> tuple[T5Config, dict]:
  """Reads an HF mT5/mT0 folder -> (T5Config, float32 params), each tensor placed directly with its
  sharding on `mesh` (or on the default device). `config_overrides` e.g. dtype="bfloat16"."""
  config = read_hf_config(folder, **config_overrides)
  source = open_weights(folder)
  plan = read_plan(source, config, origin=folder)
  shardings = None
  if mesh is not None:
    rules = logical_axis_rules or partitioning.logical_axis_rules()
    shardings = EncoderDecoderModel(config, mesh, rules).param_shardings()
  params: dict = {}
  for path, reads in _placement_groups(plan, config):
    if layer_stacking.stacked_location(reads[0][0])[1] is None or not config.scan_layers:
      _, hf, layout, shape = reads[0]
      array = to_ours(layout, source.read(hf), shape)
    else:  # one stacked leaf [layers, ...] from its layers, in order
      array = np.stack([to_ours(layout, source.read(hf), shape) for _, hf, layout, shape in reads])
    if shardings is None:
      placed = jax.device_put(array)
    else:
      placed = jax.make_array_from_callback(array.shape, tree_get(shardings, path),
                                            lambda index, a=array: a[index])
    tree_set(params, path, placed)
    del array
  return config, params


def _placement_groups(plan, config: T5Config) -> list[tuple[tuple[str, ...], list]]:
  """[(our leaf path, the plan entries it is made of)]: one entry each, or for a scanned model the
  per-layer entries of each stacked leaf in layer order."""
  groups: dict = {}
  for entry in plan:
    path = layer_stacking.stacked_location(entry[0])[0] if config.scan_layers else entry[0]
    groups.setdefault(path, []).append(entry)
  for path, entries in groups.items():
    entries.sort(key=lambda e: layer_stacking.stacked_location(e[0])[1] or 0)
  return list(groups.items())


def params_from_hf(state_dict: Mapping[str, np.ndarray], config: T5Config) -> dict:
  """HF state dict (numpy arrays) -> our params (numpy float32). Checks names and shapes first."""
  source = _DictSource(state_dict)
  plan = read_plan(source, config, origin="state dict")
  params: dict = {}
  for path, hf, layout, shape in plan:
    tree_set(params, path, to_ours(layout, source.read(hf), shape))
  return layer_stacking.stack_layers(params, config) if config.scan_layers else params
