"""t5x checkpoints written as t5x writes them (no t5x install): the msgpack with flax's serialization,
arrays with tensorstore (zarr v2), Orbax through orbax's PyTreeCheckpointer; from our parameters of
an HF model (shared/facts/t5x_checkpoints.md §1-3 give the layouts)."""
from __future__ import annotations

import os
from typing import Optional

import ml_dtypes
import numpy as np


def t5x_tree(params: dict) -> dict:
  """Our unscanned params (numpy) -> t5x's minimal-model target tree (2-D joined kernels)."""
  def convert(path, x):
    x = np.asarray(x, np.float32)
    if path[-2] in ("query", "key", "value"):
      return x.reshape(x.shape[0], -1)
    if path[-2] == "out":
      return x.reshape(-1, x.shape[-1])
    return x

  def walk(node, path=()):
    out = {}
    for key, value in node.items():
      if isinstance(value, dict):
        out[key] = walk(value, path + (key,))
      elif key == "embedding" and path[-1:] == ("relpos_bias",):
        out["rel_embedding"] = np.ascontiguousarray(np.asarray(value, np.float32).T)
      else:
        out[key] = convert(path + (key,), value)
    return out
  return walk(params)


def scanned_tree(tree: dict, layers: dict, four_d: bool, heads: int, axis: int = 1) -> dict:
  """A t5x unscanned tree -> scanned (`encoder/encoder`, layer axis 1), per-layer relpos tables (the
  layers' own, else the shared one repeated); q/k/v [d, L, H, kv] and out [H, L, kv, d] when `four_d`
  (scalable_t5), else joined (flaxformer); the layer axis then moved to `axis` (param_scan_axis)."""
  out = {"token_embedder": tree["token_embedder"]}
  for stack, count in layers.items():
    per_layer = [tree[stack][f"layers_{i}"] for i in range(count)]

    def stack_leaves(nodes, path=()):
      if isinstance(nodes[0], dict):
        return {k: stack_leaves([n[k] for n in nodes], path + (k,)) for k in nodes[0]}
      x = np.stack(nodes, axis=1)  # [in, L, out...]
      if four_d and path[-2] in ("query", "key", "value"):
        return x.reshape(x.shape[0], x.shape[1], heads, -1)
      if path[-2] == "out":
        x = np.stack(nodes, axis=0)  # [L, H*kv, d]
        if four_d:
          x = x.reshape(x.shape[0], heads, -1, x.shape[-1])  # [L, H, kv, d]
        return np.moveaxis(x, 0, 1)  # [H, L, kv, d] or [H*kv, L, d]
      return x
    scanned = stack_leaves(per_layer)
    if "relpos_bias" in tree[stack]:
      table = tree[stack]["relpos_bias"]["rel_embedding"]
      scanned["relpos_bias"] = {"rel_embedding": np.stack([table] * count, axis=1)}
    scanned = _map(lambda x: np.ascontiguousarray(np.moveaxis(x, 1, axis)), scanned)
    out[stack] = {stack: scanned, f"{stack}_norm": tree[stack][f"{stack}_norm"]}
  if "logits_dense" in tree["decoder"]:
    out["decoder"]["logits_dense"] = tree["decoder"]["logits_dense"]
  return out


def _map(fn, tree):
  return {k: _map(fn, v) if isinstance(v, dict) else fn(v) for k, v in tree.items()}


def _flat(tree, prefix=()):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flat(value, prefix + (key,))
    else:
      yield prefix + (key,), value


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def write_legacy(step_dir: str, target: dict, *, version: int = 3, inline: bool = True,
                 compressor: str = "gzip", dtype: str = "float32", spec_style: str = "kvstore",
                 step: int = 7, param_states: Optional[dict] = None) -> None:
  """A legacy t5x step: the msgpack `checkpoint` (version 3/2, or 0 without the optimizer wrapper),
  arrays inline or in tensorstore zarr directories beside it (spec_style "kvstore": kvstore.path and
  the file driver; "path": top-level path and the gcs driver with t5x's dummy bucket). `state/step`
  is `step`; `param_states` (Adafactor's slots, float32 as t5x keeps them) are stored like the target."""
  import flax.serialization
  os.makedirs(step_dir, exist_ok=True)
  stored = _store(step_dir, "target", target, version, inline, compressor, dtype, spec_style)
  slots = _store(step_dir, "state.param_states", param_states or {}, version, inline, compressor,
                 "float32", spec_style)
  state = {"target": stored, "state": {"step": np.int32(step), "param_states": slots}}
  top = state if version == 0 else {"version": version, "optimizer": state}
  with open(os.path.join(step_dir, "checkpoint"), "wb") as f:
    f.write(flax.serialization.msgpack_serialize(top))


def _store(step_dir: str, prefix: str, tree: dict, version: int, inline: bool, compressor: str,
           dtype: str, spec_style: str) -> dict:
  """The msgpack tree of `tree`: arrays inline, or t5x's spec dicts of zarr arrays written beside."""
  import tensorstore as ts
  stored: dict = {}
  for path, value in _flat(tree):
    array = value.astype(ml_dtypes.bfloat16) if dtype == "bfloat16" else value
    if inline:
      _set(stored, path, array)
      continue
    name = prefix + "." + ".".join(path)
    zarr_dtype = "uint16" if version == 2 and dtype == "bfloat16" else dtype
    data = array.view(np.uint16) if zarr_dtype == "uint16" else array
    chunks = [max(1, s // 2) for s in data.shape]  # several chunk files per array
    metadata = {"shape": list(data.shape), "chunks": chunks, "compressor": {"id": compressor, "level": 1},
                "dtype": "bfloat16" if zarr_dtype == "bfloat16" else np.dtype(zarr_dtype).str}
    store = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": os.path.join(step_dir, name)},
                     "metadata": metadata}, create=True, delete_existing=True).result()
    store.write(data).result()
    spec = {"driver": "zarr", "dtype": zarr_dtype, "metadata": {"shape": list(data.shape), "chunks": chunks,
                                                             "compressor": {"id": compressor, "level": 1}}}
    if spec_style == "kvstore":
      spec["kvstore"] = {"driver": "file", "path": name}
    else:
      spec["kvstore"] = {"driver": "gcs", "bucket": "t5x-dummy-bucket"}
      spec["path"] = name
    _set(stored, path, spec)
  return stored


def write_orbax(step_dir: str, target: dict, dtype: str = "bfloat16", step: int = 7,
                param_states: Optional[dict] = None) -> None:
  """An Orbax t5x step: `state/` (OCDBT, zarr) holding {"target", "state"}, as t5x ≥2024 writes
  (`param_states`: Adafactor's slots, float32)."""
  import orbax.checkpoint as ocp
  cast = {p: (v.astype(ml_dtypes.bfloat16) if dtype == "bfloat16" else v) for p, v in _flat(target)}
  tree: dict = {}
  for path, value in cast.items():
    _set(tree, ("target",) + path, value)
  tree["state"] = {"step": np.array(step, np.int32)}
  if param_states:
    tree["state"]["param_states"] = param_states
  checkpointer = ocp.PyTreeCheckpointer()
  checkpointer.save(os.path.join(step_dir, "state"), tree)
  checkpointer.close()
  os.makedirs(os.path.join(step_dir, "dataset"), exist_ok=True)


GIN = """# Parameters for network.T5Config:
# ==============================================================================
NUM_LAYERS = {layers}
network.T5Config.emb_dim = {d_model}
network.T5Config.num_encoder_layers = %NUM_LAYERS
network.T5Config.mlp_activations = ('gelu', 'linear')
network.T5Config.param_scan_axis = {axis}
network.T5Config.dropout_rate = 0.0
network.T5Config.dtype = 'bfloat16'
"""
