"""Where exported parameters come from, one tensor at a time.

A `ParamSource` has a `config` (T5Config or BloomConfig) and `read(path)`: one parameter, float32, in
our layout, as a host numpy array on every process. Sources:

  InMemoryParams     a loaded params tree (numpy or jax arrays, sharded over a mesh, even multi-host:
                     a tensor spanning hosts is all-gathered, so every process must read in step)
  HFFolderParams     an HF folder of either family (re-export: another dtype or sharding), memory-mapped
  T5xParams          a t5x checkpoint, one tensor (or one layer of a scanned array) at a time
  CheckpointParams   one step of our training, each tensor restored alone by an orbax partial restore
                     straight into host memory (an XXL checkpoint exports on a host that could not
                     hold the model); read with `checkpoint/xmtf_format.py`
  MeshTFParams       a Mesh TensorFlow checkpoint (the original mT5 release), one variable at a time
                     (`checkpoint/mesh_tf_format.py`)

plus the facts a model card needs (`card_facts`) and the way to get the whole model for verification
(`load_for_verify`). `open_source(path, step)` opens any model path (`checkpoint.open_model_path`).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Union

import jax
import numpy as np

from xmtf_jax import paths
from xmtf_jax.checkpoint import mesh_tf_format, t5x_names, xmtf_format
from xmtf_jax.checkpoint.model_path import HF_FOLDER, MESH_TF, T5X, ModelPath, open_model_path
from xmtf_jax.errors import UserError
from xmtf_jax.hf import accounting, families
from xmtf_jax.hf import reader as hf_reader
from xmtf_jax.hf import tokenizer as hf_tokenizer
from xmtf_jax.model import family as model_family
from xmtf_jax.model import layer_stacking
from xmtf_jax.parallel.partitioning import fetch_global

Path = tuple[str, ...]


def expected_shapes(config: Any) -> dict[Path, tuple[int, ...]]:
  """Our per-layer shape of every exported parameter of either family (abstract: nothing is
  allocated). Paths are per layer in either layout; sources of a scanned model read index i of the
  stacked leaf."""
  return accounting.our_shapes(config, families.for_config(config).parameter_mapping)


class ParamSource:
  """Parameters to export. Subclasses set `config` and read one tensor at a time."""

  config: Any  # T5Config | BloomConfig
  # True when `read` is a collective (arrays spanning processes): then every process must read every
  # tensor in step with process 0. Otherwise only process 0 reads.
  collective_reads: bool = False
  # Whether the model was trained on inputs ending in EOS: the exported tokenizer then appends it, and
  # only then (hf/tokenizer.py), so `tokenizer(text)` gives the ids training and `xmtf_jax.infer` use.
  inputs_end_with_eos: bool = False

  def read(self, path: Path) -> np.ndarray:
    raise NotImplementedError

  def check(self) -> None:
    """Raises a clear error, before anything is written, if the source cannot be exported."""

  def load_for_verify(self) -> tuple[Any, Any]:
    """(the task-level model, float32 params) in memory, for the comparison with transformers."""
    raise NotImplementedError

  def card_facts(self) -> dict:
    """Model-card fields the source knows (base_model, mixture, steps)."""
    return {}

  def describe(self) -> str:
    return type(self).__name__


def _check_shapes(found: Mapping[Path, Optional[tuple]], config: Any, origin: str) -> None:
  problems = []
  for path, want in expected_shapes(config).items():
    got = found.get(path)
    if got is None:
      problems.append(f"missing {'/'.join(path)}")
    elif tuple(got) != want:
      problems.append(f"{'/'.join(path)} has shape {list(got)}, the config says {list(want)}")
  if problems:
    layers = (f"{config.num_encoder_layers}/{config.num_decoder_layers}" if config.num_encoder_layers
              else f"{config.num_decoder_layers}")
    raise UserError(f"{origin} does not match its {families.for_config(config).label} config (d_model "
                     f"{config.d_model}, {layers} layers, vocab {config.vocab_size}):\n  "
                     + "\n  ".join(problems[:20]))


class InMemoryParams(ParamSource):
  """A params tree that is already loaded; `model` (optional) is used for verification."""

  def __init__(self, config: Any, params: Mapping, model: Any = None,
               inputs_end_with_eos: bool = False):
    self.config, self.params, self.model = config, params, model
    self.inputs_end_with_eos = inputs_end_with_eos
    self.collective_reads = any(isinstance(x, jax.Array) and not x.is_fully_addressable
                                for x in jax.tree.leaves(params))

  def check(self) -> None:
    found = {}
    for path in expected_shapes(self.config):
      try:
        found[path] = tuple(np.shape(layer_stacking.layer_leaf(self.params, path)))
      except (KeyError, TypeError):
        pass
    _check_shapes(found, self.config, "params")

  def read(self, path):
    return fetch_global(layer_stacking.layer_leaf(self.params, path))

  def load_for_verify(self):
    return (self.model or model_family.model_for(self.config)), self.params

  def describe(self):
    return "parameters in memory"


class HFFolderParams(ParamSource):
  """An HF folder (mT5/mT0 or BLOOM) read lazily tensor by tensor (to re-shard it or change its dtype).
  Its vocabulary is the family's file in the folder; its tokenizer's EOS behaviour is kept
  (`hf_tokenizer.folder_appends_eos`)."""

  def __init__(self, folder: Union[str, ModelPath]):
    opened = open_model_path(folder)
    self.folder = opened.path
    self.config = hf_reader.read_hf_config(self.folder)
    self._family = families.for_config(self.config)
    # The folder reader's own plan: checks every name and shape now, reads one memory-mapped tensor per call.
    self._weights = hf_reader.open_weights(self.folder)
    self._plan = {path: (name, layout, shape) for path, name, layout, shape
                  in hf_reader.read_plan(self._weights, self.config, self.folder)}
    vocabulary = self._family.folder_vocabulary
    self.vocabulary_path = paths.join(self.folder, vocabulary) if vocabulary in opened.names else None
    self.inputs_end_with_eos = hf_tokenizer.folder_appends_eos(
        {name: paths.read_text(paths.join(self.folder, name))
         for name in ("tokenizer_config.json", "tokenizer.json") if name in opened.names})

  def read(self, path):
    name, layout, shape = self._plan[path]
    return self._family.to_ours(layout, self._weights.read(name), shape)

  def load_for_verify(self):
    config, params = hf_reader.load_hf_folder(self.folder, dropout_rate=0.0)
    return model_family.model_for(config), params

  def describe(self):
    return f"HF folder {self.folder}"


class CheckpointParams(ParamSource):
  """One step of our training run, restored tensor by tensor.

  path: a MODEL_DIR (step None: its latest step), a checkpoint_<step> directory, or an opened ModelPath.
  """

  def __init__(self, path: Union[str, ModelPath], step: Optional[int] = None):
    opened = open_model_path(path, step)
    self._reader = opened.reader()  # a ValueError for other kinds
    self.step_dir, self.metadata = opened.step_dir, opened.metadata
    self.config = self._reader.config
    self.vocabulary_path = self.metadata.get("vocabulary_path")
    self.inputs_end_with_eos = opened.inputs_end_with_eos  # recorded by training (add_eos_to_inputs)

  def check(self) -> None:
    tree = self._reader.params_tree_metadata()
    found = {}
    for path in expected_shapes(self.config):
      try:
        found[path] = tuple(layer_stacking.layer_leaf(tree, path).shape)
      except (KeyError, TypeError, AttributeError):
        pass
    _check_shapes(found, self.config, paths.join(self.step_dir, "params"))

  def read(self, path):
    return self._reader.read(path)

  def load_for_verify(self):
    config, params = xmtf_format.load_model_params(self.step_dir, metadata=self.metadata,
                                                   dropout_rate=0.0)
    return model_family.model_for(config), params

  def card_facts(self) -> dict:
    # Checkpoints written before initial_checkpoint_path was recorded: from their gin config.
    return {"base_model": xmtf_format.recorded(self.metadata, "initial_checkpoint_path",
                                               "TrainConfig.initial_checkpoint_path",
                                               "INITIAL_CHECKPOINT_PATH"),
            "mixture": xmtf_format.recorded(self.metadata, "mixture_or_task_name",
                                            "TrainConfig.mixture_or_task_name", "MIXTURE_OR_TASK_NAME"),
            "steps": self.metadata.get("step")}

  def describe(self):
    return f"checkpoint {self.step_dir}"


class MeshTFParams(ParamSource):
  """A Mesh TensorFlow checkpoint, each variable read alone (TensorFlow's checkpoint reader); its
  vocabulary is a SentencePiece model beside it or the one its operative_config.gin names."""

  def __init__(self, path: Union[str, ModelPath], step: Optional[int] = None):
    opened = open_model_path(path, step)
    self._reader = mesh_tf_format.MeshTFReader(opened.step_dir, opened.names)
    self.prefix = opened.step_dir
    self.config = self._reader.config
    self.vocabulary_path = self._reader.vocabulary_path

  def check(self) -> None:
    _check_shapes({path: self._reader.our_shape(path) for path in self._reader.plan}, self.config,
                  self.prefix)  # every variable named and placed, or a UserError

  def read(self, path):
    return self._reader.read(path)

  def load_for_verify(self):
    config, params = self._reader.load_params(dropout_rate=0.0)
    return model_family.model_for(config), params

  def describe(self):
    return f"Mesh TensorFlow checkpoint {self.prefix}"


class T5xParams(ParamSource):
  """A t5x checkpoint (legacy or Orbax, scanned or not), one tensor (one layer's slice) at a time
  (`checkpoint/t5x_names.py`); every name and shape is checked when it is opened."""

  def __init__(self, path: Union[str, ModelPath], step: Optional[int] = None):
    opened = open_model_path(path, step)
    self._ckpt = opened.t5x()
    layout = t5x_names.T5xLayout(self._ckpt)
    self.config = layout.config()
    self._plan = t5x_names.read_plan(layout, self.config)
    self.step = opened.step

  def read(self, path):
    return t5x_names.read_param(self._plan, path)

  def load_for_verify(self):
    config, params = t5x_names.load_params(self._ckpt, dropout_rate=0.0)
    return model_family.model_for(config), params

  def card_facts(self) -> dict:
    return {"steps": self.step}

  def describe(self):
    return self._ckpt.describe()


def open_source(path: Union[str, ModelPath], step: Optional[int] = None) -> ParamSource:
  """The export source of any model path: an HF folder, one of our checkpoints (MODEL_DIR: `step`,
  default its latest; or a checkpoint_<step> directory), a t5x or a Mesh TensorFlow checkpoint."""
  opened = open_model_path(path, step)
  sources = {HF_FOLDER: HFFolderParams, T5X: T5xParams, MESH_TF: MeshTFParams}
  return sources.get(opened.kind, CheckpointParams)(opened)
