"""One step of a training run as an export `ParamSource`: each tensor restored alone by an orbax partial
restore straight into host memory, so an XXL checkpoint exports on a host that could not hold the model.
"""
from __future__ import annotations

import ast
import contextlib
import logging
import re
from typing import Any, Optional

import numpy as np
import orbax.checkpoint as ocp

from xmtf_jax import paths
from xmtf_jax.hf import mapping as hf
from xmtf_jax.hf.sources import ParamSource, _check_shapes, expected_shapes
from xmtf_jax.model import layer_stacking
from xmtf_jax.model.encoder_decoder import EncoderDecoderModel
from xmtf_jax.train import checkpoints


def _gin_value(gin_text: str, *names: str) -> Any:
  """The value bound to the first of `names` (a macro or `Class.field`) in an operative gin config."""
  for name in names:
    match = re.search(rf"^{re.escape(name)}\s*=\s*(.+)$", gin_text or "", flags=re.MULTILINE)
    if match:
      try:
        return ast.literal_eval(match.group(1).strip())
      except (ValueError, SyntaxError):
        continue  # a gin reference (%MACRO, @fn): not a literal
  return None


class _DropMissingItemMetadata(logging.Filter):
  """orbax's item-level checkpointer looks for `_CHECKPOINT_METADATA` inside the `params/` item, where
  a CheckpointManager never writes it (it lies one folder up), and logs a warning on every export."""

  def __init__(self, item_dir: str):
    super().__init__()
    self.line = f"Metadata file does not exist: {item_dir.rstrip('/')}/_CHECKPOINT_METADATA"

  def filter(self, record: logging.LogRecord) -> bool:
    return record.getMessage() != self.line


@contextlib.contextmanager
def _without_missing_item_metadata_warning(item_dir: str):
  drop = _DropMissingItemMetadata(item_dir)
  logger = logging.getLogger("absl")  # orbax logs through absl.logging
  logger.addFilter(drop)
  try:
    yield
  finally:
    logger.removeFilter(drop)


class CheckpointParams(ParamSource):
  """One step of a training run (`xmtf_jax.checkpoints` layout), restored tensor by tensor.

  checkpoint_dir: a MODEL_DIR (step None: its latest step) or a checkpoint_<step> directory.
  """

  def __init__(self, checkpoint_dir: str, step: Optional[int] = None):
    if checkpoints.is_step_directory(checkpoint_dir):
      if step is not None and not paths.basename(checkpoint_dir.rstrip("/")).endswith(f"_{step}"):
        raise ValueError(f"--step={step} given with the step directory {checkpoint_dir}; pass its "
                         "MODEL_DIR instead")
      step_dir = checkpoint_dir
    else:
      steps = checkpoints.list_steps(checkpoint_dir)
      if not steps:
        raise FileNotFoundError(f"{checkpoint_dir}: no checkpoints (expected {checkpoints.STEP_PREFIX}_"
                                "<step>/ directories with params/ and metadata/, or an HF folder with "
                                "config.json)")
      if step is None:
        step = steps[-1]
      elif step not in steps:
        raise FileNotFoundError(f"--step={step}: {checkpoint_dir} has no checkpoint for step {step}; "
                                f"available steps: {steps}")
      step_dir = checkpoints.step_directory(checkpoint_dir, step)
    self.step_dir = step_dir
    self.metadata = checkpoints.read_metadata(step_dir)
    self.config = checkpoints.t5_config_from_metadata(self.metadata)
    self.vocabulary_path = self.metadata.get("vocabulary_path")
    self._params_dir = paths.join(paths.abspath(step_dir), "params")
    self._checkpointer = None

  def _orbax(self):
    if self._checkpointer is None:
      self._checkpointer = ocp.PyTreeCheckpointer()
    return self._checkpointer

  def check(self) -> None:
    with _without_missing_item_metadata_warning(self._params_dir):
      metadata = self._orbax().metadata(self._params_dir)
    tree = getattr(getattr(metadata, "item_metadata", metadata), "tree", None)
    if tree is None:  # older orbax: the tree itself
      tree = metadata
    found = {}
    for path in expected_shapes(self.config):
      try:
        found[path] = tuple(layer_stacking.layer_leaf(tree, path).shape)
      except (KeyError, TypeError, AttributeError):
        pass
    _check_shapes(found, self.config, self._params_dir)

  def read(self, path):
    # A scanned checkpoint holds layer i inside the stacked leaf: restore that leaf, take index i.
    stored, index = (layer_stacking.stacked_location(path) if self.config.scan_layers else (path, None))
    item, restore_args = {}, {}
    hf.tree_set(item, stored, 0)  # a placeholder leaf: only the structure matters
    hf.tree_set(restore_args, stored, ocp.RestoreArgs(restore_type=np.ndarray, dtype=np.float32))
    with _without_missing_item_metadata_warning(self._params_dir):
      restored = self._orbax().restore(self._params_dir, args=ocp.args.PyTreeRestore(
          item=item, restore_args=restore_args, partial_restore=True))
    array = np.asarray(hf.tree_get(restored, stored), np.float32)
    return array if index is None else array[index]

  def load_for_verify(self):
    config, params = checkpoints.load_model_params(self.step_dir, dropout_rate=0.0)
    return EncoderDecoderModel(config), params

  def card_facts(self) -> dict:
    gin_text = self.metadata.get("gin_config", "")
    base = self.metadata.get("initial_checkpoint_path") or _gin_value(
        gin_text, "TrainConfig.initial_checkpoint_path", "INITIAL_CHECKPOINT_PATH")
    mixture = self.metadata.get("mixture_or_task_name") or _gin_value(
        gin_text, "TrainConfig.mixture_or_task_name", "MIXTURE_OR_TASK_NAME")
    return {"base_model": base, "mixture": mixture, "steps": self.metadata.get("step")}

  def describe(self):
    return f"checkpoint {self.step_dir}"
