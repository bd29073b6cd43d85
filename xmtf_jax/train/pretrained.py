"""Pretrained weights from wherever they are: an HF mT5/mT0 folder or one of our training checkpoints.

    model, params = load_pretrained(path, mesh)        # also `xmtf_jax.load_pretrained`
    vocabulary = load_vocabulary(path)                 # the SentencePiece model that goes with it

Training starts from these (INITIAL_CHECKPOINT_PATH); evaluation, inference and export read them.
"""
from __future__ import annotations

from typing import Any, Optional

import seqio

from xmtf_jax import paths
from xmtf_jax.data import tasks
from xmtf_jax.hf import reader as hf_reader
from xmtf_jax.model.encoder_decoder import EncoderDecoderModel
from xmtf_jax.parallel import partitioning
from xmtf_jax.train import checkpoints


def is_hf_folder(path: str) -> bool:
  return paths.exists(paths.join(path, "config.json"))


def load_pretrained(path: str, mesh: Optional[Any] = None, *, logical_axis_rules=None,
                    **config_overrides) -> tuple[EncoderDecoderModel, Any]:
  """Loads a model and its float32 parameters -> (EncoderDecoderModel, params).

  path: an HF mT5/mT0 folder (config.json + safetensors or pytorch_model.bin), or one of our training
    checkpoints: a MODEL_DIR (its latest checkpoint) or a MODEL_DIR/checkpoint_<step> directory (the
    T5Config comes from the checkpoint's metadata; no gin needed).
  mesh: a `jax.sharding.Mesh` with axes (data, model) (see `partitioning.make_mesh`); parameters are
    placed on it directly with the shardings of `logical_axis_rules` (default rules if None).
  config_overrides: T5Config fields to change, e.g. dtype="bfloat16", dropout_rate=0.0.
  """
  if paths.looks_like_hub_id(path):
    raise FileNotFoundError(paths.hub_id_message(path))
  path = paths.abspath(path)
  rules = logical_axis_rules or partitioning.logical_axis_rules()
  if is_hf_folder(path) or not paths.isdir(path):
    config, params = hf_reader.load_hf_folder(path, mesh, rules, **config_overrides)
  elif checkpoints.is_checkpoint(path):
    config, params = checkpoints.load_model_params(path, mesh, rules, **config_overrides)
  else:
    raise FileNotFoundError(
        f"{path}: not a model folder (no config.json: expected an HF mT5/mT0 folder) and no "
        "xmtf_jax checkpoint (checkpoint_<step>/ with params/ and metadata/)")
  return EncoderDecoderModel(config, mesh, rules), params


def load_vocabulary(model_path: Optional[str], vocabulary_path: Optional[str] = None
                    ) -> seqio.SentencePieceVocabulary:
  """The SentencePiece vocabulary: `vocabulary_path` if given; else `spiece.model` in an HF folder
  (as HF folders and our exports hold it); else the one a training checkpoint recorded."""
  candidates = [vocabulary_path] if vocabulary_path else []
  if model_path:
    model_path = paths.abspath(model_path)
    candidates += [paths.join(model_path, name) for name in ("spiece.model", "sentencepiece.model")]
    if paths.isdir(model_path) and checkpoints.is_checkpoint(model_path):
      candidates.append(checkpoints.read_metadata(model_path).get("vocabulary_path"))
  for candidate in candidates:
    if candidate and paths.exists(candidate):
      return tasks.vocabulary(paths.abspath(candidate))
  raise FileNotFoundError(f"no SentencePiece model: looked for {[c for c in candidates if c]}; set "
                          "vocabulary_path (e.g. --gin.evaluate.vocabulary_path=\"'/path/spiece.model'\")")


def inputs_end_with_eos(model_path: Optional[str]) -> bool:
  """Whether the model was trained on inputs ending in EOS: what a training checkpoint recorded
  (its task's `inputs` feature), else False (HF folders; mT0 and the paper's evaluation feed inputs
  without EOS). Inference and evaluation default to this, so they see inputs as training did."""
  if model_path and checkpoints.is_checkpoint(model_path):
    return bool(checkpoints.read_metadata(model_path).get("add_eos_to_inputs", False))
  return False
