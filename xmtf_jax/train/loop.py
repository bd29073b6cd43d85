"""The training run behind `python -m xmtf_jax.train`: `TrainConfig` and `train(...)`.

`train` reads like the data flow: the step assembly (mesh, model, optimizer, shardings, jitted step:
step_assembly.py) -> this process's batches -> resume or initialise the state -> a `Run` ->
`run_loop.train_loop(run)` {global batch -> train step -> metrics -> the `Periodic` actions built
here: progress line, checkpoint, evaluation; the stop check has the same shape}.

A restart with the same MODEL_DIR resumes from its latest checkpoint (state, data position, step) and
continues exactly as if never stopped. A latest checkpoint whose files are missing or unreadable is
skipped for the newest one that restores, renamed to `checkpoint_<N>.damaged-<time>` and named in one
warning line (`restore_newest_intact`). SIGTERM / Ctrl-C: finish the step, save, exit 0. A non-finite
loss stops the run with exit code 3, keeping the last good checkpoint. See README "Training".
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np

from xmtf_jax import paths
from xmtf_jax.checkpoint import xmtf_format
from xmtf_jax.checkpoint.model_path import T5X, ModelPathError, open_model_path
from xmtf_jax.data import batch_source, source_factory, truncation
from xmtf_jax.errors import UserError
from xmtf_jax.model import family
from xmtf_jax.parallel import partitioning
from xmtf_jax.train import checkpoints, hooks, losses, optim, pretrained, preemption, reporting, step_assembly, trainer
from xmtf_jax.train import t5x_optimizer
from xmtf_jax.train.run_checks import TaskFeatures, check_same_shapes, task_features
from xmtf_jax.train.run_loop import NonFiniteLossError, Periodic, Run, TrainResult, train_loop

EXIT_NON_FINITE = 3
INPUT_PIPELINES = batch_source.PIPELINES


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """One training run (gin: `TrainConfig.*`, set through the macros of gin/runs/*.gin).

  model_dir: where checkpoints, metrics, TensorBoard events and plots go (MODEL_DIR).
  mixture_or_task_name, task_feature_lengths, use_packing: the data (seqio names, {'inputs', 'targets'}).
  train_steps: total optimizer steps (counted from 0 for a run started from an initial checkpoint;
    from the t5x step with restore_step).
  batch_size: global batch in sequences (rows, packed or not); num_microbatches splits it for
    gradient accumulation.
  initial_checkpoint_path: an HF mT5/mT0 folder or one of our checkpoints (MODEL_DIR or
    checkpoint_<step>) or a t5x checkpoint; only its parameters are used unless
    restore_optimizer_state / restore_step (t5x checkpoints; t5x's own default is both): continue
    its Adafactor slots (their decay at t5x's step) / its step (then TRAIN_STEPS counts on from it).
    Default weights only: our runs are finetunes. Ignored when MODEL_DIR holds a checkpoint.
  data_seed / dropout_seed / init_seed: shuffling, dropout masks (per step: (dropout_seed, step)), and
    the random initialisation when there is no initial checkpoint.
  input_pipeline: 'indexed' (default; data/indexed_pipeline.py: the order is a function of the seed,
    the position a few integers, resumes in constant time on any number of hosts) or 'tf_data'
    (data/pipeline.py: seqio's tf.data mixing; resumes by re-reading and skipping). See docs/data.md.
  line_index_dir: where the indexed pipeline caches its line offsets (default $XMTF_CACHE_DIR/line_index
    or ~/.cache/xmtf_jax/line_index; a gs:// folder lets a pod's hosts build them once).
  num_data_shards: ('tf_data' only; an error with 'indexed') into how many shards the data stream is
    split (default: the number of processes); keep it fixed to resume the same stream on another
    number of hosts.
  checkpoint_period, keep_checkpoints, async_checkpointing: save every K steps (and at the end or on a
    stop request), keep the last N (None: all), write in the background.
  restore_input_position: on resume, continue the data stream (False: start it over, e.g. after
    changing the pipeline, or with 'tf_data' the number of hosts and num_data_shards).
  eval_period, eval_batches, eval_split: validation loss every K steps on this many batches of the
    split (None: all of it; 0: no validation loss); eval_hook_factories: more hooks (train/hooks.py).
  log_period: steps per progress line; stop_check_period: with several processes, how often the hosts
    agree on a stop request (an all-gather).
  peak_flops_per_device: for MFU where the device kind is not in reporting.PEAK_FLOPS_PER_DEVICE.
  rng_impl: PRNG of the initialisation and of the per-step dropout key. 'rbg' (XLA's RngBitGenerator)
    compiles and runs much faster than 'threefry2x32'. Dropout masks themselves are a hash of that key
    and each element's global coordinates (dropout.py), so they do not depend on the mesh.
  compilation_cache_dir: persistent XLA compilation cache (restarts skip compilation).
  """
  model_dir: Optional[str] = None
  mixture_or_task_name: Optional[str] = None
  task_feature_lengths: Optional[Mapping[str, int]] = None
  train_steps: Optional[int] = None
  batch_size: int = 128
  use_packing: bool = False
  num_microbatches: int = 1
  initial_checkpoint_path: Optional[str] = None
  restore_optimizer_state: bool = False
  restore_step: bool = False
  data_seed: int = 0
  dropout_seed: int = 0
  init_seed: int = 0
  input_pipeline: str = "indexed"
  line_index_dir: Optional[str] = None
  num_data_shards: Optional[int] = None
  checkpoint_period: int = 1000
  keep_checkpoints: Optional[int] = 3
  async_checkpointing: bool = True
  restore_input_position: bool = True
  eval_period: int = 1000
  eval_batches: Optional[int] = 10
  eval_split: str = "validation"
  eval_hook_factories: Sequence[Callable] = ()
  log_period: int = 100
  stop_check_period: int = 10
  peak_flops_per_device: Optional[float] = None
  rng_impl: str = "rbg"
  compilation_cache_dir: Optional[str] = None

  def __post_init__(self):
    required = {"model_dir": "MODEL_DIR", "mixture_or_task_name": "MIXTURE_OR_TASK_NAME",
                "task_feature_lengths": "TASK_FEATURE_LENGTHS", "train_steps": "TRAIN_STEPS"}
    missing = [macro for field, macro in required.items() if getattr(self, field) is None]
    if missing:
      raise UserError(f"set the gin macro(s) {', '.join(missing)}, e.g. --gin.MODEL_DIR=\"'/tmp/run'\"")
    if self.batch_size % self.num_microbatches:
      raise UserError(f"BATCH_SIZE={self.batch_size} is not a multiple of "
                       f"NUM_MICROBATCHES={self.num_microbatches}")
    if self.input_pipeline not in INPUT_PIPELINES:
      raise UserError(f"TrainConfig.input_pipeline={self.input_pipeline!r}: choose one of "
                       f"{', '.join(map(repr, INPUT_PIPELINES))}")
    for name in ("train_steps", "checkpoint_period", "eval_period", "log_period"):
      if getattr(self, name) < 1:
        raise UserError(f"TrainConfig.{name}={getattr(self, name)} must be >= 1")


# ---- small pieces -----------------------------------------------------------------------------------

def setup_runtime(config: TrainConfig) -> None:
  if config.compilation_cache_dir:
    # A bucket URL passes through unchanged (jax reads gs:// caches through etils.epath).
    jax.config.update("jax_compilation_cache_dir", paths.abspath(config.compilation_cache_dir))


def initial_params(config: TrainConfig, model: Any) -> Any:
  """Parameters to start from: INITIAL_CHECKPOINT_PATH (any model path: `checkpoint.open_model_path`)
  or random."""
  path = config.initial_checkpoint_path
  if not path:
    logging.info("initialising parameters randomly (init_seed %d)", config.init_seed)
    return model.init_params(jax.random.key(config.init_seed, impl=config.rng_impl))
  try:
    opened = open_model_path(path)
  except ModelPathError as e:  # name the setting the path came from
    raise ModelPathError(f"INITIAL_CHECKPOINT_PATH={path!r}: {e}") from None
  # A t5x checkpoint whose layers' tables are equal loads either way: the gin model's layout decides.
  layout = ({"relative_attention_per_layer": model.config.relative_attention_per_layer}
            if opened.kind == T5X else {})
  check_same_shapes(pretrained.read_config(opened, **layout), model.config, path)
  logging.info("initial parameters from %s", opened.describe())
  _, params = pretrained.load_params(opened, model.mesh, model.logical_axis_rules,
                                     scan_layers=model.config.scan_layers, **layout)
  return params


def replicated_step(step: int, sharding) -> jax.Array:
  return jax.make_array_from_callback((), sharding, lambda _: np.asarray(step, np.int32))


def checkpoint_metadata(config: TrainConfig, model_config: family.ModelConfig, features: TaskFeatures,
                        optimizer_config: optim.OptimizerConfig) -> dict:
  return {**xmtf_format.config_metadata(model_config), "vocabulary_path": features.vocabulary_path,
          "add_eos_to_inputs": features.add_eos_to_inputs,
          "mixture_or_task_name": config.mixture_or_task_name,
          "initial_checkpoint_path": config.initial_checkpoint_path,
          "task_feature_lengths": dict(config.task_feature_lengths),
          "optimizer": optim.describe(optimizer_config)}


# ---- the run ----------------------------------------------------------------------------------------

def train(config: TrainConfig, model_config: family.ModelConfig,
          partitioning_config: Optional[partitioning.PartitioningConfig] = None,
          optimizer_config: Optional[optim.OptimizerConfig] = None,
          loss_config: Optional[losses.LossConfig] = None,
          describe_run: Callable[[], str] = lambda: "") -> TrainResult:
  """Trains until `config.train_steps` (or a stop request); see the module docstring.

  describe_run: the run's configuration as text, recorded in every checkpoint's metadata as
  `gin_config` (the train command passes gin's operative config, complete only once the run has
  started, hence a function).
  """
  partitioning_config = partitioning_config or partitioning.PartitioningConfig()
  optimizer_config = optimizer_config or optim.OptimizerConfig()
  loss_config = loss_config or losses.LossConfig()
  setup_runtime(config)

  # Mesh, model, optimizer, the shardings of the train state and the jitted step.
  assembly = step_assembly.assemble_step(model_config, partitioning_config, optimizer_config,
                                         loss_config, step_assembly.StepSettings.of(config))
  fresh_model = not config.initial_checkpoint_path
  features = task_features(config.mixture_or_task_name, model_config, fresh_model)
  vocabulary_path = features.vocabulary_path
  num_data_shards = config.num_data_shards or jax.process_count()

  # Resume from MODEL_DIR, or start from the initial checkpoint / random parameters.
  checkpointer = checkpoints.Checkpointer(
      config.model_dir, save_period=config.checkpoint_period, max_to_keep=config.keep_checkpoints,
      async_save=config.async_checkpointing)
  latest = checkpointer.latest_step()
  if latest is not None and latest >= config.train_steps:
    checkpointer.close()
    logging.info("%s already holds a checkpoint at step %d >= TRAIN_STEPS=%d: nothing to train "
                 "(raise TRAIN_STEPS to train further)", config.model_dir, latest, config.train_steps)
    reporting.plot_loss_curve(config.model_dir)
    return TrainResult("already_done", latest, config.model_dir)

  # This process's training batches (their source counts truncation and bad lines for this run).
  data = source_factory.make_batch_source(source_config(config, model_config), "train")
  metrics_log = reporting.MetricsLog(config.model_dir)
  state = restore_or_initialize(config, assembly, checkpointer, data, metrics_log, optimizer_config)
  start_step = int(jax.device_get(state.step))

  evaluations = build_eval_hooks(config, assembly.model, vocabulary_path, num_data_shards, loss_config)
  metadata = checkpoint_metadata(config, model_config, features, optimizer_config)
  lengths = config.task_feature_lengths
  meter = make_meter(config, model_config)
  tensorboard = reporting.TensorBoard(config.model_dir, start_step)
  logging.info("training %s from step %d to %d: batch %d x (%d, %d), %s, mesh %s on %d %s device(s)",
               config.mixture_or_task_name, start_step, config.train_steps, config.batch_size,
               lengths["inputs"], lengths["targets"], optim.describe(optimizer_config),
               dict(assembly.mesh.shape), jax.device_count(), jax.devices()[0].device_kind)
  try:
    with preemption.StopRequest() as stop:
      run = Run(config=config, assembly=assembly, state=state, start_step=start_step, data=data,
                checkpointer=checkpointer, metrics_log=metrics_log, tensorboard=tensorboard,
                meter=meter, stop=stop, stop_check=stop_check(config),
                actions=periodic_actions(config, evaluations, metadata, describe_run))
      return train_loop(run)
  except NonFiniteLossError as e:
    checkpointer.wait_until_finished()  # earlier (good) saves may still be in flight
    kept = checkpoints.list_steps(config.model_dir)
    last = checkpoints.step_directory(config.model_dir, kept[-1]) if kept else "none"
    raise NonFiniteLossError(f"{e}; last good checkpoint: {last}. Lower LEARNING_RATE, check the "
                             "data, or use float32 activations.") from None
  finally:
    if hasattr(data, "close"):
      data.close()
    checkpointer.close()
    metrics_log.flush()
    tensorboard.close()
    reporting.plot_loss_curve(config.model_dir)


def source_config(config: TrainConfig, model_config: family.ModelConfig) -> batch_source.SourceConfig:
  """The run's batches as the batch-source factory takes them (in the model family's layout)."""
  return batch_source.SourceConfig(
      config.mixture_or_task_name, dict(config.task_feature_lengths), config.batch_size,
      use_packing=config.use_packing, seed=config.data_seed, pipeline=config.input_pipeline,
      num_data_shards=config.num_data_shards, line_index_dir=config.line_index_dir,
      feature_layout=family.feature_layout(model_config))


def make_meter(config: TrainConfig, model_config: family.ModelConfig) -> reporting.ProgressMeter:
  lengths = config.task_feature_lengths
  flops = trainer.training_flops_per_step(model_config, config.batch_size, lengths["inputs"],
                                          lengths["targets"])
  peak = reporting.peak_flops_per_device(jax.devices()[0].device_kind, config.peak_flops_per_device)
  return reporting.ProgressMeter(config.train_steps, flops, jax.device_count(), peak)


def restore_or_initialize(config, assembly: step_assembly.StepAssembly, checkpointer, data,
                          metrics_log, optimizer_config=None) -> trainer.TrainState:
  """The state to train from: MODEL_DIR's newest checkpoint that restores (params, optimizer state
  and data position all of that one step), else the initial parameters when MODEL_DIR holds none
  (with a t5x run's step / Adafactor state when asked: `t5x_optimizer.continue_initial_checkpoint`)."""
  restored = restore_newest_intact(config, assembly, checkpointer)
  if restored is None:
    metrics_log.truncate_after(0)  # a run killed before its first checkpoint starts over
    state = assembly.init_state(initial_params(config, assembly.model))
    return t5x_optimizer.continue_initial_checkpoint(config, state, optimizer_config or optim.OptimizerConfig())
  if restored.input_position is not None:
    data.set_state(restored.input_position)
  metrics_log.truncate_after(restored.step)
  logging.info("resumed from %s", checkpoints.step_directory(config.model_dir, restored.step))
  return trainer.TrainState(step=replicated_step(restored.step, assembly.state_shardings.step),
                            params=restored.params, opt_state=restored.opt_state)


def restore_newest_intact(config, assembly: step_assembly.StepAssembly,
                          checkpointer) -> Optional[checkpoints.Restored]:
  """Restores the newest step whose files read (None when MODEL_DIR holds no step).

  A step whose files are missing or unreadable (`xmtf_format.DamagedCheckpointError`) is skipped and
  then renamed to `checkpoint_<N>.damaged-<time>` (kept, and out of the way of the next save of N),
  in one warning line. A step that reads but does not fit the gin model is the user's mistake
  (UserError), never a reason to go back to an older step. When no step restores: one UserError
  listing each step and why.
  """
  abstract = assembly.abstract_state
  damaged: list[checkpoints.DamagedCheckpointError] = []
  for step in reversed(checkpointer.all_steps()):
    step_dir = checkpoints.step_directory(config.model_dir, step)
    try:
      metadata = xmtf_format.read_metadata(step_dir)
      check_same_shapes(checkpoints.config_from_metadata(metadata), assembly.model.config, step_dir)
      restored = checkpointer.restore(step, abstract.params, abstract.opt_state,
                                      input_position=config.restore_input_position, metadata=metadata)
    except checkpoints.DamagedCheckpointError as error:
      damaged.append(error)
      continue
    if damaged:
      moved = [paths.basename(checkpointer.set_aside(_step_of(e))) for e in damaged]
      logging.warning("%s; resuming from %s (the damaged step kept as %s)", "; ".join(
          f"{paths.basename(e.step_dir)} could not be restored ({e.reason})" for e in damaged),
          paths.basename(step_dir), ", ".join(moved))
    return restored
  if damaged:
    raise UserError(
        f"{config.model_dir}: no checkpoint could be restored: " + "; ".join(
            f"{paths.basename(e.step_dir)}: {e.reason}" for e in damaged) + ". Move the damaged "
        "checkpoint_<N> folders aside to start from the beginning, or use another MODEL_DIR.")
  return None


def _step_of(error: checkpoints.DamagedCheckpointError) -> int:
  return xmtf_format.step_of_name(paths.basename(error.step_dir))


def build_eval_hooks(config, model, vocabulary_path, num_data_shards, loss_config):
  """[(name, eval hook)] of the run: validation loss (unless EVAL_BATCHES=0), then the gin factories'."""
  context = hooks.EvalContext(
      model=model, model_dir=config.model_dir, vocabulary_path=vocabulary_path,
      mixture_or_task_name=config.mixture_or_task_name,
      task_feature_lengths=dict(config.task_feature_lengths), batch_size=config.batch_size,
      use_packing=config.use_packing, num_data_shards=num_data_shards,
      input_pipeline=config.input_pipeline, line_index_dir=config.line_index_dir)
  factories = list(config.eval_hook_factories)
  if config.eval_batches != 0:
    factories.insert(0, hooks.validation_loss_factory(config.eval_split, config.eval_batches,
                                                      loss_config))
  built = []
  for factory in factories:
    hook = factory(context)
    if hook is not None:
      built.append((hooks.hook_name(hook, factory), hook))
  return built


# ---- the loop's actions (run_loop.py runs them) -----------------------------------------------------

def stop_check(config: TrainConfig) -> Periodic:
  """Every step with one process (a local flag); with several, an all-gather every
  STOP_CHECK_PERIOD steps and at every checkpoint step, so that a requested stop can reuse that save."""
  if jax.process_count() == 1:
    every = (1,)
  else:
    every = (max(1, config.stop_check_period), config.checkpoint_period)
  return Periodic("stop check", every, lambda run, step: run.stop.agreed())


def periodic_actions(config: TrainConfig, evaluations, metadata: Mapping[str, Any],
                     describe_run: Callable[[], str]) -> list[Periodic]:
  """Progress line, checkpoint and (when the run has eval hooks) evaluation, in the order they run."""
  def save(run: Run, step: int) -> None:
    run.metrics_log.flush()  # a killed run's metrics.jsonl holds every step up to its last checkpoint
    run.checkpointer.save(step, run.state.params, run.state.opt_state,
                          {**metadata, "gin_config": describe_run()}, run.data.get_state(), force=True)

  def evaluate(run: Run, step: int) -> None:
    run_eval_hooks(evaluations, step, run.state.params, run.metrics_log, run.tensorboard)

  actions = [Periodic("progress", (config.log_period,), log_progress, at_stop=True),
             Periodic("checkpoint", (config.checkpoint_period,), save, at_stop=True,
                      training_time=False)]
  if evaluations:
    actions.append(Periodic("evaluation", (config.eval_period,), evaluate, training_time=False))
  return actions


def log_progress(run: Run, step: int) -> None:
  """The progress line (log, TensorBoard) and the truncation figures; none for the first step (its
  time is compilation)."""
  if step <= run.start_step + 1:
    return
  summary = run.meter.summary(step)
  logging.info("%s", run.meter.line(step, summary))
  run.tensorboard.scalars("train", step, {**summary, **run.last_metrics})
  report_truncation(step, run.config.task_feature_lengths, run.metrics_log,
                    first=not run.truncation_reported, data_stats=run.data.stats())
  run.truncation_reported = True


def report_truncation(step: int, lengths: Mapping[str, int], metrics_log, first: bool,
                      data_stats: Mapping) -> None:
  """Per-task truncation of the training examples so far (`data_stats`: the training batch source's
  `stats()`): a `{"kind": "data"}` line in metrics.jsonl at every progress line, and in the log with
  the first one (a task whose inputs are all cut is a config mistake)."""
  totals = data_stats["truncation"]
  if not totals:
    return
  metrics_log.write({"kind": "data", "step": step, "split": data_stats["split"], "truncation": {
      task: {**t, **truncation.summarise(t)} for task, t in totals.items()}})
  if first:
    for line in truncation.describe(totals, lengths):
      logging.warning("%s", line)


def run_eval_hooks(evaluations, step, params, metrics_log, tensorboard) -> None:
  for name, hook in evaluations:
    start = time.time()
    metrics = {k: float(v) for k, v in dict(hook(step, params)).items()}
    metrics_log.write({"kind": "eval", "name": name, "step": step, **metrics})
    tensorboard.scalars("eval", step, {f"{name}/{k}": v for k, v in metrics.items()})
    shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    logging.info("eval %s at step %d: %s (%.1fs)", name, step, shown, time.time() - start)
