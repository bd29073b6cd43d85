"""The one mapping between our BLOOM parameters and HF `BloomForCausalLM` (names, layouts, config).

The counterpart of `mapping.py` (mT5), with the same API so the folder reader and the exporter treat
both families alike. Names: `parameter_mapping(config)` lists (our path, HF name, layout) for every
tensor; HF names carry the `transformer.` prefix that `save_pretrained` of a `BloomForCausalLM` writes
(the original bigscience checkpoints have none: `hf_name` adds it). The LM head is tied to
`word_embeddings` and not written (`lm_head.weight`, when a folder has it, must equal the embedding).
Layouts (H = hidden, nh heads of d; HF's fused QKV output axis is per head [nh, 3, d]):
  "same"      identical arrays (embedding [V, H], LayerNorm scale/bias, output biases)
  "dense"     HF Linear [out, in]      <->  ours [in, out] (the MLP)
  "qkv"       HF [3H, H]               <->  ours [H, nh, 3, d]
  "qkv_bias"  HF [3H]                  <->  ours [nh, 3, d]
  "attn_out"  HF [H, H] (in = nh*d)    <->  ours [nh, d, H]
All conversions are transposes/reshapes, so HF -> ours -> HF is bit-exact. Paths are per layer
(`layers_{i}`); a scanned model's stacked tree is read through `layer_stacking.layer_leaf`.
`bloom_config_from_hf` / `bloom_config_to_hf` convert config.json.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from xmtf_jax.errors import UserError
from xmtf_jax.hf.mapping import tree_get
from xmtf_jax.model import layer_stacking
from xmtf_jax.model.bloom_config import BloomConfig
from xmtf_jax.model.decoder_only import DecoderOnlyModel

log = logging.getLogger(__name__)

PREFIX = "transformer."
EMBEDDING = PREFIX + "word_embeddings.weight"
LM_HEAD = "lm_head.weight"  # tied to EMBEDDING; never written, accepted when equal to it
# Tensors transformers drops on load without a word: none for BLOOM (no `_keys_to_ignore_on_load_*`);
# kept for the same API as `mapping.IGNORED_HF_TENSORS`.
IGNORED_HF_TENSORS: tuple[str, ...] = ()


# ----------------------------------------------------------------------------------------------------
# Names and layouts.


def hf_name(name: str) -> str:
  """A state-dict name in the prefixed spelling (`h.0.mlp...` -> `transformer.h.0.mlp...`)."""
  return name if name.startswith(PREFIX) or name == LM_HEAD else PREFIX + name


def parameter_mapping(config: BloomConfig) -> list[tuple[tuple[str, ...], str, str]]:
  """[(our param path, HF state-dict name, layout)] for every parameter, in HF order (no lm_head)."""
  entries = [(("word_embeddings", "embedding"), EMBEDDING, "same")]

  def layer_norm(ours: tuple[str, ...], hf: str):
    entries.append((ours + ("scale",), f"{hf}.weight", "same"))
    entries.append((ours + ("bias",), f"{hf}.bias", "same"))

  layer_norm(("word_embeddings_layernorm",), PREFIX + "word_embeddings_layernorm")
  for i in range(config.n_layer):
    ours, hf = ("decoder", f"layers_{i}"), f"{PREFIX}h.{i}"
    layer_norm(ours + ("input_layernorm",), f"{hf}.input_layernorm")
    attention, hf_attention = ours + ("self_attention",), f"{hf}.self_attention"
    qkv, hf_qkv = attention + ("query_key_value",), f"{hf_attention}.query_key_value"
    entries.append((qkv + ("kernel",), f"{hf_qkv}.weight", "qkv"))
    entries.append((qkv + ("bias",), f"{hf_qkv}.bias", "qkv_bias"))
    entries.append((attention + ("dense", "kernel"), f"{hf_attention}.dense.weight", "attn_out"))
    entries.append((attention + ("dense", "bias"), f"{hf_attention}.dense.bias", "same"))
    layer_norm(ours + ("post_attention_layernorm",), f"{hf}.post_attention_layernorm")
    for name in ("dense_h_to_4h", "dense_4h_to_h"):
      entries.append((ours + ("mlp", name, "kernel"), f"{hf}.mlp.{name}.weight", "dense"))
      entries.append((ours + ("mlp", name, "bias"), f"{hf}.mlp.{name}.bias", "same"))
  layer_norm(("decoder", "ln_f"), PREFIX + "ln_f")
  return entries


def to_ours(layout: str, hf_array: np.ndarray, our_shape: tuple[int, ...]) -> np.ndarray:
  if layout == "same":
    return hf_array
  if layout == "qkv_bias":
    return np.asarray(hf_array).reshape(our_shape)
  # "dense", "qkv", "attn_out": [out, in] -> [in, out], then the in/out axes split as ours.
  return np.ascontiguousarray(np.asarray(hf_array).T).reshape(our_shape)


def to_hf(layout: str, our_array: np.ndarray) -> np.ndarray:
  a = np.asarray(our_array)
  if layout == "same":
    return a
  if layout == "qkv_bias":  # [nh, 3, d] -> [3H]
    return a.reshape(-1)
  if layout == "qkv":  # [H, nh, 3, d] -> [3H, H]
    return np.ascontiguousarray(a.reshape(a.shape[0], -1).T)
  if layout == "attn_out":  # [nh, d, H] -> [H, nh*d]
    return np.ascontiguousarray(a.reshape(-1, a.shape[-1]).T)
  return np.ascontiguousarray(a.T)


def hf_shape(layout: str, our_shape: tuple[int, ...]) -> tuple[int, ...]:
  if layout == "same":
    return tuple(our_shape)
  if layout == "qkv_bias":
    return (int(np.prod(our_shape)),)
  if layout == "qkv":
    return (int(np.prod(our_shape[1:])), our_shape[0])
  if layout == "attn_out":
    return (our_shape[-1], int(np.prod(our_shape[:-1])))
  return tuple(reversed(our_shape))


def our_shapes(config: BloomConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Per-layer shape of every mapped parameter (whatever config.scan_layers says)."""
  shapes = DecoderOnlyModel(config.replace(scan_layers=False)).abstract_params()
  return {path: tuple(tree_get(shapes, path).shape) for path, _, _ in parameter_mapping(config)}


def params_to_hf(params: Mapping, config: BloomConfig) -> dict[str, np.ndarray]:
  """Our params (either layer layout) -> HF state dict {prefixed name: float32 numpy array}, without
  lm_head.weight (tied)."""
  return {hf: to_hf(layout, np.asarray(layer_stacking.layer_leaf(params, path), np.float32))
          for path, hf, layout in parameter_mapping(config)}


# ----------------------------------------------------------------------------------------------------
# Configs.

# HF field (and its older spellings) -> ours.
_HF_TO_OURS = {
    "vocab_size": ("vocab_size", ()),
    "hidden_size": ("hidden_size", ("n_embed",)),
    "n_layer": ("n_layer", ("num_hidden_layers",)),
    "n_head": ("n_head", ("num_attention_heads",)),
    "layer_norm_epsilon": ("layer_norm_epsilon", ()),
    "initializer_range": ("initializer_range", ()),
    "hidden_dropout": ("dropout_rate", ()),
    "attention_dropout": ("attention_dropout_rate", ()),
}


def bloom_config_from_hf(hf_config: Mapping[str, Any], origin: str = "config.json",
                         **overrides) -> BloomConfig:
  """HF config dict -> BloomConfig; accepts the old spellings n_embed, num_attention_heads and
  num_hidden_layers. `overrides` (e.g. dtype="bfloat16", dropout_rate=0.1) win."""
  model_type = hf_config.get("model_type", "bloom")
  if model_type != "bloom":
    raise UserError(f"{origin}: model_type {model_type!r} is not a BLOOM model")
  if hf_config.get("apply_residual_connection_post_layernorm"):
    raise UserError(f"{origin}: apply_residual_connection_post_layernorm=true is not implemented "
                    "(every BLOOM checkpoint has false)")
  values = {}
  for hf, (ours, aliases) in _HF_TO_OURS.items():
    for name in (hf, *aliases):
      if hf_config.get(name) is not None:
        values[ours] = hf_config[name]
        break
  missing = [hf for hf in ("vocab_size", "hidden_size", "n_layer", "n_head")
             if _HF_TO_OURS[hf][0] not in values]
  if missing:
    raise UserError(f"{origin}: missing fields {missing}")
  if values["hidden_size"] % values["n_head"]:
    raise UserError(f"{origin}: hidden_size {values['hidden_size']} is not a multiple of n_head "
                    f"{values['n_head']}")
  if hf_config.get("slow_but_exact"):
    log.info("%s: slow_but_exact=true only changes rounding (Megatron's tensor-parallel sums); ignored",
             origin)
  values.update(overrides)
  return BloomConfig(**values)


def bloom_config_to_hf(config: BloomConfig) -> dict[str, Any]:
  """BloomConfig -> HF `config.json` dict for a BloomForCausalLM (tied head, float32 weights, no dropout)."""
  return {
      "architectures": ["BloomForCausalLM"], "model_type": "bloom",
      "vocab_size": config.vocab_size, "hidden_size": config.hidden_size, "n_layer": config.n_layer,
      "n_head": config.n_head, "layer_norm_epsilon": config.layer_norm_epsilon,
      "initializer_range": config.initializer_range,
      "hidden_dropout": 0.0, "attention_dropout": 0.0,
      "apply_residual_connection_post_layernorm": False, "slow_but_exact": False, "pretraining_tp": 1,
      "tie_word_embeddings": True, "use_cache": True,
      "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3, "unk_token_id": 0,
      "dtype": "float32",
  }
