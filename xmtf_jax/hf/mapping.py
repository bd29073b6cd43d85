"""The one mapping between our parameters and HF `MT5ForConditionalGeneration` (names, layouts, config),
and `UMT5ForConditionalGeneration` (`T5Config.relative_attention_per_layer`: the same names, plus every
block's own `layer.0.SelfAttention.relative_attention_bias.weight`).

Names: `parameter_mapping(config)` lists (our path, HF name, layout) for every tensor. Layouts:
  "same"  identical arrays (shared embedding, layer norms, relative position bias [buckets, heads])
  "qkv"   HF Linear [heads*kv, embed]  <->  ours [embed, heads, kv]
  "out"   HF Linear [embed, heads*kv]  <->  ours [heads, kv, embed]
  "dense" HF Linear [out, in]          <->  ours [in, out] (MLP and LM head)
All conversions are transposes/reshapes, so HF -> ours -> HF is bit-exact. Paths are per layer
(`layers_{i}`); a scanned model's stacked tree is read through `layer_stacking.layer_leaf`. `t5config_from_hf` /
`t5config_to_hf` convert config.json. Reading folders is `xmtf_jax.hf.reader`.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from xmtf_jax.errors import UserError
from xmtf_jax.hf.ties import LM_HEAD, SHARED
from xmtf_jax.model import layer_stacking
from xmtf_jax.model.config import T5Config

log = logging.getLogger(__name__)

# Tensors transformers drops on load without a word (MT5's `_keys_to_ignore_on_load_unexpected`): skipped
# too. The embedding aliases (`encoder/decoder.embed_tokens.weight`) are resolved in `xmtf_jax.hf.ties`.
IGNORED_HF_TENSORS = (
    "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",  # unused (old T5 ports)
)


# ----------------------------------------------------------------------------------------------------
# Names and layouts.


def parameter_mapping(config: T5Config) -> list[tuple[tuple[str, ...], str, str]]:
  """[(our param path, HF state-dict name, layout)] for every parameter, in HF order."""
  entries = [(("token_embedder", "embedding"), SHARED, "same")]

  def attention(ours: tuple[str, ...], hf: str):
    for our_name, hf_name in (("query", "q"), ("key", "k"), ("value", "v")):
      entries.append((ours + (our_name, "kernel"), f"{hf}.{hf_name}.weight", "qkv"))
    entries.append((ours + ("out", "kernel"), f"{hf}.o.weight", "out"))

  def mlp(ours: tuple[str, ...], hf: str):
    for name in ("wi_0", "wi_1", "wo"):
      entries.append((ours + (name, "kernel"), f"{hf}.{name}.weight", "dense"))

  relpos = "layer.0.SelfAttention.relative_attention_bias.weight"
  per_layer = config.relative_attention_per_layer
  for stack, layers in (("encoder", config.num_encoder_layers), ("decoder", config.num_decoder_layers)):
    if not per_layer:  # MT5: block 0's table serves every block
      entries.append(((stack, "relpos_bias", "embedding"), f"{stack}.block.0.{relpos}", "same"))
    for i in range(layers):
      ours, hf = (stack, f"layers_{i}"), f"{stack}.block.{i}.layer"
      if per_layer:
        entries.append((ours + ("relpos_bias", "embedding"), f"{stack}.block.{i}.{relpos}", "same"))
      if stack == "encoder":
        entries.append((ours + ("pre_attention_layer_norm", "scale"), f"{hf}.0.layer_norm.weight", "same"))
        attention(ours + ("attention",), f"{hf}.0.SelfAttention")
        entries.append((ours + ("pre_mlp_layer_norm", "scale"), f"{hf}.1.layer_norm.weight", "same"))
        mlp(ours + ("mlp",), f"{hf}.1.DenseReluDense")
      else:
        entries.append((ours + ("pre_self_attention_layer_norm", "scale"), f"{hf}.0.layer_norm.weight", "same"))
        attention(ours + ("self_attention",), f"{hf}.0.SelfAttention")
        entries.append((ours + ("pre_cross_attention_layer_norm", "scale"), f"{hf}.1.layer_norm.weight",
                        "same"))
        attention(ours + ("encoder_decoder_attention",), f"{hf}.1.EncDecAttention")
        entries.append((ours + ("pre_mlp_layer_norm", "scale"), f"{hf}.2.layer_norm.weight", "same"))
        mlp(ours + ("mlp",), f"{hf}.2.DenseReluDense")
    entries.append(((stack, f"{stack}_norm", "scale"), f"{stack}.final_layer_norm.weight", "same"))
  entries.append((("decoder", "logits_dense", "kernel"), LM_HEAD, "dense"))
  return entries


def to_ours(layout: str, hf_array: np.ndarray, our_shape: tuple[int, ...]) -> np.ndarray:
  if layout == "same":
    return hf_array
  return np.ascontiguousarray(hf_array.T).reshape(our_shape)


def to_hf(layout: str, our_array: np.ndarray) -> np.ndarray:
  a = np.asarray(our_array)
  if layout == "same":
    return a
  if layout == "qkv":  # [embed, heads, kv] -> [heads*kv, embed]
    return np.ascontiguousarray(a.reshape(a.shape[0], -1).T)
  if layout == "out":  # [heads, kv, embed] -> [embed, heads*kv]
    return np.ascontiguousarray(a.reshape(-1, a.shape[-1]).T)
  return np.ascontiguousarray(a.T)


def hf_shape(layout: str, our_shape: tuple[int, ...]) -> tuple[int, ...]:
  if layout == "same":
    return tuple(our_shape)
  if layout == "qkv":
    return (our_shape[1] * our_shape[2], our_shape[0])
  if layout == "out":
    return (our_shape[2], our_shape[0] * our_shape[1])
  return tuple(reversed(our_shape))


def tree_get(tree: Mapping, path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def tree_set(tree: dict, path: tuple[str, ...], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def params_to_hf(params: Mapping, config: T5Config) -> dict[str, np.ndarray]:
  """Our params (either layer layout) -> HF state dict {name: float32 numpy array} (untied: includes
  lm_head.weight)."""
  return {hf: to_hf(layout, np.asarray(layer_stacking.layer_leaf(params, path), np.float32))
          for path, hf, layout in parameter_mapping(config)}


# ----------------------------------------------------------------------------------------------------
# Configs.

_HF_TO_OURS = {
    "vocab_size": "vocab_size", "d_model": "d_model", "d_kv": "d_kv", "d_ff": "d_ff",
    "num_heads": "num_heads", "num_layers": "num_encoder_layers",
    "num_decoder_layers": "num_decoder_layers",
    "relative_attention_num_buckets": "relative_attention_num_buckets",
    "relative_attention_max_distance": "relative_attention_max_distance",
    "dropout_rate": "dropout_rate", "layer_norm_epsilon": "layer_norm_epsilon",
}


def t5config_from_hf(hf_config: Mapping[str, Any], origin: str = "config.json", **overrides) -> T5Config:
  """HF config dict -> T5Config. `overrides` (e.g. dtype="bfloat16", dropout_rate=0.0) win."""
  model_type = hf_config.get("model_type", "mt5")
  if model_type not in ("mt5", "t5", "umt5"):
    raise UserError(f"{origin}: model_type {model_type!r} is not an mT5/T5 model")
  proj = hf_config.get("feed_forward_proj", "gated-gelu")
  if proj != "gated-gelu":
    raise UserError(f"{origin}: feed_forward_proj={proj!r}; xmtf_jax implements mT5 / T5.1.1 "
                    "(gated-gelu). T5 v1.0 (relu) checkpoints are not supported.")
  missing = [k for k in ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "num_layers")
             if k not in hf_config]
  if missing:
    raise UserError(f"{origin}: missing fields {missing}")
  values = {ours: hf_config[hf] for hf, ours in _HF_TO_OURS.items() if hf_config.get(hf) is not None}
  values.setdefault("num_decoder_layers", values["num_encoder_layers"])
  values["relative_attention_per_layer"] = model_type == "umt5"  # UMT5Attention: a table in every block
  values.update(overrides)
  return T5Config(**values)


def t5config_to_hf(config: T5Config) -> dict[str, Any]:
  """T5Config -> HF `config.json` dict for an untied MT5ForConditionalGeneration, or with per-layer
  tables a UMT5ForConditionalGeneration as Google's umT5 folders write it (float32 weights)."""
  hf = {hf: getattr(config, ours) for hf, ours in _HF_TO_OURS.items()}
  if config.relative_attention_per_layer:
    hf.update({"architectures": ["UMT5ForConditionalGeneration"], "model_type": "umt5",
               "scalable_attention": True, "classifier_dropout": 0.0})
  else:
    hf.update({"architectures": ["MT5ForConditionalGeneration"], "model_type": "mt5"})
  hf.update({
      "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "is_gated_act": True,
      "tie_word_embeddings": False, "is_encoder_decoder": True, "initializer_factor": 1.0,
      "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1, "use_cache": True,
      "tokenizer_class": "T5Tokenizer", "dtype": "float32",
  })
  return hf
