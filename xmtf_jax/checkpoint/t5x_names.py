"""t5x parameter names and layouts -> our mT5 parameters (shared/facts/t5x_checkpoints.md §2, §3).

Our names are t5x's minimal-model names (`encoder/layers_0/attention/query/kernel`, flaxformer's
unscanned T5 uses the same), so a parameter maps by name; only the layouts differ:

  q/k/v kernels  [embed, heads*kv] (split heads, scalable_t5: [embed, heads, kv]) -> [embed, heads, kv]
  out kernels    [heads*kv, embed] (split: [heads, kv, embed])                   -> [heads, kv, embed]
  relpos_bias    `rel_embedding` [heads, buckets]                     -> `embedding` [buckets, heads]
  logits_dense   absent: the embedding (t5x divides its logits by sqrt(d_model)) -> embedding.T / sqrt(d)

Scanned checkpoints (scalable_t5, flaxformer `scan_layers`) keep each stack's layers in one array
under `encoder/encoder/...` / `decoder/decoder/...` with the layer axis at `param_scan_axis` (the
run's config.gin, else 1): layer i is the slice at that axis, read alone. Their relative position
tables are per layer ([heads, layers, buckets]; scalable_t5 unscanned: `layers_i/relpos_bias`): when
all of a stack's layers hold the same table it becomes our shared one (an mT5, exported as
MT5ForConditionalGeneration), otherwise `T5Config.relative_attention_per_layer` keeps every layer's
own (umT5 style, exported as UMT5ForConditionalGeneration); either is logged, and the override
`relative_attention_per_layer` picks. The config comes from config.gin when the model dir has one,
else from the array shapes (logged).
"""
from __future__ import annotations

import ast
import logging
import re
from typing import Any, Callable, Optional

import jax
import numpy as np

from xmtf_jax.checkpoint.t5x_format import T5xCheckpoint, empty_aligned, release_freed_memory
from xmtf_jax.errors import UserError
from xmtf_jax.model import family, layer_stacking
from xmtf_jax.model.config import T5Config
from xmtf_jax.parallel import partitioning

log = logging.getLogger(__name__)

Path = tuple[str, ...]
STACK_KEYS = {"encoder": ("num_encoder_layers", "attention"), "decoder": ("num_decoder_layers",
                                                                          "self_attention")}
# flaxformer's fused kernels: our attention and MLP hold them apart.
FUSED = ("qkv_fused", "kv_fused", "wi_fused")
# t5x's T5Config fields (t5x/examples/t5/network.py, scalable_t5) -> ours.
_GIN_FIELDS = {"vocab_size": "vocab_size", "emb_dim": "d_model", "num_heads": "num_heads",
               "head_dim": "d_kv", "mlp_dim": "d_ff", "num_encoder_layers": "num_encoder_layers",
               "num_decoder_layers": "num_decoder_layers", "dropout_rate": "dropout_rate"}


# ---- the run's config.gin ----------------------------------------------------------------------------

def gin_bindings(text: str) -> dict[str, Any]:
  """`T5Config.<field>` values and `param_scan_axis`/`scan_axis` of an operative gin, macros resolved
  (values that are not literals are left out)."""
  macros = dict(re.findall(r"^([A-Z][A-Z0-9_]*)\s*=\s*(.+?)\s*$", text, flags=re.MULTILINE))
  found = {}
  for field, value in re.findall(r"^(?:[\w.]*\.)?T5Config\.(\w+)\s*=\s*(.+?)\s*$", text, flags=re.MULTILINE):
    found[field] = value
  scan_axis = r"^[\w.]*?\b((?:param_)?scan_axis)\s*=\s*(.+?)\s*$"
  for field, value in re.findall(scan_axis, text, flags=re.MULTILINE):
    found.setdefault("param_scan_axis", value)
  values = {}
  for field, value in found.items():
    if value.startswith("%"):
      value = macros.get(value[1:], value)
    try:
      values[field] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      continue
  return values


# ---- the checkpoint's layout ---------------------------------------------------------------------------

class T5xLayout:
  """Where each of our per-layer parameters lies in one t5x checkpoint, and how to read it."""

  def __init__(self, ckpt: T5xCheckpoint):
    self.ckpt = ckpt
    self.names = ckpt.names()
    origin = ckpt.describe()
    fused = sorted(n for n in self.names if any(f"/{f}/" in f"/{n}" for f in FUSED))
    if fused:
      raise UserError(f"{origin}: fused flaxformer kernels ({', '.join(fused[:3])}) are not supported: "
                      "our attention and MLP keep q/k/v and wi_0/wi_1 apart; re-save the checkpoint "
                      "without qkv_fused/kv_fused/wi_fused")
    if any(re.search(r"mlp/wi/kernel$", n) for n in self.names):
      raise UserError(f"{origin}: a T5 v1.0 MLP (one `wi` kernel, ReLU) is not supported: xmtf_jax "
                      "implements mT5 / T5.1.1 (gated-GELU wi_0 and wi_1)")
    if "token_embedder/embedding" not in self.names:
      raise UserError(f"{origin}: no token_embedder/embedding: not a t5x T5 encoder-decoder (it holds "
                      f"{sorted(self.names)[:6]})")
    self.scanned = any(n.startswith(("encoder/encoder/", "decoder/decoder/")) for n in self.names)
    self.gin = gin_bindings(ckpt.gin_text() or "")
    self.axis = int(self.gin.get("param_scan_axis", 1))
    self._table_cache: dict = {}  # stack -> its per-layer tables (or None), read once

  def _stack_name(self, stack: str, rest: str) -> str:
    return f"{stack}/{stack}/{rest}" if self.scanned else f"{stack}/layers_0/{rest}"

  def config(self, **overrides) -> T5Config:
    """The T5Config: from config.gin's T5Config bindings when present, the rest from shapes."""
    vocab, d_model = self.names["token_embedder/embedding"]
    heads, buckets = self._relpos_shape("encoder")
    query = self.names[self._stack_name("encoder", "attention/query/kernel")]
    query = tuple(s for j, s in enumerate(query) if not (self.scanned and j == self.axis))
    d_kv = query[-1] if len(query) == 3 else query[-1] // heads
    wi = self.names[self._stack_name("encoder", "mlp/wi_0/kernel")]
    shapes = dict(vocab_size=vocab, d_model=d_model, num_heads=heads, d_kv=d_kv, d_ff=wi[-1],
                  relative_attention_num_buckets=buckets,
                  num_encoder_layers=self._depth("encoder"), num_decoder_layers=self._depth("decoder"))
    from_gin = {ours: self.gin[theirs] for theirs, ours in _GIN_FIELDS.items() if theirs in self.gin}
    activations = self.gin.get("mlp_activations")
    if activations is not None and tuple(activations) != ("gelu", "linear"):
      raise UserError(f"{self.ckpt.model_dir}/config.gin: mlp_activations={activations}; xmtf_jax "
                      "implements mT5's gated GELU ('gelu', 'linear') only")
    log.info("t5x checkpoint %s: the model config comes from %s", self.ckpt.step_dir,
             "its run's config.gin (the rest from array shapes)" if from_gin else "the array shapes")
    config = T5Config(**{**shapes, **from_gin, "scan_layers": False, **overrides})
    return config.replace(relative_attention_per_layer=self._per_layer(
        config, overrides.get("relative_attention_per_layer")))

  def _per_layer(self, config: T5Config, wanted: Optional[bool]) -> bool:
    """Whether our config keeps per-layer tables: those the checkpoint's layers hold when they differ
    (or `wanted`, the caller's override; False with tables that differ is refused)."""
    differ = [stack for stack in STACK_KEYS if self._tables_differ(stack, config)]
    if wanted is None:
      if any(self._tables(stack, config) is not None for stack in STACK_KEYS):
        log.info("t5x checkpoint %s: per-layer relative position tables, %s", self.ckpt.step_dir,
                 f"which differ in the {' and '.join(differ)}: relative_attention_per_layer=True"
                 if differ else "all equal: one shared table per stack (mT5)")
      return bool(differ)
    if not wanted and differ:
      raise UserError(f"{self.ckpt.describe()}: the {' and '.join(differ)}'s layers have different "
                      "relative position tables (umT5 / scalable_t5 style); they need "
                      "relative_attention_per_layer=True (the default for this checkpoint)")
    return bool(wanted)

  def _relpos_shape(self, stack: str) -> tuple[int, int]:
    """(heads, buckets) of the stack's table: shared, layer 0's, or scanned (the layer axis dropped)."""
    for name in (f"{stack}/relpos_bias/rel_embedding", f"{stack}/layers_0/relpos_bias/rel_embedding"):
      if name in self.names:
        return self.names[name]
    scanned = self.names.get(f"{stack}/{stack}/relpos_bias/rel_embedding")
    if scanned is not None:
      heads, buckets = (s for j, s in enumerate(scanned) if j != self.axis)
      return heads, buckets
    raise UserError(f"{self.ckpt.describe()}: no relative position table for the {stack} "
                    f"({stack}/relpos_bias/rel_embedding)")

  def _depth(self, stack: str) -> int:
    if self.scanned:
      return self.names[f"{stack}/{stack}/mlp/wo/kernel"][self.axis]
    return len({n.split("/")[1] for n in self.names if re.match(rf"{stack}/layers_\d+/", n)})

  # -- reading one of our parameters --

  def reader(self, path: Path, config: T5Config, shape: tuple) -> Callable[..., np.ndarray]:
    """A function reading our per-layer parameter `path` (our `shape`) as float32 in our layout, or
    only its part `box` (a tuple of slices of our shape): read alone from storage where the stored
    layout names it (same or joined axes), else cut from the whole array."""
    name = "/".join(path)
    if path == ("decoder", "logits_dense", "kernel") and name not in self.names:
      return _cut(lambda: self._tied_head(config))
    if path[-2:] == ("relpos_bias", "embedding"):
      layer = int(path[1][len("layers_"):]) if len(path) == 4 else None
      return _cut(lambda: self._relpos(path[0], config, layer).T)
    match = re.match(r"(encoder|decoder)/layers_(\d+)/(.+)$", name)
    layer = None
    if match and self.scanned:
      stack, layer, rest = match.groups()
      name, layer = f"{stack}/{stack}/{rest}", int(layer)

    def read(box: Optional[tuple] = None) -> np.ndarray:
      stored = self.names.get(name, ())
      if layer is not None:
        stored = tuple(s for j, s in enumerate(stored) if j != self.axis)
      index = None if box is None else _stored_index(box, shape, stored)
      if index is None:  # the whole array (cut to the box, if any)
        whole = self._read(name, () if layer is None else (slice(None),) * self.axis + (layer,))
        return whole.reshape(shape) if box is None else whole.reshape(shape)[box]
      if layer is not None:
        index = index[:self.axis] + (layer,) + index[self.axis:]
      return self._read(name, index).reshape([b.stop - b.start for b in box])
    return read

  def _tied_head(self, config: T5Config) -> np.ndarray:
    """embedding.T / sqrt(d_model) (t5x's logits via the embedding), transposed while cast to float32
    and scaled in place: the stored array (bfloat16: half a copy) beside one float32 copy."""
    stored = self.ckpt.read("token_embedder/embedding")  # bfloat16 as t5x stores it: half a copy
    head = empty_aligned(stored.shape[::-1], np.float32)
    np.copyto(head, stored.T)  # transposed and cast in one copy
    del stored
    head *= np.float32(1.0 / np.sqrt(config.d_model))
    return head

  def _read(self, name: str, index: Any = ()) -> np.ndarray:
    if name not in self.names:
      raise UserError(f"{self.ckpt.describe()}: no array {name}")
    return self.ckpt.read(name, index, dtype=np.float32)

  def _tables(self, stack: str, config: T5Config) -> Optional[np.ndarray]:
    """[layers, heads, buckets]: the stack's per-layer tables (read once); None for a shared table."""
    cache = self._table_cache
    if stack not in cache:
      if f"{stack}/relpos_bias/rel_embedding" in self.names:
        cache[stack] = None
      elif self.scanned:
        cache[stack] = np.moveaxis(self._read(f"{stack}/{stack}/relpos_bias/rel_embedding"), self.axis, 0)
      else:
        cache[stack] = np.stack([self._read(f"{stack}/layers_{i}/relpos_bias/rel_embedding")
                                 for i in range(getattr(config, STACK_KEYS[stack][0]))])
    return cache[stack]

  def _tables_differ(self, stack: str, config: T5Config) -> bool:
    tables = self._tables(stack, config)
    return tables is not None and not all(np.array_equal(tables[0], t) for t in tables[1:])

  def _relpos(self, stack: str, config: T5Config, layer: Optional[int] = None) -> np.ndarray:
    """[heads, buckets]: layer `layer`'s table (per-layer configs), else the stack's shared table
    (or the per-layer tables' one when all are equal)."""
    tables = self._tables(stack, config)
    if tables is None:
      return self._read(f"{stack}/relpos_bias/rel_embedding")
    if layer is not None:
      return tables[layer]
    if self._tables_differ(stack, config):
      raise UserError(f"{self.ckpt.describe()}: the {stack}'s layers have different relative position "
                      "tables; they need relative_attention_per_layer=True")
    return tables[0]


# ---- loading ---------------------------------------------------------------------------------------------

def read_config(ckpt: T5xCheckpoint, **overrides) -> T5Config:
  return T5xLayout(ckpt).config(**overrides)


def read_plan(layout: T5xLayout, config: T5Config) -> dict[Path, tuple[Callable[[], np.ndarray], tuple]]:
  """{our per-layer path: (reader, our shape)} for every parameter, every name and shape checked
  before any array is read."""
  abstract = family.model_for(config.replace(scan_layers=False)).abstract_params()
  plan, problems = {}, []
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
    path = layer_stacking.path_keys(key_path)
    try:
      plan[path] = (layout.reader(path, config, tuple(leaf.shape)), tuple(leaf.shape))
    except UserError as error:
      problems.append(str(error))
      continue
    stored = _stored_shape(layout, path)
    if stored is not None and int(np.prod(stored)) != int(np.prod(leaf.shape)):
      problems.append(f"{'/'.join(path)}: stored {list(stored)}, the config needs {list(leaf.shape)}")
  if problems:
    raise UserError(f"{layout.ckpt.describe()} does not match its config:\n  " + "\n  ".join(problems[:20]))
  return plan


def _stored_shape(layout: T5xLayout, path: Path) -> Optional[tuple]:
  """The stored shape of one per-layer parameter (the layer axis dropped); None when derived."""
  name = "/".join(path)
  match = re.match(r"(encoder|decoder)/layers_(\d+)/(.+)$", name)
  if match and layout.scanned:
    stack, _, rest = match.groups()
    shape = layout.names.get(f"{stack}/{stack}/{rest}")
    return None if shape is None else tuple(s for j, s in enumerate(shape) if j != layout.axis)
  return layout.names.get(name) if path[-2:] != ("relpos_bias", "embedding") else None


def read_param(plan, path: Path, box: Optional[tuple] = None) -> np.ndarray:
  """One of our per-layer parameters, float32, in our layout (or its part `box`: slices, steps 1)."""
  read, shape = plan[path]
  array = np.ascontiguousarray(read(box) if box is not None else read()).reshape(
      shape if box is None else [b.stop - b.start for b in box])
  release_freed_memory()  # what tensorstore's threads freed, before the next array is read
  return array


def _cut(whole: Callable[[], np.ndarray]) -> Callable[..., np.ndarray]:
  return lambda box=None: whole() if box is None else whole()[box]


def _stored_index(box: tuple, ours: tuple, stored: tuple) -> Optional[tuple]:
  """The index of stored data holding `box` of our shape: the box itself when the shapes agree, the
  joined range when the store joins two of our axes (t5x's [embed, heads*kv] for our [embed, heads,
  kv]) and the box spans the second whole; None otherwise."""
  if tuple(stored) == tuple(ours):
    return box
  for k in range(len(ours) - 1):
    if tuple(stored) == ours[:k] + (ours[k] * ours[k + 1],) + ours[k + 2:]:
      if (box[k + 1].start, box[k + 1].stop) != (0, ours[k + 1]):
        return None
      joined = slice(box[k].start * ours[k + 1], box[k].stop * ours[k + 1])
      return box[:k] + (joined,) + box[k + 2:]
  return None


def host_box(sharding: Any, shape: tuple) -> Optional[tuple]:
  """The smallest box (slices) holding every part of an array of `shape` that this host's devices
  hold under `sharding`; None when that is the whole array (one host, or replicated)."""
  parts = [tuple(s.indices(d)[:2] for s, d in zip(index, shape))
           for index in sharding.addressable_devices_indices_map(shape).values()]
  box = tuple(slice(min(p[i][0] for p in parts), max(p[i][1] for p in parts)) for i in range(len(shape)))
  return None if all((b.start, b.stop) == (0, d) for b, d in zip(box, shape)) else box


def load_params(ckpt: T5xCheckpoint, mesh: Any = None, logical_axis_rules=None, **overrides):
  """(config, float32 params) of a t5x checkpoint, one array at a time onto `mesh` (or the default
  device), in the layer layout of the config (`scan_layers` among `overrides`). On a mesh spanning
  hosts each host reads only the box its devices hold (`host_box`), from storage where it can."""
  layout = T5xLayout(ckpt)
  config = layout.config(**overrides)
  plan = read_plan(layout, config)
  shardings = None
  if mesh is not None:
    rules = logical_axis_rules or partitioning.logical_axis_rules()
    shardings = family.model_for(config, mesh, rules).param_shardings()
  groups: dict = {}
  for path in plan:
    leaf = layer_stacking.stacked_location(path)[0] if config.scan_layers else path
    groups.setdefault(leaf, []).append(path)
  params: dict = {}
  for leaf, per_layer in groups.items():
    per_layer.sort(key=lambda p: layer_stacking.stacked_location(p)[1] or 0)
    single = len(per_layer) == 1 and leaf == per_layer[0]
    shape = plan[leaf][1] if single else (len(per_layer),) + plan[per_layer[0]][1]
    target = shardings
    for key in leaf if shardings is not None else ():
      target = target[key]
    # Several hosts: each reads only the part its devices hold (the box), where storage allows.
    box = host_box(target, shape) if target is not None else None
    if single:
      array = read_param(plan, leaf, box)
    else:
      layers = per_layer if box is None else per_layer[box[0]]
      array = empty_aligned((len(layers),) + (shape[1:] if box is None else tuple(
          b.stop - b.start for b in box[1:])), np.float32)
      for i, p in enumerate(layers):  # into the stacked array: no list of layers beside it
        array[i] = read_param(plan, p, None if box is None else box[1:])
    if target is None:  # the CPU backend keeps an aligned host array without a copy
      placed = jax.device_put(array, may_alias=True)
    else:
      start = [0] * len(shape) if box is None else [b.start for b in box]
      placed = jax.make_array_from_callback(shape, target, lambda index, a=array, s=start: a[tuple(
          slice(i.indices(d)[0] - o, i.indices(d)[1] - o) for i, d, o in zip(index, shape, s))])
    node = params
    for key in leaf[:-1]:
      node = node.setdefault(key, {})
    node[leaf[-1]] = placed
    del array
  return config, params
