"""The HF side of each model family, chosen once: everything that reads or writes an HF folder asks
`for_hf_config(config.json)` or `for_config(our config)` for an `HFFamily` and then only uses its fields.

  mt5     MT5ForConditionalGeneration (model_type mt5 / t5): hf/mapping.py, hf/mt5_tensors.py, a
          SentencePiece vocabulary (hf/tokenizer.py), hf/verify.py
  umt5    UMT5ForConditionalGeneration (model_type umt5): our mT5 family with
          `T5Config.relative_attention_per_layer`; the same modules (the mapping adds every block's table)
  bloom   BloomForCausalLM (model_type bloom): hf/bloom_mapping.py, hf/bloom_tensors.py, a byte-level
          BPE tokenizer.json (hf/bloom_export.py), hf/bloom_verify.py

Adding an HF architecture is one more `HFFamily` here (and its family in `model/family.py`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

from xmtf_jax.errors import UserError
from xmtf_jax.hf import bloom_export, bloom_mapping, bloom_tensors, bloom_verify, mapping, model_card
from xmtf_jax.hf import mt5_tensors
from xmtf_jax.hf import tokenizer as hf_tokenizer
from xmtf_jax.hf import verify as mt5_verify
from xmtf_jax.model import family as model_family
from xmtf_jax.model.bloom_config import BloomConfig
from xmtf_jax.model.config import T5Config


@dataclasses.dataclass(frozen=True)
class HFFamily:
  """One HF architecture and how our family maps to it.

  Reading: `config_from_hf(hf_dict, origin, **overrides)`, `parameter_mapping(config)` -> [(our path,
  HF name, layout)], `to_ours(layout, hf_array, our_shape)`, `account_tensors(source, config, origin)`
  (hf/accounting.py). Writing: `to_hf(layout, our_array)`, `hf_shape(layout, our_shape)`,
  `export_config(config, dtype)` (config.json), `generation_config`, `tokenizer_files(vocabulary_path,
  config, add_eos)` (checked before anything is written), `render_card(...)` (README.md) and
  `verify(folder, model, params, ...)` (the folder in transformers against ours).
  """
  name: str                                  # model/family.py's family name
  model_types: tuple[str, ...]               # config.json `model_type` values of this family
  architecture: str                          # the transformers class an export loads as
  label: str                                 # for messages: "mT5", "BLOOM"
  vocabulary: str                            # what a run's vocabulary_path is, for messages
  vocabulary_example: str                    # a --vocabulary_path value, for messages
  config_from_hf: Callable[..., Any]
  export_config: Callable[[Any, str], dict]
  parameter_mapping: Callable[[Any], list]
  to_ours: Callable
  to_hf: Callable
  hf_shape: Callable
  account_tensors: Callable
  generation_config: Mapping[str, int]
  tokenizer_files: Callable
  render_card: Callable[..., str]
  verify: Callable
  folder_vocabulary: str                     # the vocabulary file an HF folder of this family holds


def _mt5_config_from_hf(hf_config: Mapping[str, Any], origin: str, **overrides) -> T5Config:
  return mapping.t5config_from_hf(hf_config, origin=origin, **overrides)


def _mt5_export_config(config: T5Config, dtype: str) -> dict:
  """`mapping.t5config_to_hf` with the weights' dtype. The tokenizer class is left to
  tokenizer_config.json (it depends on the SentencePiece model; see hf_tokenizer)."""
  values = {**mapping.t5config_to_hf(config), "dtype": dtype}
  values.pop("tokenizer_class", None)
  return values


def _bloom_config_from_hf(hf_config: Mapping[str, Any], origin: str, **overrides) -> BloomConfig:
  return bloom_mapping.bloom_config_from_hf(hf_config, origin=origin, **overrides)


def _bloom_export_config(config: BloomConfig, dtype: str) -> dict:
  return {**bloom_mapping.bloom_config_to_hf(config), "dtype": dtype}


MT5 = HFFamily(
    name=T5Config.family, model_types=("mt5", "t5"), architecture="MT5ForConditionalGeneration",
    label="mT5", vocabulary="SentencePiece model",
    vocabulary_example="/path/to/sentencepiece.model",
    folder_vocabulary="spiece.model",
    config_from_hf=_mt5_config_from_hf, export_config=_mt5_export_config,
    parameter_mapping=mapping.parameter_mapping, to_ours=mapping.to_ours, to_hf=mapping.to_hf,
    hf_shape=mapping.hf_shape, account_tensors=mt5_tensors.account_tensors,
    generation_config={"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0},
    tokenizer_files=hf_tokenizer.sentencepiece_folder_files, render_card=model_card.render,
    verify=mt5_verify.verify)

# umT5 is the mT5 family with a relative position table in every layer; only the HF class differs.
UMT5 = dataclasses.replace(
    MT5, model_types=("umt5",), architecture="UMT5ForConditionalGeneration", label="umT5",
    verify=functools.partial(mt5_verify.verify, architecture="UMT5ForConditionalGeneration"))

BLOOM = HFFamily(
    name=BloomConfig.family, model_types=("bloom",), architecture="BloomForCausalLM",
    label="BLOOM", vocabulary="tokenizer.json",
    vocabulary_example="/path/to/tokenizer.json (or an HF folder holding one)",
    folder_vocabulary="tokenizer.json",
    config_from_hf=_bloom_config_from_hf, export_config=_bloom_export_config,
    parameter_mapping=bloom_mapping.parameter_mapping, to_ours=bloom_mapping.to_ours,
    to_hf=bloom_mapping.to_hf, hf_shape=bloom_mapping.hf_shape,
    account_tensors=bloom_tensors.account_tensors,
    generation_config=bloom_export.GENERATION_CONFIG, tokenizer_files=bloom_export.tokenizer_files,
    render_card=bloom_export.render_card, verify=bloom_verify.verify)

HF_FAMILIES = (MT5, UMT5, BLOOM)
FAMILIES = {f.name: f for f in (MT5, BLOOM)}  # by model/family.py's name; umT5 is an mT5 variant


def for_config(config: Any) -> HFFamily:
  """The HF family of one of our configs (T5Config, BloomConfig): umT5 for per-layer tables."""
  if getattr(config, "relative_attention_per_layer", False):
    return UMT5
  return FAMILIES[model_family.family_of(config)]


def for_hf_config(hf_config: Mapping[str, Any], origin: str = "config.json") -> HFFamily:
  """The family a folder's config.json belongs to, by its `model_type` (none: mT5, as older T5 folders)."""
  model_type = hf_config.get("model_type", "mt5")
  for hf_family in HF_FAMILIES:
    if model_type in hf_family.model_types:
      return hf_family
  known = "; ".join(f"{'/'.join(f.model_types)} ({f.architecture})" for f in HF_FAMILIES)
  raise UserError(f"{origin}: model_type {model_type!r} is not a model xmtf_jax reads (known model_type "
                  f"values: {known}); the field `model_type` of config.json names the architecture")


def config_from_hf(hf_config: Mapping[str, Any], origin: str = "config.json", **overrides) -> Any:
  """Our config (T5Config or BloomConfig) of an HF config.json dict."""
  return for_hf_config(hf_config, origin).config_from_hf(hf_config, origin, **overrides)

