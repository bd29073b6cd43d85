"""Reading an HF folder of either family (mT5/mT0: `MT5ForConditionalGeneration`; BLOOM/BLOOMZ:
`BloomForCausalLM`), chosen by config.json's `model_type` (`hf/families.py`): config.json plus
`model.safetensors`, sharded safetensors, or `pytorch_model.bin` (+ index) (`hf/weights.py`). Every name
and shape is checked before any data is read, and every tensor in the folder is accounted for (the
family's `account_tensors`: read, a tied copy verified equal, or reported). Tensors are then converted
to float32 and placed on the mesh one at a time (for a scanned model, `scan_layers`, one stacked
tensor at a time: its layers are read and stacked).
"""
from __future__ import annotations

import json
import logging
from typing import Any, Mapping, Optional

import jax
import numpy as np

from xmtf_jax import paths
from xmtf_jax.errors import MissingPathError
from xmtf_jax.hf import families
from xmtf_jax.hf.mapping import tree_get, tree_set
from xmtf_jax.hf.weights import DictSource, open_weights  # noqa: F401  (open_weights: reader's API)
from xmtf_jax.model import family as model_family
from xmtf_jax.model import layer_stacking
from xmtf_jax.parallel import partitioning

log = logging.getLogger(__name__)


def account_tensors(source, config: Any, origin: str) -> tuple[list, dict[str, str]]:
  """Checks a folder's tensors against the config -> (plan, uses): the config's family's accounting
  (`hf/accounting.py` says what plan and uses hold; mT5: hf/mt5_tensors.py, BLOOM: hf/bloom_tensors.py)."""
  return families.for_config(config).account_tensors(source, config, origin)


def read_plan(source, config: Any, origin: str) -> list[tuple[tuple[str, ...], str, str, tuple[int, ...]]]:
  """Checks every tensor, name, shape and tied copy (`account_tensors`); returns [(our path, HF name to
  read, layout, our shape)]."""
  return account_tensors(source, config, origin)[0]


def read_hf_config(folder: str, **overrides) -> Any:
  """Our config (T5Config or BloomConfig, by config.json's `model_type`) of an HF folder."""
  path = paths.join(folder, "config.json")
  if not paths.isdir(folder):
    raise MissingPathError(f"{folder}: not a directory (expected an HF mT5/mT0 or BLOOM folder)")
  if not paths.exists(path):
    raise MissingPathError(f"{folder}: no config.json; an HF mT5/mT0 or BLOOM folder holds config.json "
                            "and model.safetensors (or pytorch_model.bin)")
  return families.config_from_hf(json.loads(paths.read_text(path)), origin=path, **overrides)


def load_hf_folder(folder: str, mesh: Optional[Any] = None, logical_axis_rules=None,
                   **config_overrides) -> tuple[Any, dict]:
  """Reads an HF folder (mT5/mT0 or BLOOM) -> (its config, float32 params), each tensor placed directly
  with its sharding on `mesh` (or on the default device). `config_overrides` e.g. dtype="bfloat16"."""
  config = read_hf_config(folder, **config_overrides)
  to_ours = families.for_config(config).to_ours
  source = open_weights(folder)
  plan = read_plan(source, config, origin=folder)
  shardings = None
  if mesh is not None:
    rules = logical_axis_rules or partitioning.logical_axis_rules()
    shardings = model_family.model_for(config, mesh, rules).param_shardings()
  params: dict = {}
  for path, reads in _placement_groups(plan, config):
    if layer_stacking.stacked_location(reads[0][0])[1] is None or not config.scan_layers:
      _, hf, layout, shape = reads[0]
      array = to_ours(layout, source.read(hf), shape)
    else:  # one stacked leaf [layers, ...] from its layers, in order
      array = np.stack([to_ours(layout, source.read(hf), shape) for _, hf, layout, shape in reads])
    if shardings is None:
      placed = jax.device_put(array)
    else:
      placed = jax.make_array_from_callback(array.shape, tree_get(shardings, path),
                                            lambda index, a=array: a[index])
    tree_set(params, path, placed)
    del array
  return config, params


def _placement_groups(plan, config: Any) -> list[tuple[tuple[str, ...], list]]:
  """[(our leaf path, the plan entries it is made of)]: one entry each, or for a scanned model the
  per-layer entries of each stacked leaf in layer order."""
  groups: dict = {}
  for entry in plan:
    path = layer_stacking.stacked_location(entry[0])[0] if config.scan_layers else entry[0]
    groups.setdefault(path, []).append(entry)
  for path, entries in groups.items():
    entries.sort(key=lambda e: layer_stacking.stacked_location(e[0])[1] or 0)
  return list(groups.items())


def params_from_hf(state_dict: Mapping[str, np.ndarray], config: Any) -> dict:
  """HF state dict (numpy arrays) -> our params (numpy float32), for either family's config. Checks
  names and shapes first."""
  source = DictSource(state_dict)
  plan = read_plan(source, config, origin="state dict")
  to_ours = families.for_config(config).to_ours
  params: dict = {}
  for path, hf, layout, shape in plan:
    tree_set(params, path, to_ours(layout, source.read(hf), shape))
  return layer_stacking.stack_layers(params, config) if config.scan_layers else params
