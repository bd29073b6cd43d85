"""Orbax checkpoints of a training run: state, input position, config, restorable onto any mesh.

Layout (one directory per saved step, written by orbax to a temporary name and renamed when every
process has finished, so a crash mid-save never leaves a directory that looks complete):

  MODEL_DIR/checkpoint_<step>/
    params/          the float32 parameter tree (orbax StandardSave: OCDBT + zarr, sharded writes)
    opt_state/       the optimizer state (Adafactor factored second moments, count)
    metadata/        JSON: step, t5_config (the model config's fields and its family, either
                     family), vocabulary_path, initial_checkpoint_path, gin_config (operative
                     config text), optimizer, process_count, format version
    input_position/  one JSON file per process: `process_00000_of_00002.json`, that process's data
                     iterator state (`get_state` of data/indexed_pipeline.IndexedBatches or of
                     data/host_batches.HostBatches); restore returns all of them in process order

`restore(...)` places every array directly with the shardings of the abstract target it is given, so
a checkpoint written on a 4x2 mesh restores onto 2x4, onto one device, or onto another host count.
Either parameter layout (`T5Config.scan_layers`, recorded in the metadata) restores into either: the
arrays are read as written and converted to the target's layout afterwards (`model/layer_stacking.py`).

A step whose files are missing or unreadable raises `DamagedCheckpointError` on restore; a resume
that skips it renames it `checkpoint_<step>.damaged-<UTC time>` (`Checkpointer.set_aside`): neither
orbax nor `list_steps` counts that name, so max_to_keep never deletes it and a new save of that step
does not collide with it.

Reading goes through the shared reader, `xmtf_jax.checkpoint.xmtf_format` (what evaluation, inference,
export and `load_pretrained` read with); this module adds saving and a run's resume (optimizer state,
input position) on top of it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from typing import Any, Mapping, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

from xmtf_jax import paths
from xmtf_jax.checkpoint import model_path, xmtf_format
# The layout's names, as the training side uses them (the reader owns them).
from xmtf_jax.checkpoint.xmtf_format import (STEP_PREFIX, DamagedCheckpointError, config_from_metadata,
                                             list_steps, step_directory, t5_config_from_metadata)
from xmtf_jax.errors import MissingPathError

FORMAT_VERSION = 1
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

  def all_steps(self) -> list[int]:
    """The committed steps, oldest first."""
    return sorted(self._manager.all_steps())

  def set_aside(self, step: int) -> str:
    """Renames a damaged step to `checkpoint_<step>.damaged-<UTC time>` (kept for inspection; neither
    a step for orbax nor for `list_steps`, so it is never deleted by `max_to_keep` and a new save of
    `step` does not collide with it). Returns the new path."""
    target = f"{step_directory(self.model_dir, step)}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    if jax.process_index() == 0:
      paths.rename(step_directory(self.model_dir, step), target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"set aside {target}")
    self._manager.reload()
    return target

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
              input_position: bool = True, metadata: Optional[Mapping[str, Any]] = None) -> Restored:
    """Restores `step` onto the shardings of the abstract targets (ShapeDtypeStructs with .sharding).

    Pass `abstract_opt_state=None` to skip the optimizer state and `input_position=False` to skip the
    data position (e.g. on another number of hosts); `metadata` when already read. Raises
    DamagedCheckpointError (naming the file or item) when the step's files are missing or unreadable.
    """
    step_dir = step_directory(self.model_dir, step)
    reader = xmtf_format.StepReader(step_dir, metadata)
    try:
      params = reader.restore(abstract_params, "params")
      opt_state = (reader.restore(abstract_opt_state, "opt_state") if abstract_opt_state is not None
                   else None)
    finally:
      reader.close()
    position = None
    if input_position:
      with xmtf_format.reading(step_dir, "input_position"):
        position = ProcessLocalJsonHandler().restore(epath.Path(step_dir) / "input_position")
    return Restored(step=step, params=params, opt_state=opt_state, metadata=reader.metadata,
                    input_position=position)

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def read_metadata(path: str) -> dict:
  """The metadata of a step directory or of a MODEL_DIR's latest step."""
  return model_path.open_model_path(path).metadata
