"""The model-family seam: one task-level model interface, one place that picks the implementation.

A model family is a config class (`T5Config`, `BloomConfig`, each with a `family` name) and a task-level
model class built from it. Everything above `model/` (the train step, losses, scoring, decoding,
checkpoints, `plan`, `param_count`, export) calls `model_for(config, ...)` and then only the shared
interface:

  config, mesh, logical_axis_rules, is_encoder_decoder
  with_mesh(mesh, rules), partitioning_context()
  abstract_params(), param_logical_axes(), param_shardings(mesh), init_params(rng), shard_batch(batch)
  model_inputs(batch)                  the network's inputs among a batch's features
  forward(params, **model_inputs(batch), enable_dropout=, dropout_rng=)   float32 logits of the
                                       `decoder_target_tokens` positions [batch, length, vocab]
  input_token_count(batch)             real tokens that are context, not targets (a metric)

Batches use seqio's feature names for both: `decoder_input_tokens`, `decoder_target_tokens`,
`decoder_loss_weights`, `decoder_segment_ids`, `decoder_positions` (+ `encoder_*` for encoder-decoder),
so losses and their normalisation are one implementation. Decoding and rank classification use each
class's own cache and scoring methods through `xmtf_jax.inference` and `xmtf_jax.model.scoring`.

Adding a family: a config class with `family`, a model class with the interface above, an entry in
`FAMILIES`, and its HF mapping under `xmtf_jax/hf/`.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Mapping, Optional

from xmtf_jax.data import decoder_only as decoder_only_layout
from xmtf_jax.errors import UserError
from xmtf_jax.model.bloom_config import BloomConfig
from xmtf_jax.model.config import T5Config

# family name -> (config class, "module:ModelClass"); the model modules are imported on first use.
FAMILIES: Mapping[str, tuple[type, str]] = {
    T5Config.family: (T5Config, "xmtf_jax.model.encoder_decoder:EncoderDecoderModel"),
    BloomConfig.family: (BloomConfig, "xmtf_jax.model.decoder_only:DecoderOnlyModel"),
}

ModelConfig = Any  # T5Config | BloomConfig


def family_of(config: ModelConfig) -> str:
  """The family name of a config object ('mt5', 'bloom')."""
  family = getattr(type(config), "family", None)
  if family not in FAMILIES:
    raise TypeError(f"{type(config).__name__} is no model family's config (known: {sorted(FAMILIES)})")
  return family


def model_class(config: ModelConfig) -> type:
  module_name, class_name = FAMILIES[family_of(config)][1].split(":")
  return getattr(importlib.import_module(module_name), class_name)


def model_for(config: ModelConfig, mesh: Optional[Any] = None, logical_axis_rules=None) -> Any:
  """The task-level model of `config`'s family (EncoderDecoderModel or DecoderOnlyModel)."""
  return model_class(config)(config, mesh, logical_axis_rules)


def is_decoder_only(config: ModelConfig) -> bool:
  return family_of(config) != T5Config.family


def feature_layout(config: ModelConfig) -> str:
  """The batch layout the family trains on (`SourceConfig.feature_layout`): 'encoder_decoder' (mT5:
  inputs to the encoder, targets shifted right) or 'decoder_only' (BLOOM: inputs ++ " " targets ++ EOS
  in one row, loss on the targets)."""
  return (decoder_only_layout.DECODER_ONLY if is_decoder_only(config)
          else decoder_only_layout.ENCODER_DECODER)


def config_to_dict(config: ModelConfig) -> dict:
  """The config's fields plus its `family`, as checkpoints record them."""
  return {"family": family_of(config), **dataclasses.asdict(config)}


def config_from_dict(fields: Mapping[str, Any], **overrides) -> ModelConfig:
  """The config a dict from `config_to_dict` describes; without `family` it is mT5 (checkpoints written
  before BLOOM existed). Unknown fields (from other versions) are ignored."""
  family = fields.get("family", T5Config.family)
  if family not in FAMILIES:
    raise UserError(f"model family {family!r} is not known to this version of xmtf_jax (known: "
                    f"{', '.join(sorted(FAMILIES))}): upgrade xmtf_jax to read this checkpoint")
  config_cls = FAMILIES[family][0]
  known = {f.name for f in dataclasses.fields(config_cls)}
  return config_cls(**{**{k: v for k, v in fields.items() if k in known}, **overrides})
