"""Reading an HF mT5/mT0 folder: config.json plus `model.safetensors`, sharded safetensors
(`model.safetensors.index.json`), or `pytorch_model.bin` (+ index) read with
`torch.load(weights_only=True)` (torch imported only then). Every name and shape is checked before any
data is read, and every tensor in the folder is accounted for (`account_tensors`: read, a tied copy
verified equal, or reported): the embedding a folder's encoder and decoder use is the one transformers
gives them (`xmtf_jax.hf.ties`), or the load is refused. Tensors are then converted to float32 and placed
on the mesh one at a time (for a scanned model, `T5Config.scan_layers`, one stacked tensor at a time:
its layers are read and stacked).
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
from xmtf_jax.hf import ties
from xmtf_jax.hf.mapping import (IGNORED_HF_TENSORS, LM_HEAD, SHARED, tree_get, _our_shapes, tree_set,
                                 parameter_mapping, t5config_from_hf, to_ours, hf_shape)
from xmtf_jax.model import layer_stacking
from xmtf_jax.model.config import T5Config
from xmtf_jax.model.encoder_decoder import EncoderDecoderModel
from xmtf_jax.parallel import partitioning

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------
# Tensor sources (safetensors / torch .bin / in-memory), read lazily one tensor (or block of rows) at a
# time. `read(name, rows=None)`: float32, all of it or the rows `rows` (a slice of the first axis).

_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                       "BF16": ml_dtypes.bfloat16}
_REDO = ("An interrupted download or copy leaves such a file: download the folder again, or export it "
         "again (python -m xmtf_jax.export_hf) if it came from one of our checkpoints.")


class _DictSource:
  def __init__(self, arrays: Mapping[str, Any]):
    self._arrays = arrays
    self.shapes = {k: tuple(np.shape(v)) for k, v in arrays.items()}
    self.origin = {k: "state dict" for k in arrays}

  def read(self, name: str, rows: Optional[slice] = None) -> np.ndarray:
    array = self._arrays[name]
    return np.asarray(array if rows is None else array[rows], np.float32)


class _SafetensorsSource:
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


class _TorchBinSource:
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


def account_tensors(source, config: T5Config, origin: str) -> tuple[list, dict[str, str]]:
  """Checks a folder's tensors against the config -> (plan, uses).

  plan: [(our path, folder tensor to read, layout, our shape)]. uses: {every tensor in the folder: how
  it is used}: "read" (it gives a parameter), "tied copy of X" (verified equal to the tensor X that is
  read, as transformers verifies tied copies), "unused" (transformers loads it but its forward pass
  never uses it: `shared.weight` when the encoder's and decoder's own embeddings differ from it; logged
  as a warning) or "ignored" (listed in transformers' `_keys_to_ignore_on_load_unexpected`). Nothing is
  skipped silently: the tied names resolve as transformers 5.x resolves them (`xmtf_jax.hf.ties`), and a
  folder whose encoder and decoder embeddings differ, which our one token embedding cannot represent,
  is refused naming both tensors. Any other tensor the mapping does not know is an error, where
  transformers would warn ("UNEXPECTED") and drop it: it usually means a config.json that does not
  belong to the weights (more layers than the config says) or another architecture.
  Names and shapes are all checked before any tensor data is read (only tied copies are compared).
  """
  mapping = parameter_mapping(config)
  our_shapes = _our_shapes(config)
  available = set(source.shapes)
  tied = ties.tie_sources(available)
  if LM_HEAD not in available and LM_HEAD in tied:
    # What HF does silently for such folders (tied T5 v1.0 style exports); we do it and say so.
    log.warning("%s: no %s; tying the LM head to %s, as transformers does", origin, LM_HEAD, tied[LM_HEAD])
  # Names: every mapped name from the folder (the tied ones through `tied`), nothing unknown.
  reads = [(path, tied.get(hf) if hf in ties.TIE_GROUP else hf if hf in available else None, layout)
           for path, hf, layout in mapping]
  missing = [hf for (_, hf, _), (_, name, _) in zip(mapping, reads) if name is None]
  unexpected = sorted(available - {name for _, name, _ in reads} - set(ties.TIE_GROUP)
                      - set(IGNORED_HF_TENSORS))
  summary = (f"{config.num_encoder_layers}/{config.num_decoder_layers} layers, d_model {config.d_model}, "
             f"d_ff {config.d_ff}, {config.num_heads} heads of {config.d_kv}, vocab {config.vocab_size}")
  if missing or unexpected:
    raise UserError(
        f"{origin}: the weights do not hold the tensors that config.json ({summary}) implies: "
        + "; ".join(f"{what} tensors: {_first_names(names)}"
                    for what, names in (("missing", missing), ("unexpected", unexpected)) if names)
        + ". Either config.json belongs to another model (keep the one saved with these weights) or the "
        "weights are incomplete (download or export the folder again).")
  # Shapes: the mapped tensors and every tensor of the tied group (all [vocab, d_model]).
  want = {name: hf_shape(layout, our_shapes[path]) for path, name, layout in reads}
  want.update({name: (config.vocab_size, config.d_model) for name in ties.TIE_GROUP if name in available})
  mismatches = [name for name, shape in want.items() if tuple(source.shapes[name]) != shape]
  if mismatches:
    name = mismatches[0]
    others = f" ({len(mismatches) - 1} more tensors differ too)" if len(mismatches) > 1 else ""
    raise UserError(
        f"{origin}: the weights do not match config.json ({summary}): shape mismatch for {name} "
        f"(in {source.origin[name]}): expected {list(want[name])} from the config, got "
        f"{list(source.shapes[name])}{others}. The config.json and the weights come from different "
        "models; keep the config.json that was saved with these weights.")
  # Values: our one token embedding is what transformers gives both stacks, so those must be equal.
  embedding = _token_embedding_source(source, tied, origin)
  plan = [(path, embedding if hf == SHARED else name, layout, our_shapes[path])
          for (path, hf, _), (_, name, layout) in zip(mapping, reads)]
  uses = {name: "read" for _, name, _, _ in plan}
  uses.update({name: "ignored" for name in IGNORED_HF_TENSORS if name in available})
  for name in sorted(available - set(uses)):  # the tied group's tensors that are not read
    if same_values(source, name, embedding):
      uses[name] = f"tied copy of {embedding}"
    else:
      uses[name] = "unused"
      log.warning("%s: %s differs from %s, which transformers gives the encoder and the decoder; it is "
                  "not used (nor is it by transformers' forward pass)", origin, name, embedding)
  return plan, uses


def read_plan(source, config: T5Config, origin: str) -> list[tuple[tuple[str, ...], str, str, tuple[int, ...]]]:
  """Checks every tensor, name, shape and tied copy (`account_tensors`); returns [(our path, HF name to
  read, layout, our shape)]."""
  return account_tensors(source, config, origin)[0]


def _token_embedding_source(source, tied: Mapping[str, str], origin: str) -> str:
  """The folder tensor for our one token embedding: what transformers gives the encoder's and the
  decoder's `embed_tokens`, which must hold equal values (`shared.weight` when it holds them too)."""
  encoder, decoder = tied[ties.ENCODER_EMBEDDING], tied[ties.DECODER_EMBEDDING]
  if encoder != decoder and not same_values(source, encoder, decoder):
    raise UserError(
        f"{origin}: the encoder and the decoder embed tokens with different tables: transformers gives "
        f"the encoder {ties.describe(ties.ENCODER_EMBEDDING, encoder)} and the decoder "
        f"{ties.describe(ties.DECODER_EMBEDDING, decoder)}, whose values differ, but xmtf_jax's network has "
        "one token embedding for both, so it cannot reproduce this model. (transformers writes such a folder "
        "for an MT5 built with tie_word_embeddings=False: shared.weight, encoder.embed_tokens.weight and "
        "decoder.embed_tokens.weight as separate tensors.) To fine-tune it here anyway, tie the embeddings "
        "first, which changes the model's outputs: in transformers, model.encoder.embed_tokens = "
        "model.decoder.embed_tokens = model.shared, then model.save_pretrained(new_folder); or start from a "
        "folder whose embeddings are tied (all mT5/mT0 releases are).")
  if SHARED in source.shapes and SHARED != encoder and same_values(source, SHARED, encoder):
    return SHARED  # .bin files: all three names, one storage
  return encoder


def _first_names(names: list[str], count: int = 3) -> str:
  more = f" and {len(names) - count} more" if len(names) > count else ""
  return ", ".join(names[:count]) + more


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
