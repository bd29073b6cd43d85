"""The one converter between the two parameter layouts of `scan_layers` (T5Config and BloomConfig).

Per layer: `encoder/layers_{i}/...` leaves of shape S. Stacked (scanned): `encoder/layers/...` leaves of
shape [num_layers, *S] (same for the decoder; everything outside the layer stacks is shared). A config
gives each stack's depth as `num_encoder_layers` / `num_decoder_layers` (BLOOM: 0 and n_layer). The same
mapping applies to any tree shaped like the parameters (gradients, Adafactor's second moments) and,
on axis 1, to the decoding cache ([batch, layers, ...]).

`stack_layers` / `unstack_layers` convert a parameter tree; `convert_like` converts any tree (e.g. a
restored optimizer state) into the layout of a target tree of arrays or ShapeDtypeStructs, keeping
Adafactor's (1,)-shaped placeholders as they are; `abstract_in_layout` gives the restore target of the
other layout (shapes and shardings) so a checkpoint is read as written and converted afterwards.
"""
from __future__ import annotations

import re
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from xmtf_jax.model.config import T5Config

STACKS = {"encoder": "num_encoder_layers", "decoder": "num_decoder_layers"}
STACKED = "layers"
_PER_LAYER = re.compile(r"layers_(\d+)")


def num_layers(config: T5Config, stack: str) -> int:
  return getattr(config, STACKS[stack])


def is_stacked_path(path: tuple) -> bool:
  """Whether a parameter path (tuple of dict keys) is a stacked leaf (`encoder/layers/...`)."""
  return any(k == STACKED and j > 0 and path[j - 1] in STACKS for j, k in enumerate(path))


def _layer_position(path: tuple) -> Optional[tuple[int, str, Optional[int]]]:
  """(index in path, stack name, layer index or None for the stacked form) of a layer key, if any."""
  for j in range(1, len(path)):
    if path[j - 1] not in STACKS or not isinstance(path[j], str):
      continue
    if path[j] == STACKED:
      return j, path[j - 1], None
    match = _PER_LAYER.fullmatch(path[j])
    if match:
      return j, path[j - 1], int(match.group(1))
  return None


def _xp(x):
  return np if isinstance(x, np.ndarray) else jnp


def stack_layers(params: dict, config: T5Config, axis: int = 0) -> dict:
  """Per-layer tree -> stacked tree (numpy in, numpy out; jax arrays give jax arrays)."""
  out = dict(params)
  for stack in STACKS:
    if stack not in params or "layers_0" not in params[stack]:
      continue
    tree = dict(params[stack])
    layers = [tree.pop(f"layers_{i}") for i in range(num_layers(config, stack))]
    tree[STACKED] = jax.tree.map(lambda *xs: _xp(xs[0]).stack(xs, axis=axis), *layers)
    out[stack] = tree
  return out


def unstack_layers(params: dict, config: T5Config, axis: int = 0) -> dict:
  """Stacked tree -> per-layer tree (`layers_{i}` = index i of the stacked axis)."""
  out = dict(params)
  for stack in STACKS:
    if stack not in params or STACKED not in params[stack]:
      continue
    tree = dict(params[stack])
    stacked = tree.pop(STACKED)
    for i in range(num_layers(config, stack)):
      tree[f"layers_{i}"] = jax.tree.map(lambda x, i=i: _xp(x).take(x, i, axis=axis), stacked)
    out[stack] = tree
  return out


def stacked_location(path: tuple) -> tuple[tuple, Optional[int]]:
  """Per-layer path `.../layers_{i}/...` -> (`.../layers/...`, i); any other path -> (path, None)."""
  position = _layer_position(path)
  if position is None or position[2] is None:
    return path, None
  j, _, index = position
  return path[:j] + (STACKED,) + path[j + 1:], index


def layer_leaf(tree: Any, path: tuple) -> Any:
  """The leaf at per-layer `path` of a tree in either layout: as it is, or index i of the stacked
  leaf. Abstract leaves (ShapeDtypeStructs, checkpoint metadata: anything with a shape that cannot be
  indexed) give a ShapeDtypeStruct of one layer's shape."""
  def get(keys):
    node = tree
    for key in keys:
      node = node[key]
    return node
  try:
    return get(path)
  except KeyError:
    stacked, index = stacked_location(path)
    if index is None:
      raise
    leaf = get(stacked)
  if isinstance(leaf, (np.ndarray, jax.Array)):
    return leaf[index]
  return jax.ShapeDtypeStruct(tuple(leaf.shape)[1:], getattr(leaf, "dtype", np.float32))


def is_stacked_tree(tree: Any) -> bool:
  """Whether any leaf of `tree` (params, optimizer state, ...) lives under a stacked `layers` key."""
  return any(is_stacked_path(path_keys(path)) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0])


def path_keys(path) -> tuple:
  """A jax key path as plain keys: dict keys, attribute names, sequence indices."""
  out = []
  for entry in path:
    for attribute in ("key", "name", "idx"):
      if hasattr(entry, attribute):
        out.append(getattr(entry, attribute))
        break
    else:
      out.append(str(entry))
  return tuple(out)


def _source_paths(path: tuple, config: T5Config) -> tuple[list[tuple], Optional[int]]:
  """The paths of the other layout that make up target leaf `path`, and the layer index to take
  (None: stack them all)."""
  position = _layer_position(path)
  if position is None:
    return [path], None
  j, stack, index = position
  if index is None:
    return [path[:j] + (f"layers_{i}",) + path[j + 1:] for i in range(num_layers(config, stack))], None
  return [path[:j] + (STACKED,) + path[j + 1:]], index


def convert_like(source: Any, target: Any, config: T5Config, axis: int = 0) -> Any:
  """`source` (either layout) rearranged into the structure and layout of `target`.

  target: arrays or ShapeDtypeStructs; a leaf with a `.sharding` gets it. A source leaf whose shape
  already equals the target's (shared parameters, Adafactor's (1,) placeholders, scalar counts) is
  taken as it is.
  """
  found = {path_keys(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(source)[0]}
  flat, treedef = jax.tree_util.tree_flatten_with_path(target)
  leaves = []
  for path, want in flat:
    keys = path_keys(path)
    if keys in found:
      parts, index = [keys], None
    else:
      parts, index = _source_paths(keys, config)
    missing = [p for p in parts if p not in found]
    if missing:
      raise KeyError(f"convert_like: the source has no {'/'.join(map(str, missing[0]))} for target "
                     f"{'/'.join(map(str, keys))}")
    values = [found[p] for p in parts]
    first = values[0]
    if tuple(np.shape(first)) == tuple(want.shape):
      value = first
    elif index is not None:
      value = _xp(first).take(first, index, axis=axis)
    else:
      value = _xp(first).stack(values, axis=axis)
    if tuple(np.shape(value)) != tuple(want.shape):
      raise ValueError(f"convert_like: {'/'.join(map(str, keys))} has shape {np.shape(value)} after "
                       f"conversion, the target wants {tuple(want.shape)}")
    sharding = getattr(want, "sharding", None)
    if sharding is not None and isinstance(value, jax.Array):
      value = jax.device_put(value, sharding)
    leaves.append(value)
  return jax.tree_util.tree_unflatten(treedef, leaves)


def abstract_in_layout(target: Any, config: T5Config, stacked: bool) -> Any:
  """ShapeDtypeStructs of the tree `target` (params or optimizer state) in the layout `stacked`, with
  shardings that add / drop a replicated leading `layers` dimension: what a checkpoint written in
  that layout is restored into before `convert_like` turns it into `target`'s layout."""
  def to_stacked(leaf, n):
    if leaf.shape == (1,):  # Adafactor placeholder: the same in both layouts
      return leaf
    return _struct((n, *leaf.shape), leaf, lambda spec: PartitionSpec(None, *spec))

  def to_per_layer(leaf, n):
    if len(leaf.shape) < 2 or leaf.shape[0] != n:
      return leaf
    return _struct(leaf.shape[1:], leaf, lambda spec: PartitionSpec(*tuple(spec)[1:]))

  def convert_stack(tree: dict, n: int) -> dict:
    tree = dict(tree)
    if stacked and "layers_0" in tree:
      first = [tree.pop(f"layers_{i}") for i in range(n)][0]
      tree[STACKED] = jax.tree.map(lambda x: to_stacked(x, n), first)
    elif not stacked and STACKED in tree:
      layers = tree.pop(STACKED)
      for i in range(n):
        tree[f"layers_{i}"] = jax.tree.map(lambda x: to_per_layer(x, n), layers)
    return tree

  def walk(node):
    if isinstance(node, dict):
      return {key: convert_stack(child, num_layers(config, key))
              if key in STACKS and isinstance(child, dict) else walk(child)
              for key, child in node.items()}
    if isinstance(node, tuple) and hasattr(node, "_fields"):
      return type(node)(*[walk(child) for child in node])
    if isinstance(node, (tuple, list)):
      return type(node)(walk(child) for child in node)
    return node

  return walk(target)


def _struct(shape, leaf, respec) -> jax.ShapeDtypeStruct:
  sharding = getattr(leaf, "sharding", None)
  if sharding is None:
    return jax.ShapeDtypeStruct(tuple(shape), leaf.dtype)
  if isinstance(sharding, NamedSharding):
    sharding = NamedSharding(sharding.mesh, respec(sharding.spec))
  return jax.ShapeDtypeStruct(tuple(shape), leaf.dtype, sharding=sharding)
