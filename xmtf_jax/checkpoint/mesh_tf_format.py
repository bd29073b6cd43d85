"""Reading Mesh TensorFlow checkpoints (the original mT5 release, `gs://t5-data/pretrained_models/mt5/
<size>/model.ckpt-1000000`): weights only, through TensorFlow's checkpoint reader.

  <folder>/checkpoint                         text: model_checkpoint_path: "model.ckpt-1000000"
  <folder>/model.ckpt-<step>.index, .data-*   TensorBundle: the variables, bfloat16 in the release
  <folder>/operative_config.gin               the gin the run used (the config), when present

A model path is the folder (its `checkpoint` file's step, else the newest; `step` picks another) or the
prefix `<folder>/model.ckpt-<step>`. Names (Mesh TF → ours, kernels [in, out] as ours, no transposes):

  shared/embedding [V, d]                                    token_embedder/embedding
  {enc,dec}oder/block_000/layer_000/SelfAttention/relative_attention_bias [H, buckets]
                                                             <stack>/relpos_bias/embedding (transposed)
  encoder/block_<i>/layer_000/{rms_norm/scale, SelfAttention/{q,k,v,o}}, layer_001/{rms_norm/scale,
    DenseReluDense/{wi_0,wi_1,wo}/kernel}; decoder: layer_000 SelfAttention, layer_001 EncDecAttention,
    layer_002 DenseReluDense; q/k/v [d, H*dkv] -> [d, H, dkv], o [H*dkv, d] -> [H, dkv, d] (heads-major)
  {enc,dec}oder/rms_norm/scale                               <stack>/<stack>_norm/scale
  decoder/logits/kernel [d, V]                               decoder/logits_dense/kernel

Older checkpoints say `layer_norm` / `final_layer_norm` for `rms_norm`. Adafactor slots (`*_slot_v`,
`_slot_vr`, `_slot_vc`) and `global_step` are skipped; any other variable is an error naming it.
The config comes from operative_config.gin (macros and scoped bindings) checked against the shapes,
or from the shapes alone. TensorFlow is imported only when a checkpoint is read.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import re
from typing import Any, Iterable, Optional

import jax
import numpy as np

from xmtf_jax import paths
from xmtf_jax.errors import MissingPathError, UserError
from xmtf_jax.model import family, layer_stacking
from xmtf_jax.model.config import T5Config

Path = tuple[str, ...]
STATE_FILE = "checkpoint"
GIN_FILE = "operative_config.gin"
VOCABULARY_FILES = ("spiece.model", "sentencepiece.model")
SKIPPED = re.compile(r"(.*_slot_(v|vr|vc|m)|global_step)$")
NORMS = ("rms_norm", "layer_norm")
FINAL_NORMS = ("rms_norm", "final_layer_norm", "layer_norm")
MTF_MAX_DISTANCE = 128  # mesh_tensorflow's relative-position bucketing: fixed


# ---- finding the checkpoint -------------------------------------------------------------------------

def _step_of(prefix: str) -> Optional[int]:
  match = re.search(r"-(\d+)$", prefix)
  return int(match.group(1)) if match else None


def prefixes(names: Iterable[str]) -> list[str]:
  """The checkpoint prefixes in a folder's listing: `<p>.index` with its `<p>.data-*` beside it."""
  names = set(names)
  return sorted(n[:-len(".index")] for n in names if n.endswith(".index")
                and any(m.startswith(n[:-len(".index")] + ".data-") for m in names))


def find(path: str, names: Optional[frozenset], step: Optional[int]):
  """(folder, its names, checkpoint prefix path, step) when `path` is a Mesh TF checkpoint folder or
  prefix, else None. Raises for a `step` the folder does not hold."""
  if names is None:  # a prefix: <folder>/model.ckpt-<step>
    if not paths.exists(path + ".index"):
      return None
    own = _step_of(paths.basename(path))
    if step is not None and step != own:
      raise UserError(f"--step={step} given with the checkpoint {path}; pass its folder instead")
    folder = paths.dirname(path)
    return folder, frozenset(paths.listdir(folder)), path, own
  found = prefixes(names)
  if not found:
    return None
  by_step = {_step_of(p): p for p in found}
  if step is not None:
    if step not in by_step:
      raise MissingPathError(f"--step={step}: {path} has no model.ckpt-{step}; its checkpoints: "
                             f"{', '.join(found)}")
    chosen = by_step[step]
  else:
    chosen = _named_in_state_file(path, names, found) or max(found, key=lambda p: _step_of(p) or -1)
  return path, names, paths.join(path, chosen), _step_of(chosen)


def _named_in_state_file(folder: str, names: frozenset, found: list[str]) -> Optional[str]:
  """The prefix TensorFlow's `checkpoint` file names (model_checkpoint_path), if it is in the folder."""
  if STATE_FILE not in names:
    return None
  try:
    text = paths.read_text(paths.join(folder, STATE_FILE))
  except (UnicodeDecodeError, OSError):
    return None
  match = re.search(r'^model_checkpoint_path:\s*"([^"]+)"', text, re.M)
  name = match and match.group(1).replace("\\", "/").rsplit("/", 1)[-1]
  return name if name in found else None


# ---- operative_config.gin ---------------------------------------------------------------------------

def parse_gin(text: str) -> dict[str, Any]:
  """{binding: value} of an operative config: `name = value` lines (macros and scoped bindings), values
  as Python literals, `%macro` resolved, `@references` kept as strings; continuations joined."""
  raw: dict[str, str] = {}
  statement = ""
  for line in text.splitlines():
    stripped = line.strip()
    if not statement and (not stripped or stripped.startswith(("#", "import ", "include ", "from "))):
      continue
    statement += " " + stripped.rstrip("\\")
    depth = sum(statement.count(c) for c in "([{") - sum(statement.count(c) for c in ")]}")
    if depth <= 0 and not stripped.endswith("\\") and "=" in statement:
      key, _, value = statement.partition("=")
      raw[key.strip()] = value.strip()
      statement = ""

  def value_of(text: str, seen=()):
    if text.startswith("%") and text[1:] in raw and text[1:] not in seen:
      return value_of(raw[text[1:]], seen + (text[1:],))
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text
  return {key: value_of(value) for key, value in raw.items()}


def _gin(bindings: dict, scope: str, name: str, macro: Optional[str] = None) -> Any:
  """A binding as gin resolves it for `scope`: scoped, unscoped, else the macro; None when unbound."""
  for key in (f"{scope}/{name}", name, macro):
    if key and key in bindings:
      return bindings[key]
  return None


def recorded_vocabularies(gin: dict) -> list[str]:
  """The SentencePiece models the run's gin names (`SentencePieceVocabulary.sentencepiece_model_file`;
  gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model for the mT5 release)."""
  return [v for k, v in gin.items() if k.endswith("sentencepiece_model_file") and isinstance(v, str)]


def gin_vocabularies(folder: str, names: Iterable[str]) -> list[str]:
  """`recorded_vocabularies` of the folder's operative_config.gin; [] without one."""
  return recorded_vocabularies(parse_gin(paths.read_text(paths.join(folder, GIN_FILE)))
                               ) if GIN_FILE in set(names) else []


# ---- the reader -------------------------------------------------------------------------------------

class MeshTFReader:
  """One Mesh TF checkpoint, read one variable at a time (float32, in our per-layer layout)."""

  def __init__(self, prefix: str, folder_names: Iterable[str] = ()):
    import tensorflow as tf  # only to read a checkpoint: xmtf_jax imports without TensorFlow
    self.prefix, self.folder = prefix, paths.dirname(prefix)
    try:
      self._reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as e:
      raise MissingPathError(f"{prefix}: not a readable TensorFlow checkpoint "
                             f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})"
                             ) from None
    self.shapes = {n: tuple(s) for n, s in self._reader.get_variable_to_shape_map().items()
                   if not SKIPPED.fullmatch(n)}
    names = set(folder_names)
    self.gin_path = paths.join(self.folder, GIN_FILE) if GIN_FILE in names else None
    self.gin = parse_gin(paths.read_text(self.gin_path)) if self.gin_path else {}
    vocab = [paths.join(self.folder, n) for n in VOCABULARY_FILES if n in names]
    self.vocabulary_path = (vocab + recorded_vocabularies(self.gin) + [None])[0]

  @functools.cached_property
  def config(self) -> T5Config:
    return config_from(self.shapes, self.gin, self.gin_path or self.prefix)

  @functools.cached_property
  def plan(self) -> dict[Path, tuple[str, str]]:
    """{our per-layer path: (variable, layout)}; every variable accounted for, or a UserError."""
    plan = {path: (self._name(candidates), layout)
            for path, candidates, layout in name_table(self.config)}
    unused = sorted(set(self.shapes) - {name for name, _ in plan.values()})
    if unused:
      raise UserError(f"{self.prefix}: variables xmtf_jax has no place for: {', '.join(unused[:8])}"
                      f"{' ...' if len(unused) > 8 else ''} (per-layer relative position biases and "
                      "other Mesh TF variants are not supported)")
    return plan

  def _name(self, candidates: tuple[str, ...]) -> str:
    for name in candidates:
      if name in self.shapes:
        return name
    raise UserError(f"{self.prefix}: no variable {candidates[0]}: not an mT5 / T5.1.1 Mesh TensorFlow "
                    "checkpoint of the config its shapes give"
                    + (" (a T5 v1.0 checkpoint ties the output embedding: not supported)"
                       if candidates[0] == "decoder/logits/kernel" else ""))

  def read(self, path: Path) -> np.ndarray:
    name, layout = self.plan[path]
    array = np.asarray(self._reader.get_tensor(name), np.float32)
    config = self.config
    if layout == "qkv":
      return array.reshape(array.shape[0], config.num_heads, config.d_kv)
    if layout == "out":
      return array.reshape(config.num_heads, config.d_kv, array.shape[-1])
    if layout == "relpos":
      return np.ascontiguousarray(array.T)
    return array

  def our_shape(self, path: Path) -> tuple[int, ...]:
    """The shape `read(path)` gives, from the variable's shape alone."""
    name, layout = self.plan[path]
    shape, heads = self.shapes[name], self.config.num_heads
    if layout == "qkv":
      return (shape[0], heads, shape[1] // heads)
    if layout == "out":
      return (heads, shape[0] // heads, shape[1])
    return tuple(reversed(shape)) if layout == "relpos" else shape

  def load_params(self, mesh: Any = None, logical_axis_rules=None, **config_overrides):
    """(config, float32 params) in the layout of the config after `config_overrides`, one leaf at a
    time placed with its sharding on `mesh` (or on the default device)."""
    self.plan  # pylint: disable=pointless-statement  (checks every variable before reading any)
    config = dataclasses.replace(self.config, **config_overrides)
    model = family.model_for(config, mesh, logical_axis_rules)
    shardings = model.param_shardings() if mesh is not None else None
    params: dict = {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(model.abstract_params())[0]:
      path = layer_stacking.path_keys(key_path)
      if layer_stacking.is_stacked_path(path):
        j = path.index(layer_stacking.STACKED)
        array = np.stack([self.read(path[:j] + (f"layers_{i}",) + path[j + 1:])
                          for i in range(layer_stacking.num_layers(config, path[j - 1]))])
      else:
        array = self.read(path)
      if tuple(array.shape) != tuple(leaf.shape):
        raise UserError(f"{self.prefix}: {'/'.join(path)} has shape {list(array.shape)}, the config "
                        f"{list(leaf.shape)}")
      if shardings is None:
        placed = jax.device_put(array)
      else:
        sharding = layer_stacking.layer_leaf(shardings, path)
        placed = jax.make_array_from_callback(array.shape, sharding, lambda index, a=array: a[index])
      node = params
      for key in path[:-1]:
        node = node.setdefault(key, {})
      node[path[-1]] = placed
    return config, params


def name_table(config: T5Config) -> list[tuple[Path, tuple[str, ...], str]]:
  """[(our per-layer path, the Mesh TF names it may have, layout)]."""
  table = [(("token_embedder", "embedding"), ("shared/embedding",), "same")]

  def norm(ours: Path, block: str):
    table.append((ours + ("scale",), tuple(f"{block}/{n}/scale" for n in NORMS), "same"))

  def attention(ours: Path, scope: str):
    for our, theirs in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")):
      table.append((ours + (our, "kernel"), (f"{scope}/{theirs}",), "out" if our == "out" else "qkv"))

  for stack, layers in (("encoder", config.num_encoder_layers), ("decoder", config.num_decoder_layers)):
    table.append(((stack, "relpos_bias", "embedding"),
                  (f"{stack}/block_000/layer_000/SelfAttention/relative_attention_bias",), "relpos"))
    for i in range(layers):
      ours, block = (stack, f"layers_{i}"), f"{stack}/block_{i:03d}"
      sublayers = ([("pre_attention_layer_norm", "attention", "SelfAttention")] if stack == "encoder" else
                   [("pre_self_attention_layer_norm", "self_attention", "SelfAttention"),
                    ("pre_cross_attention_layer_norm", "encoder_decoder_attention", "EncDecAttention")])
      for n, (norm_name, ours_attention, theirs) in enumerate(sublayers):
        norm(ours + (norm_name,), f"{block}/layer_{n:03d}")
        attention(ours + (ours_attention,), f"{block}/layer_{n:03d}/{theirs}")
      mlp = f"{block}/layer_{len(sublayers):03d}"
      norm(ours + ("pre_mlp_layer_norm",), mlp)
      for name in ("wi_0", "wi_1", "wo"):
        table.append((ours + ("mlp", name, "kernel"), (f"{mlp}/DenseReluDense/{name}/kernel",), "same"))
    table.append(((stack, f"{stack}_norm", "scale"), tuple(f"{stack}/{n}/scale" for n in FINAL_NORMS),
                  "same"))
  table.append((("decoder", "logits_dense", "kernel"), ("decoder/logits/kernel",), "same"))
  return table


def config_from(shapes: dict[str, tuple], gin: dict, origin: str) -> T5Config:
  """The T5Config of a checkpoint: operative_config.gin's values (when given) checked against the
  variables' shapes, else the shapes alone."""
  def shape(name: str) -> tuple:
    if name not in shapes:
      raise UserError(f"{origin}: no variable {name}: not an mT5 / T5.1.1 Mesh TensorFlow checkpoint")
    return shapes[name]

  if any(n.endswith("DenseReluDense/wi/kernel") for n in shapes):
    raise UserError(f"{origin}: a T5 v1.0 checkpoint (one DenseReluDense/wi, relu); xmtf_jax implements "
                    "mT5 / T5.1.1 (gated gelu: wi_0 and wi_1)")
  vocab, d_model = shape("shared/embedding")
  heads, buckets = shape("encoder/block_000/layer_000/SelfAttention/relative_attention_bias")
  joined = shape("encoder/block_000/layer_000/SelfAttention/q")[1]
  layers = {stack: len({m.group(1) for m in map(re.compile(rf"{stack}/block_(\d+)/").match, shapes) if m})
            for stack in ("encoder", "decoder")}
  found = dict(vocab_size=vocab, d_model=d_model, num_heads=heads, d_kv=joined // heads,
               d_ff=shape("encoder/block_000/layer_001/DenseReluDense/wi_0/kernel")[1],
               num_encoder_layers=layers["encoder"], num_decoder_layers=layers["decoder"],
               relative_attention_num_buckets=buckets)
  values = dict(found, relative_attention_max_distance=MTF_MAX_DISTANCE)
  if gin:
    activation = _gin(gin, "encoder", "DenseReluDense.activation")
    if activation is not None and list(np.atleast_1d(activation)) != ["gelu", "linear"]:
      raise UserError(f"{origin}: DenseReluDense.activation = {activation!r}; xmtf_jax implements mT5 / "
                      "T5.1.1 (['gelu', 'linear'])")
    said = {"d_model": _gin(gin, "encoder", "d_model"),
            "num_heads": _gin(gin, "encoder", "SelfAttention.num_heads", "num_heads"),
            "d_kv": _gin(gin, "encoder", "SelfAttention.key_value_size", "d_kv"),
            "d_ff": _gin(gin, "encoder", "DenseReluDense.hidden_size", "d_ff"),
            "num_encoder_layers": _gin(gin, "encoder", "make_layer_stack.num_layers", "num_layers"),
            "num_decoder_layers": _gin(gin, "decoder", "make_layer_stack.num_layers", "num_layers"),
            "relative_attention_num_buckets": _gin(gin, "encoder",
                                                   "SelfAttention.relative_attention_num_buckets")}
    wrong = [f"{k} = {v} (the variables give {found[k]})" for k, v in said.items()
             if isinstance(v, int) and v != found[k]]
    if wrong:
      raise UserError(f"{origin} does not match the checkpoint beside it: {'; '.join(wrong)}")
    values.update({k: v for k, v in said.items() if isinstance(v, int)})
    dropout = _gin(gin, "encoder", "dropout_rate")
    if isinstance(dropout, (int, float)):
      values["dropout_rate"] = float(dropout)
    epsilon = _gin(gin, "encoder", "LayerStack.norm_epsilon", "sublayer_rms_norm.epsilon")
    if isinstance(epsilon, float):  # LayerStack's own when set, else its sublayers' (the release's)
      values["layer_norm_epsilon"] = epsilon
  return T5Config(**values)
