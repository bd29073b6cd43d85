"""Pretrained weights from any model path: an HF folder (mT5/mT0 or BLOOM/BLOOMZ), one of our training
checkpoints (either model family) or a t5x checkpoint (mT5 family). The family comes from config.json's
`model_type` or from the checkpoint's metadata; `model.family.model_for` builds the matching model.

    model, params = load_pretrained(path, mesh)        # also `xmtf_jax.load_pretrained`

What the path holds is decided once, by `checkpoint.open_model_path` (one listing, one precedence);
this module reads each kind with its reader: HF folders with `hf/reader.py`, our checkpoints with
`checkpoint/xmtf_format.py`, t5x checkpoints with `checkpoint/t5x_names.py`, Mesh TensorFlow
checkpoints with `checkpoint/mesh_tf_format.py` (which imports TensorFlow only when it reads one).
Training starts from these (INITIAL_CHECKPOINT_PATH); evaluation and inference read them. Imports
neither seqio nor TensorFlow (the vocabulary: `train/vocabulary.py`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Union

from xmtf_jax.checkpoint import mesh_tf_format, t5x_names, xmtf_format
from xmtf_jax.checkpoint.model_path import HF_FOLDER, MESH_TF, T5X, ModelPath, open_model_path
from xmtf_jax.hf import reader as hf_reader
from xmtf_jax.model import family
from xmtf_jax.parallel import partitioning

PathLike = Union[str, ModelPath]


def read_config(path: PathLike, **config_overrides) -> family.ModelConfig:
  """The config (T5Config or BloomConfig) of a model path, without reading any weights."""
  path = open_model_path(path)
  if path.kind == HF_FOLDER:
    return hf_reader.read_hf_config(path.path, **config_overrides)
  if path.kind == T5X:
    return t5x_names.read_config(path.t5x(), **config_overrides)
  if path.kind == MESH_TF:
    return dataclasses.replace(mesh_tf_format.MeshTFReader(path.step_dir, path.names).config,
                               **config_overrides)
  return xmtf_format.config_from_metadata(path.metadata, **config_overrides)


def load_params(path: PathLike, mesh: Optional[Any] = None, logical_axis_rules=None,
                **config_overrides) -> tuple[family.ModelConfig, Any]:
  """(config, float32 params) of a model path, each array placed with its sharding on `mesh` (or
  on the default device), in the layer layout of the config (after `config_overrides`)."""
  path = open_model_path(path)
  if path.kind == HF_FOLDER:
    return hf_reader.load_hf_folder(path.path, mesh, logical_axis_rules, **config_overrides)
  if path.kind == T5X:
    return t5x_names.load_params(path.t5x(), mesh, logical_axis_rules, **config_overrides)
  if path.kind == MESH_TF:
    return mesh_tf_format.MeshTFReader(path.step_dir, path.names).load_params(mesh, logical_axis_rules,
                                                                              **config_overrides)
  return xmtf_format.load_model_params(path.step_dir, mesh, logical_axis_rules, metadata=path.metadata,
                                       **config_overrides)


def load_pretrained(path: PathLike, mesh: Optional[Any] = None, *, logical_axis_rules=None,
                    **config_overrides) -> tuple[Any, Any]:
  """Loads a model and its float32 parameters -> (EncoderDecoderModel or DecoderOnlyModel, params).

  path: an HF mT5/mT0 or BLOOM folder (config.json + safetensors or pytorch_model.bin), or one of our
    training checkpoints: a MODEL_DIR (its latest checkpoint) or a MODEL_DIR/checkpoint_<step>
    directory (the config and its family come from the checkpoint's metadata; no gin needed); a t5x
    checkpoint (model dir, checkpoint_<step> or its `checkpoint` file; legacy or Orbax, scanned or
    not: `checkpoint/t5x_names.py`); a Mesh TensorFlow checkpoint (folder or model.ckpt-<step>
    prefix); an HF Hub id (`google/mt5-small`, through the HF cache); or a `ModelPath` already opened.
  mesh: a `jax.sharding.Mesh` with axes (data, model) (see `partitioning.make_mesh`); parameters are
    placed on it directly with the shardings of `logical_axis_rules` (default rules if None).
  config_overrides: config fields to change, e.g. dtype="bfloat16", dropout_rate=0.0.
  """
  rules = logical_axis_rules or partitioning.logical_axis_rules()
  config, params = load_params(path, mesh, rules, **config_overrides)
  return family.model_for(config, mesh, rules), params


def inputs_end_with_eos(path: Optional[PathLike]) -> bool:
  """Whether the model was trained on inputs ending in EOS (`ModelPath.inputs_end_with_eos`; False
  without a path). Inference and evaluation default to this, so they see inputs as training did."""
  return bool(path) and open_model_path(path).inputs_end_with_eos
