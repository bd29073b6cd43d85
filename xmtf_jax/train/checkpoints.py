"""Orbax checkpoints of a training run: state, input position, config, restorable onto any mesh.

Layout (one directory per saved step, written by orbax to a temporary name and renamed when every
process has finished, so a crash mid-save never leaves a directory that looks complete):

  MODEL_DIR/checkpoint_<step>/
    params/          the float32 parameter tree (orbax StandardSave: OCDBT + zarr, sharded writes)
    opt_state/       the optimizer state (Adafactor factored second moments, count)
    metadata/        JSON: step, t5_config (T5Config fields), vocabulary_path, gin_config (operative
                     config text), optimizer, process_count, xmtf_jax checkpoint format version
    input_position/  one JSON file per process: `process_00000_of_00002.json`, that process's data
                     iterator state (`get_state` of data/indexed_pipeline.IndexedBatches or of
                     data/host_batches.HostBatches); restore returns all of them in process order

`restore(...)` places every array directly with the shardings of the abstract target it is given, so
a checkpoint written on a 4x2 mesh restores onto 2x4, onto one device, or onto another host count.
Either parameter layout (`T5Config.scan_layers`, recorded in the metadata) restores into either: the
arrays are read as written and converted to the target's layout afterwards (`model/layer_stacking.py`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
from typing import Any, Mapping, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

from xmtf_jax import paths
from xmtf_jax.errors import MissingPathError
from xmtf_jax.model import layer_stacking
from xmtf_jax.model.config import T5Config
from xmtf_jax.model.encoder_decoder import EncoderDecoderModel

FORMAT_VERSION = 1
STEP_PREFIX = "checkpoint"
ITEMS = ("params", "opt_state", "metadata", "input_position")


# ---- per-process JSON (the input position) -----------------------------------------------------------

class ProcessLocalJsonHandler(ocp.handlers.AsyncCheckpointHandler):
  """Every process writes and reads its own JSON file (orbax's JSON handler writes on one host only)."""

  @staticmethod
  def filename(process_index: int, process_count: int) -> str:
    return f"process_{process_index:05d}_of_{process_count:05d}.json"

  async def async_save(self, directory: epath.Path, args: "ProcessLocalJsonSave"):
    text = json.dumps(args.item, indent=1)  # serialise now: the caller's object keeps changing
    name = self.filename(jax.process_index(), jax.process_count())

    async def write():
      (directory / name).write_text(text)

    return [ocp.future.CommitFutureAwaitingContractedSignals(write(), name="input_position_save")]

  def save(self, directory: epath.Path, args: "ProcessLocalJsonSave"):
    (directory / self.filename(jax.process_index(), jax.process_count())).write_text(
        json.dumps(args.item, indent=1))

  def restore(self, directory: epath.Path, args: Optional["ProcessLocalJsonRestore"] = None):
    """Every saving process's JSON, in process order (a run may resume on another host count)."""
    found = sorted(p.name for p in directory.iterdir()) if directory.exists() else []
    names = [n for n in found if _PROCESS_FILE.fullmatch(n)]
    counts = {int(_PROCESS_FILE.fullmatch(n).group(2)) for n in names}
    if len(counts) != 1 or len(names) != next(iter(counts)):
      raise MissingPathError(
          f"{directory}: the input position is incomplete (it holds {found}; a complete one has a "
          "file per process of the run that saved it). Set TrainConfig.restore_input_position="
          "False to start the data stream from the beginning.")
    return [json.loads((directory / n).read_text()) for n in names]


_PROCESS_FILE = re.compile(r"process_(\d{5})_of_(\d{5})\.json")


@ocp.args.register_with_handler(ProcessLocalJsonHandler, for_save=True)
@dataclasses.dataclass
class ProcessLocalJsonSave(ocp.args.CheckpointArgs):
  item: Any


@ocp.args.register_with_handler(ProcessLocalJsonHandler, for_restore=True)
@dataclasses.dataclass
class ProcessLocalJsonRestore(ocp.args.CheckpointArgs):
  pass


# ---- the manager ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Restored:
  """What `Checkpointer.restore` gives back. `opt_state`/`input_position` are None when not asked."""
  step: int
  params: Any
  opt_state: Any
  metadata: dict
  input_position: Any


class Checkpointer:
  """Saves every `save_period` steps (and when forced), keeps the last `max_to_keep`, asynchronously.

  Every process must call `save`/`restore` with the same arguments (orbax coordinates the hosts).
  """

  def __init__(self, model_dir: str, *, save_period: int = 1000, max_to_keep: Optional[int] = 3,
               async_save: bool = True):
    self.model_dir = paths.abspath(model_dir)
    self.save_period = save_period
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_period, max_to_keep=max_to_keep, step_prefix=STEP_PREFIX,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True, create=True)
    self._manager = ocp.CheckpointManager(
        epath.Path(self.model_dir), options=options, item_names=ITEMS,
        item_handlers={"params": ocp.StandardCheckpointHandler(),
                       "opt_state": ocp.StandardCheckpointHandler(),
                       "metadata": ocp.JsonCheckpointHandler(),
                       "input_position": ProcessLocalJsonHandler()})

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def should_save(self, step: int) -> bool:
    """Every `save_period` steps (orbax's own policy would also save the first step)."""
    return step % self.save_period == 0

  def save(self, step: int, params: Any, opt_state: Any, metadata: Mapping[str, Any],
           input_position: Any, *, force: bool = False) -> bool:
    """Starts saving (returns at once when asynchronous); True if a save was started.

    Without `force`, only at multiples of `save_period`.
    """
    if not (force or self.should_save(step)):
      return False
    metadata = {**metadata, "step": int(step), "format_version": FORMAT_VERSION,
                "process_count": jax.process_count()}
    args = ocp.args.Composite(params=ocp.args.StandardSave(params),
                              opt_state=ocp.args.StandardSave(opt_state),
                              metadata=ocp.args.JsonSave(metadata),
                              input_position=ProcessLocalJsonSave(input_position))
    saved = self._manager.save(step, args=args, force=True)
    if saved:
      logging.info("checkpoint: saving step %d to %s%s", step, self.model_dir,
                   " (asynchronously)" if self._manager._options.enable_async_checkpointing else "")
    return saved

  def restore(self, step: int, abstract_params: Any, abstract_opt_state: Any = None, *,
              input_position: bool = True) -> Restored:
    """Restores `step` onto the shardings of the abstract targets (ShapeDtypeStructs with .sharding).

    Pass `abstract_opt_state=None` to skip the optimizer state and `input_position=False` to skip the
    data position (e.g. on another number of hosts).
    """
    metadata = dict(self._manager.restore(
        step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))["metadata"])
    as_written = lambda tree: None if tree is None else written_layout(tree, metadata)
    items = {"params": ocp.args.StandardRestore(as_written(abstract_params)),
             "metadata": ocp.args.JsonRestore()}
    if abstract_opt_state is not None:
      items["opt_state"] = ocp.args.StandardRestore(as_written(abstract_opt_state))
    if input_position:
      items["input_position"] = ProcessLocalJsonRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    config = t5_config_from_metadata(metadata)
    return Restored(step=step,
                    params=layer_stacking.convert_like(restored["params"], abstract_params, config),
                    opt_state=(layer_stacking.convert_like(restored["opt_state"], abstract_opt_state, config)
                               if abstract_opt_state is not None else None),
                    metadata=dict(restored["metadata"]),
                    input_position=restored["input_position"] if input_position else None)

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


# ---- reading a checkpoint without a training setup ----------------------------------------------

def step_directory(model_dir: str, step: int) -> str:
  return paths.join(model_dir, f"{STEP_PREFIX}_{step}")


# On a bucket orbax writes a step in place and marks it complete with this file (no atomic rename).
COMMIT_FILE = "commit_success.txt"


def is_step_directory(path: str) -> bool:
  if not (paths.isdir(paths.join(path, "params")) and paths.isdir(paths.join(path, "metadata"))):
    return False
  return not paths.is_remote(path) or paths.exists(paths.join(path, COMMIT_FILE))


def list_steps(model_dir: str) -> list[int]:
  """Committed checkpoint steps in `model_dir` (temporary, unfinished directories are not listed)."""
  if not paths.isdir(model_dir):
    return []
  steps = []
  for name in paths.listdir(model_dir):
    prefix, _, number = name.partition("_")
    if prefix == STEP_PREFIX and number.isdigit() and is_step_directory(paths.join(model_dir, name)):
      steps.append(int(number))
  return sorted(steps)


def resolve(path: str) -> str:
  """A step directory from `path`: itself if it is one, else the latest step of a MODEL_DIR."""
  if is_step_directory(path):
    return path
  steps = list_steps(path)
  if not steps:
    raise MissingPathError(
        f"{path}: neither a checkpoint directory ({STEP_PREFIX}_<step>/ with params/ and metadata/) "
        "nor a MODEL_DIR holding one")
  return step_directory(path, steps[-1])


def is_checkpoint(path: str) -> bool:
  try:
    resolve(path)
    return True
  except FileNotFoundError:
    return False


def read_metadata(path: str) -> dict:
  """The metadata JSON of a checkpoint (a step directory or a MODEL_DIR: its latest step)."""
  return json.loads(paths.read_text(paths.join(resolve(path), "metadata", "metadata")))


def t5_config_from_metadata(metadata: Mapping[str, Any], **overrides) -> T5Config:
  """The T5Config a checkpoint was trained with (unknown fields from other versions are ignored)."""
  known = {f.name for f in dataclasses.fields(T5Config)}
  fields = {k: v for k, v in metadata["t5_config"].items() if k in known}
  return T5Config(**{**fields, **overrides})


def load_model_params(path: str, mesh: Any = None, logical_axis_rules=None, **config_overrides):
  """(T5Config, params) of a checkpoint without gin: what `load_pretrained` uses.

  Parameters are placed with their shardings on `mesh`, or on the default device without one.
  """
  config = t5_config_from_metadata(read_metadata(path), **config_overrides)
  model = EncoderDecoderModel(config, mesh, logical_axis_rules)
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: device, model.abstract_params())
  else:
    shardings = model.param_shardings()
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          model.abstract_params(), shardings)
  return config, restore_params(path, abstract)


def written_layout(abstract: Any, metadata: Mapping[str, Any]) -> Any:
  """`abstract` (params or optimizer state) in the layer layout the checkpoint was written in."""
  stored_stacked = bool(metadata.get("t5_config", {}).get("scan_layers", False))
  if layer_stacking.is_stacked_tree(abstract) == stored_stacked:
    return abstract
  return layer_stacking.abstract_in_layout(abstract, t5_config_from_metadata(metadata), stored_stacked)


def restore_params(path: str, abstract_params: Any) -> Any:
  """Only the parameters of a checkpoint, placed with the shardings of `abstract_params` (and in its
  layer layout, whichever the checkpoint was written in)."""
  metadata = read_metadata(path)
  directory = paths.join(paths.abspath(resolve(path)), "params")
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(directory, written_layout(abstract_params, metadata))
  return layer_stacking.convert_like(restored, abstract_params, t5_config_from_metadata(metadata))
