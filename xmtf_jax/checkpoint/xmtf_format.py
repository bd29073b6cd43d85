"""Reading the checkpoints our training writes (`train/checkpoints.py` saves them), without a training
setup: layout, metadata, steps, and parameters restored through one orbax API (`PyTreeCheckpointer`),
either as a whole tree onto a mesh or one tensor at a time into host memory (export).

  MODEL_DIR/checkpoint_<step>/
    params/          the float32 parameter tree (orbax OCDBT + zarr, sharded writes)
    opt_state/       the optimizer state
    metadata/        `metadata`: JSON (step, t5_config: the model config's fields and its `family`,
                     vocabulary_path, initial_checkpoint_path, ...)
    input_position/  one JSON file per process
    commit_success.txt   on a bucket only: orbax writes a step in place there and marks it complete

The model family (mT5, BLOOM) is recorded with the config (`config_metadata`; the key keeps its old,
stable name `t5_config` for either family) and read back by `config_from_metadata`; checkpoints
written before the family was recorded are mT5's. A checkpoint written with
either layer layout (`scan_layers`, recorded in the metadata) is read into either: arrays are restored
as written and converted to the target's layout afterwards.
"""
from __future__ import annotations

import ast
import contextlib
import json
import logging
import re
import sys
from typing import Any, Iterable, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from xmtf_jax import paths
from xmtf_jax.errors import MissingPathError
from xmtf_jax.model import family, layer_stacking

STEP_PREFIX = "checkpoint"
# On a bucket orbax writes a step in place and marks it complete with this file (no atomic rename).
COMMIT_FILE = "commit_success.txt"
METADATA_FILE = ("metadata", "metadata")  # the JSON orbax's JsonCheckpointHandler writes
# The model config in the metadata: its fields and its `family` (none: mT5). The name predates BLOOM
# and stays, as metadata keys are stable (older versions read mT5 checkpoints written now).
CONFIG_KEY = "t5_config"

Path = tuple[str, ...]


# ---- layout -----------------------------------------------------------------------------------------

def step_directory(model_dir: str, step: int) -> str:
  return paths.join(model_dir, f"{STEP_PREFIX}_{step}")


def step_of_name(name: str) -> Optional[int]:
  """The step of a `checkpoint_<step>` folder name; None for anything else (orbax's temporary names)."""
  prefix, _, number = name.partition("_")
  return int(number) if prefix == STEP_PREFIX and number.isdigit() else None


def is_step_listing(names: Iterable[str], remote: bool) -> bool:
  """Whether a folder holding `names` is a complete step of ours (params/ and metadata/; on a bucket
  also the commit marker)."""
  names = set(names)
  return {"params", "metadata"} <= names and (not remote or COMMIT_FILE in names)


def is_step_directory(path: str) -> bool:
  try:
    return is_step_listing(paths.listdir(path), paths.is_remote(path))
  except (FileNotFoundError, NotADirectoryError):
    return False


def list_steps(model_dir: str) -> list[int]:
  """Complete checkpoint steps in `model_dir` (temporary, unfinished directories are not listed)."""
  try:
    names = paths.listdir(model_dir)
  except (FileNotFoundError, NotADirectoryError):
    return []
  steps = [step_of_name(name) for name in names]
  return sorted(s for s in steps if s is not None and is_step_directory(step_directory(model_dir, s)))


# ---- damage -----------------------------------------------------------------------------------------

# tensorstore's status codes (the start of the ValueError it raises) that mean the stored bytes are
# missing or unreadable. Others (INVALID_ARGUMENT, UNAVAILABLE: a bucket's hiccup, ...) and orbax's
# own ValueErrors ("Requested shape ... is not compatible": a target that does not fit) are not damage.
DAMAGE_STATUS = ("NOT_FOUND", "DATA_LOSS", "OUT_OF_RANGE")


class DamagedCheckpointError(MissingPathError):
  """A step directory whose files are missing or unreadable (a MissingPathError: a file the folder
  must hold, so callers catching FileNotFoundError keep working). `reason` is one line: what failed
  to read, relative to the step directory."""

  def __init__(self, step_dir: str, reason: str):
    self.step_dir, self.reason = step_dir, reason
    super().__init__(f"{step_dir} could not be read ({reason}): the checkpoint is damaged. Read "
                     "another step of that run (its MODEL_DIR with --step=N, or step=N in "
                     "load_pretrained) or move this one aside.")


def damage_reason(error: BaseException, step_dir: str) -> Optional[str]:
  """One line saying what could not be read, when `error` is a read failure of the step's files
  (a missing or unreadable file, a JSON file that does not parse, a tensorstore NOT_FOUND/DATA_LOSS);
  None for anything else (a bug or a mismatch, which must not pass for damage)."""
  if isinstance(error, DamagedCheckpointError):
    return error.reason
  root = paths.abspath(step_dir).rstrip("/") + "/"
  if isinstance(error, json.JSONDecodeError):
    return f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
  if isinstance(error, OSError) and getattr(error, "filename", None):
    return f"{error.strerror or type(error).__name__}: {str(error.filename).replace(root, '')}"
  if isinstance(error, OSError):
    return str(error).replace(root, "")
  text = str(error)
  code = text.split(":", 1)[0]
  if isinstance(error, ValueError) and code in DAMAGE_STATUS:
    detail = text.split(" [tensorstore_spec", 1)[0].split(": ")[-1]  # the innermost cause
    return f"{code}: {detail.replace(root, '')}"
  return None


class _DropMissingItemMetadata(logging.Filter):
  """orbax's item-level checkpointer looks for `_CHECKPOINT_METADATA` inside an item (`params/`), where
  a CheckpointManager never writes it (it lies one folder up), and logs a warning on every read."""

  def __init__(self, item_dir: str):
    super().__init__()
    self.line = f"Metadata file does not exist: {item_dir.rstrip('/')}/_CHECKPOINT_METADATA"

  def filter(self, record: logging.LogRecord) -> bool:
    return record.getMessage() != self.line


@contextlib.contextmanager
def reading(step_dir: str, what: str):
  """Turns a read failure of `what` (a file or item of `step_dir`) into a DamagedCheckpointError, and
  keeps orbax's missing-item-metadata warning for that item out of the log."""
  drop = _DropMissingItemMetadata(paths.join(step_dir, what))
  absl_logger = logging.getLogger("absl")  # orbax logs through absl.logging
  absl_logger.addFilter(drop)
  try:
    yield
  except DamagedCheckpointError:
    raise
  except Exception as error:  # noqa: BLE001  (classified; anything else is re-raised as it is)
    reason = damage_reason(error, step_dir)
    if reason is None:
      raise
    prefix = "" if reason.startswith(what) else f"{what}: "
    _drop_closed_loop_reports()
    raise DamagedCheckpointError(step_dir, prefix + reason) from error
  finally:
    absl_logger.removeFilter(drop)


def _drop_closed_loop_reports() -> None:
  """After one read fails, orbax closes its event loop while tensorstore's other reads of that step
  are still running; each then reports "RuntimeError: Event loop is closed" as an unraisable
  exception (a 5-line traceback per array, harmless: nobody awaits them). Drops exactly those, so a
  damaged step is reported once; every other unraisable exception goes to the previous hook."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_closed_loop_reports", False):
    return

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)

  hook.drops_closed_loop_reports = True
  sys.unraisablehook = hook


# ---- metadata ---------------------------------------------------------------------------------------

def read_metadata(step_dir: str) -> dict:
  """The metadata JSON of one step directory (DamagedCheckpointError when it is missing or unreadable)."""
  with reading(step_dir, "/".join(METADATA_FILE)):
    return json.loads(paths.read_text(paths.join(step_dir, *METADATA_FILE)))


def config_metadata(config: family.ModelConfig) -> dict:
  """The metadata entries that record a model config (either family) in a checkpoint."""
  return {CONFIG_KEY: family.config_to_dict(config)}


def config_from_metadata(metadata: Mapping[str, Any], **overrides) -> family.ModelConfig:
  """The config (T5Config, BloomConfig) a checkpoint was trained with; a checkpoint that records no
  family is mT5's. Unknown fields (from other versions) are ignored."""
  return family.config_from_dict(metadata[CONFIG_KEY], **overrides)


t5_config_from_metadata = config_from_metadata  # the name callers used before BLOOM


def _stored_scan_layers(metadata: Mapping[str, Any]) -> bool:
  return bool(metadata.get(CONFIG_KEY, {}).get("scan_layers", False))


def recorded(metadata: Mapping[str, Any], key: str, *gin_names: str) -> Any:
  """`metadata[key]`; for checkpoints written before the key was recorded, the value bound to the
  first of `gin_names` (a macro or `Class.field`) in the operative gin config they hold."""
  if key in metadata:
    return metadata[key]
  gin_text = metadata.get("gin_config") or ""
  for name in gin_names:
    match = re.search(rf"^{re.escape(name)}\s*=\s*(.+)$", gin_text, flags=re.MULTILINE)
    if match:
      try:
        return ast.literal_eval(match.group(1).strip())
      except (ValueError, SyntaxError):
        continue  # a gin reference (%MACRO, @fn): not a literal
  return None


def written_layout(abstract: Any, metadata: Mapping[str, Any]) -> Any:
  """`abstract` (params or optimizer state) in the layer layout the checkpoint was written in."""
  stored_stacked = _stored_scan_layers(metadata)
  if layer_stacking.is_stacked_tree(abstract) == stored_stacked:
    return abstract
  return layer_stacking.abstract_in_layout(abstract, config_from_metadata(metadata), stored_stacked)


# ---- arrays -----------------------------------------------------------------------------------------

def _tree_set(tree: dict, path: Path, value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _tree_get(tree: Any, path: Path) -> Any:
  for key in path:
    tree = tree[key]
  return tree


class StepReader:
  """One step directory, read through orbax's `PyTreeCheckpointer` (every read of our format goes
  through `_restore`). `metadata` may be given when the caller has read it already."""

  def __init__(self, step_dir: str, metadata: Optional[Mapping[str, Any]] = None):
    self.step_dir = paths.abspath(step_dir)
    self.metadata = dict(metadata) if metadata is not None else read_metadata(self.step_dir)
    self._checkpointer = None

  @property
  def config(self) -> family.ModelConfig:
    return config_from_metadata(self.metadata)

  def _orbax(self):
    if self._checkpointer is None:
      self._checkpointer = ocp.PyTreeCheckpointer()
    return self._checkpointer

  def _restore(self, item_name: str, item: Any, restore_args: Any, partial: bool) -> Any:
    with reading(self.step_dir, item_name):
      return self._orbax().restore(paths.join(self.step_dir, item_name), args=ocp.args.PyTreeRestore(
          item=item, restore_args=restore_args, partial_restore=partial))

  def restore(self, abstract: Any, item_name: str = "params") -> Any:
    """A whole item (`params` or `opt_state`) placed with the shardings of `abstract`
    (ShapeDtypeStructs with .sharding), in `abstract`'s layer layout whichever it was written in."""
    as_written = written_layout(abstract, self.metadata)
    restored = self._restore(item_name, as_written, ocp.checkpoint_utils.construct_restore_args(as_written),
                             partial=False)
    return layer_stacking.convert_like(restored, abstract, config_from_metadata(self.metadata))

  def read(self, path: Path) -> np.ndarray:
    """One parameter of one layer (per-layer path), float32, in host memory (a partial restore)."""
    scanned = _stored_scan_layers(self.metadata)
    stored, index = layer_stacking.stacked_location(path) if scanned else (path, None)
    item, restore_args = {}, {}
    _tree_set(item, stored, 0)  # a placeholder leaf: only the structure matters
    _tree_set(restore_args, stored, ocp.RestoreArgs(restore_type=np.ndarray, dtype=np.float32))
    array = np.asarray(_tree_get(self._restore("params", item, restore_args, partial=True), stored),
                       np.float32)
    return array if index is None else array[index]

  def params_tree_metadata(self) -> Any:
    """The stored parameter tree's metadata (leaves have `.shape`), without reading arrays."""
    params_dir = paths.join(self.step_dir, "params")
    with reading(self.step_dir, "params"):
      metadata = self._orbax().metadata(params_dir)
      if getattr(metadata, "item_metadata", "") is None:
        # orbax logs and drops the read error here; its handler raises it (named by `reading`)
        ocp.PyTreeCheckpointHandler().metadata(epath.Path(params_dir))
        raise DamagedCheckpointError(self.step_dir, "params: the tree metadata could not be read")
    tree = getattr(getattr(metadata, "item_metadata", metadata), "tree", None)
    return metadata if tree is None else tree  # older orbax: the tree itself

  def close(self) -> None:
    if self._checkpointer is not None:
      self._checkpointer.close()
      self._checkpointer = None


def abstract_params(model: Any) -> Any:
  """The model's parameters as ShapeDtypeStructs with their shardings (its mesh, or one device)."""
  if model.mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: device, model.abstract_params())
  else:
    shardings = model.param_shardings()
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      model.abstract_params(), shardings)


def load_model_params(step_dir: str, mesh: Any = None, logical_axis_rules=None,
                      metadata: Optional[Mapping[str, Any]] = None, **config_overrides):
  """(config, params) of one step without gin (the config of the family it records), placed with their
  shardings on `mesh` (or on the default device without one)."""
  reader = StepReader(step_dir, metadata)
  config = config_from_metadata(reader.metadata, **config_overrides)
  try:
    return config, reader.restore(abstract_params(family.model_for(config, mesh, logical_axis_rules)))
  finally:
    reader.close()
