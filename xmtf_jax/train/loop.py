"""The training run behind `python -m xmtf_jax.train`: `TrainConfig` and `train(...)`.

`train` reads like the data flow: mesh + model + optimizer -> this process's batches -> resume or
initialise the state -> loop {global batch -> jit train step -> metrics -> checkpoint / eval hooks}.

A restart with the same MODEL_DIR resumes from its latest checkpoint (state, data position, step) and
continues exactly as if never stopped. SIGTERM / Ctrl-C: finish the step, save, exit 0. A non-finite
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
from xmtf_jax.data import host_batches, indexed_pipeline, truncation
from xmtf_jax.hf import reader as hf_reader
from xmtf_jax.model.config import T5Config
from xmtf_jax.model.encoder_decoder import EncoderDecoderModel
from xmtf_jax.parallel import partitioning
from xmtf_jax.train import checkpoints, losses, optim, preemption, reporting, trainer
from xmtf_jax.train import hooks as eval_hooks
from xmtf_jax.train.run_checks import TaskFeatures, check_same_shapes, task_features

EXIT_NON_FINITE = 3
INPUT_PIPELINES = ("indexed", "tf_data")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """One training run (gin: `TrainConfig.*`, set through the macros of gin/runs/*.gin).

  model_dir: where checkpoints, metrics, TensorBoard events and plots go (MODEL_DIR).
  mixture_or_task_name, task_feature_lengths, use_packing: the data (seqio names, {'inputs', 'targets'}).
  train_steps: total optimizer steps (counted from 0 for a run started from an initial checkpoint).
  batch_size: global batch in sequences (rows, packed or not); num_microbatches splits it for
    gradient accumulation.
  initial_checkpoint_path: an HF mT5/mT0 folder or one of our checkpoints (MODEL_DIR or
    checkpoint_<step>); only its parameters are used. Ignored when MODEL_DIR holds a checkpoint.
  data_seed / dropout_seed / init_seed: shuffling, dropout masks (per step: (dropout_seed, step)), and
    the random initialisation when there is no initial checkpoint.
  input_pipeline: 'indexed' (default; data/indexed_pipeline.py: the order is a function of the seed,
    the position a few integers, resumes in constant time on any number of hosts) or 'tf_data'
    (data/pipeline.py: seqio's tf.data mixing; resumes by re-reading and skipping). See docs/data.md.
  line_index_dir: where the indexed pipeline caches its line offsets (default $XMTF_CACHE_DIR/line_index
    or ~/.cache/xmtf_jax/line_index; a gs:// folder lets a pod's hosts build them once).
  num_data_shards: ('tf_data' only) into how many shards the data stream is split (default: the number
    of processes); keep it fixed to resume the same stream on another number of hosts.
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
      raise ValueError(f"set the gin macro(s) {', '.join(missing)}, e.g. --gin.MODEL_DIR=\"'/tmp/run'\"")
    if self.batch_size % self.num_microbatches:
      raise ValueError(f"BATCH_SIZE={self.batch_size} is not a multiple of "
                       f"NUM_MICROBATCHES={self.num_microbatches}")
    if self.input_pipeline not in INPUT_PIPELINES:
      raise ValueError(f"TrainConfig.input_pipeline={self.input_pipeline!r}: choose one of "
                       f"{', '.join(map(repr, INPUT_PIPELINES))}")
    for name in ("train_steps", "checkpoint_period", "eval_period", "log_period"):
      if getattr(self, name) < 1:
        raise ValueError(f"TrainConfig.{name}={getattr(self, name)} must be >= 1")


@dataclasses.dataclass
class TrainResult:
  """status: 'finished' (reached train_steps), 'stopped' (signal; checkpoint saved) or 'already_done'."""
  status: str
  step: int
  model_dir: str
  last_metrics: Optional[dict] = None


class NonFiniteLossError(RuntimeError):
  pass


# ---- small pieces -----------------------------------------------------------------------------------

def setup_runtime(config: TrainConfig) -> None:
  if config.compilation_cache_dir:
    # A bucket URL passes through unchanged (jax reads gs:// caches through etils.epath).
    jax.config.update("jax_compilation_cache_dir", paths.abspath(config.compilation_cache_dir))


def initial_params(config: TrainConfig, model: EncoderDecoderModel) -> Any:
  """Parameters to start from: INITIAL_CHECKPOINT_PATH (HF folder or our checkpoint) or random."""
  path = config.initial_checkpoint_path
  if not path:
    logging.info("initialising parameters randomly (init_seed %d)", config.init_seed)
    return model.init_params(jax.random.key(config.init_seed, impl=config.rng_impl))
  if paths.looks_like_hub_id(path):
    raise FileNotFoundError(f"INITIAL_CHECKPOINT_PATH={path!r}: {paths.hub_id_message(path)}")
  if checkpoints.is_checkpoint(path):
    metadata = checkpoints.read_metadata(path)
    check_same_shapes(checkpoints.t5_config_from_metadata(metadata), model.config, path)
    logging.info("initial parameters from checkpoint %s (step %d)", path, metadata["step"])
    return checkpoints.restore_params(path, abstract_with_shardings(model))
  check_same_shapes(hf_reader.read_hf_config(path), model.config, path)
  logging.info("initial parameters from HF folder %s", path)
  _, params = hf_reader.load_hf_folder(path, model.mesh, model.logical_axis_rules,
                                      scan_layers=model.config.scan_layers)
  return params


def abstract_with_shardings(model: EncoderDecoderModel) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      model.abstract_params(), model.param_shardings())


def replicated_step(step: int, sharding) -> jax.Array:
  return jax.make_array_from_callback((), sharding, lambda _: np.asarray(step, np.int32))


def checkpoint_metadata(config: TrainConfig, model_config: T5Config, features: TaskFeatures,
                        optimizer_config: optim.OptimizerConfig) -> dict:
  return {"t5_config": model_config.to_dict(), "vocabulary_path": features.vocabulary_path,
          "add_eos_to_inputs": features.add_eos_to_inputs,
          "mixture_or_task_name": config.mixture_or_task_name,
          "task_feature_lengths": dict(config.task_feature_lengths),
          "optimizer": optim.describe(optimizer_config)}


def check_finite(step: int, metrics: Mapping[str, float]) -> None:
  bad = [k for k in ("loss", "grad_norm", "param_norm") if not np.isfinite(metrics[k])]
  if bad:
    raise NonFiniteLossError(
        f"step {step}: non-finite {', '.join(f'{k}={metrics[k]}' for k in bad)}. Stopped without "
        "saving these parameters")


# ---- the run ----------------------------------------------------------------------------------------

def train(config: TrainConfig, model_config: T5Config,
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

  # Mesh, model, optimizer and the shardings of the train state.
  mesh = partitioning_config.make_mesh()
  model = EncoderDecoderModel(model_config, mesh, partitioning_config.rules())
  optimizer = trainer.make_optimizer(model, optimizer_config)
  state_shardings = trainer.train_state_shardings(model, optimizer, mesh)
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

  # Per-host batches of this process's data shards (truncation is counted afresh for this run).
  truncation.reset_all()
  data = make_train_batches(config, num_data_shards)
  metrics_log = reporting.MetricsLog(config.model_dir)
  state = restore_or_initialize(config, model, optimizer, state_shardings, checkpointer, data,
                                metrics_log)
  start_step = int(jax.device_get(state.step))

  train_step = trainer.make_train_step(
      model, optimizer, loss_config, optim.learning_rate_schedule(optimizer_config),
      dropout_seed=config.dropout_seed, num_microbatches=config.num_microbatches,
      state_shardings=state_shardings, rng_impl=config.rng_impl)
  hooks = build_eval_hooks(config, model, vocabulary_path, num_data_shards, loss_config)
  metadata = checkpoint_metadata(config, model_config, features, optimizer_config)
  lengths = config.task_feature_lengths
  meter = make_meter(config, model_config)
  tensorboard = reporting.TensorBoard(config.model_dir, start_step)
  logging.info("training %s from step %d to %d: batch %d x (%d, %d), %s, mesh %s on %d %s device(s)",
               config.mixture_or_task_name, start_step, config.train_steps, config.batch_size,
               lengths["inputs"], lengths["targets"], optim.describe(optimizer_config),
               dict(mesh.shape), jax.device_count(), jax.devices()[0].device_kind)
  try:
    with preemption.StopRequest(config.stop_check_period) as stop:
      return train_loop(config, model, state, start_step, data, train_step, checkpointer, metadata,
                        hooks, meter, metrics_log, tensorboard, stop, describe_run)
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


def make_train_batches(config: TrainConfig, num_data_shards: int):
  """This process's training batches from the configured input pipeline."""
  if config.input_pipeline == "tf_data":
    return host_batches.make_host_batches(
        config.mixture_or_task_name, config.task_feature_lengths, "train", config.batch_size,
        use_packing=config.use_packing, shuffle=True, seed=config.data_seed, repeat=True,
        num_data_shards=num_data_shards)
  if config.num_data_shards:
    logging.warning("TrainConfig.num_data_shards=%d is ignored by the indexed input pipeline (its "
                    "global batches never depend on the number of hosts)", config.num_data_shards)
  return indexed_pipeline.make_indexed_batches(
      config.mixture_or_task_name, config.task_feature_lengths, "train", config.batch_size,
      use_packing=config.use_packing, seed=config.data_seed, index_dir=config.line_index_dir)


def make_meter(config: TrainConfig, model_config: T5Config) -> reporting.ProgressMeter:
  lengths = config.task_feature_lengths
  flops = trainer.training_flops_per_step(model_config, config.batch_size, lengths["inputs"],
                                          lengths["targets"])
  peak = reporting.peak_flops_per_device(jax.devices()[0].device_kind, config.peak_flops_per_device)
  return reporting.ProgressMeter(config.train_steps, flops, jax.device_count(), peak)


def restore_or_initialize(config, model, optimizer, state_shardings, checkpointer, data, metrics_log):
  latest = checkpointer.latest_step()
  if latest is None:
    metrics_log.truncate_after(0)  # a run killed before its first checkpoint starts over
    params = initial_params(config, model)
    return trainer.init_train_state(params, optimizer, state_shardings)
  abstract = trainer.abstract_train_state(model, optimizer, model.mesh)
  restored = checkpointer.restore(latest, abstract.params, abstract.opt_state,
                                  input_position=config.restore_input_position)
  check_same_shapes(checkpoints.t5_config_from_metadata(restored.metadata), model.config,
                    checkpoints.step_directory(config.model_dir, latest))
  if restored.input_position is not None:
    data.set_state(restored.input_position)
  metrics_log.truncate_after(latest)
  logging.info("resumed from %s", checkpoints.step_directory(config.model_dir, latest))
  return trainer.TrainState(step=replicated_step(latest, state_shardings.step),
                            params=restored.params, opt_state=restored.opt_state)


def build_eval_hooks(config, model, vocabulary_path, num_data_shards, loss_config):
  context = eval_hooks.EvalContext(
      model=model, model_dir=config.model_dir, vocabulary_path=vocabulary_path,
      mixture_or_task_name=config.mixture_or_task_name,
      task_feature_lengths=dict(config.task_feature_lengths), batch_size=config.batch_size,
      use_packing=config.use_packing, num_data_shards=num_data_shards)
  factories = list(config.eval_hook_factories)
  if config.eval_batches != 0:
    factories.insert(0, eval_hooks.validation_loss_factory(config.eval_split, config.eval_batches,
                                                           loss_config))
  hooks = []
  for factory in factories:
    hook = factory(context)
    if hook is not None:
      hooks.append((eval_hooks.hook_name(hook, factory), hook))
  return hooks


def train_loop(config, model, state, start_step, data, train_step, checkpointer, metadata, hooks,
               meter, metrics_log, tensorboard, stop, describe_run) -> TrainResult:
  """Steps until train_steps or a stop request. Metrics are fetched one step late, so the host queues
  step s+1 before waiting for step s; they are always fetched (and checked) before a save."""
  pending = None  # (step, device metrics) not yet fetched
  last_metrics = None
  truncation_reported = False
  step = start_step
  started = time.time()

  def record(step_and_metrics):
    nonlocal last_metrics
    done_step, device_metrics = step_and_metrics
    metrics = trainer.host_metrics(device_metrics)
    check_finite(done_step, metrics)
    metrics_log.write({"kind": "train", "step": done_step, **metrics})
    if done_step == start_step + 1:
      logging.info("first step done in %.1fs (compilation included)", time.time() - started)
      meter.restart_clock()
    else:
      meter.add(metrics)
    last_metrics = metrics

  while step < config.train_steps:
    batch = model.shard_batch(next(data))
    state, device_metrics = train_step(state, batch)
    step += 1
    if pending is not None:
      record(pending)
    pending = (step, device_metrics)
    last = step == config.train_steps
    stopping = not last and stop.should_stop(step, force_check=checkpointer.should_save(step))
    save = last or stopping or checkpointer.should_save(step)
    evaluate = bool(hooks) and (last or step % config.eval_period == 0)
    log = last or stopping or step % config.log_period == 0
    if save or evaluate or log or step == start_step + 1:
      record(pending)
      pending = None
    if log and step > start_step + 1:
      summary = meter.summary(step)
      logging.info("%s", meter.line(step, summary))
      tensorboard.scalars("train", step, {**summary, **last_metrics})
      report_truncation(step, config.task_feature_lengths, metrics_log,
                        first=not truncation_reported)
      truncation_reported = True
    if save:
      started_saving = time.time()
      metrics_log.flush()  # a killed run's metrics.jsonl holds every step up to its last checkpoint
      checkpointer.save(step, state.params, state.opt_state,
                        {**metadata, "gin_config": describe_run()},
                        data.get_state(), force=True)
      meter.exclude(time.time() - started_saving)
    if evaluate:
      started_evaluating = time.time()
      run_eval_hooks(hooks, step, state.params, metrics_log, tensorboard)
      meter.exclude(time.time() - started_evaluating)
    if stopping:
      logging.info("stopped at step %d on %s; checkpoint saved: restart with the same MODEL_DIR "
                   "to continue", step, stop.signal_name or "another process's request")
      return TrainResult("stopped", step, config.model_dir, last_metrics)
  logging.info("finished: step %d, loss %.4f; checkpoint %s", step, last_metrics["loss"],
               checkpoints.step_directory(config.model_dir, step))
  return TrainResult("finished", step, config.model_dir, last_metrics)


def report_truncation(step: int, lengths: Mapping[str, int], metrics_log, first: bool) -> None:
  """Per-task truncation so far: a `{"kind": "data"}` line in metrics.jsonl at every progress line,
  and in the log with the first one (a task whose inputs are all cut is a config mistake)."""
  totals = truncation.all_totals()
  if not totals:
    return
  metrics_log.write({"kind": "data", "step": step, "truncation": {
      task: {**t, **truncation.summarise(t)} for task, t in totals.items()}})
  if first:
    for line in truncation.describe(totals, lengths):
      logging.warning("%s", line)


def run_eval_hooks(hooks, step, params, metrics_log, tensorboard) -> None:
  for name, hook in hooks:
    start = time.time()
    metrics = {k: float(v) for k, v in dict(hook(step, params)).items()}
    metrics_log.write({"kind": "eval", "name": name, "step": step, **metrics})
    tensorboard.scalars("eval", step, {f"{name}/{k}": v for k, v in metrics.items()})
    shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    logging.info("eval %s at step %d: %s (%.1fs)", name, step, shown, time.time() - start)
