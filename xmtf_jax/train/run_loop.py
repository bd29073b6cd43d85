"""The loop's shape: `train_loop(run)` steps a `Run` and, after each step, runs its `Periodic` actions.

Everything the loop does between steps (the progress line, saving a checkpoint, evaluation, and the
stop check that decides whether the run ends here) is a `Periodic`: a function of (run, step) due every
`every` steps, after the last step and, for some, at a stop. `loop.train` builds the run and its
actions; this module decides when they run, and that the step's metrics are fetched (and checked
finite) before any of them.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from xmtf_jax.train import checkpoints, preemption, reporting, step_assembly, trainer


@dataclasses.dataclass
class TrainResult:
  """status: 'finished' (reached train_steps), 'stopped' (signal; checkpoint saved) or 'already_done'."""
  status: str
  step: int
  model_dir: str
  last_metrics: Optional[dict] = None


class NonFiniteLossError(RuntimeError):
  pass


def check_finite(step: int, metrics: Mapping[str, float]) -> None:
  bad = [k for k in ("loss", "grad_norm", "param_norm") if not np.isfinite(metrics[k])]
  if bad:
    raise NonFiniteLossError(
        f"step {step}: non-finite {', '.join(f'{k}={metrics[k]}' for k in bad)}. Stopped without "
        "saving these parameters")


@dataclasses.dataclass(frozen=True)
class Periodic:
  """Something the loop does after a step: `fn(run, step)`, due after every step that is a multiple of
  one of `every`, after the last step, and at the step a stop request ends the run if `at_stop`.
  training_time=False: its seconds are left out of the progress meter (saves, evaluations)."""
  name: str
  every: tuple[int, ...]
  fn: Callable[["Run", int], Any]
  at_stop: bool = False
  training_time: bool = True

  def due(self, step: int, *, last: bool = False, stopping: bool = False) -> bool:
    return last or (stopping and self.at_stop) or any(step % period == 0 for period in self.every)

  def __call__(self, run: "Run", step: int) -> Any:
    started = time.time()
    result = self.fn(run, step)
    if not self.training_time:
      run.meter.exclude(time.time() - started)
    return result


@dataclasses.dataclass
class Run:
  """One training run as the loop sees it; `state` and the progress fields change as it steps."""
  config: Any  # loop.TrainConfig: train_steps, model_dir, and what the actions read
  assembly: step_assembly.StepAssembly
  state: trainer.TrainState
  start_step: int
  data: Any  # this process's batches: next(), get_state()
  checkpointer: checkpoints.Checkpointer
  metrics_log: reporting.MetricsLog
  tensorboard: reporting.TensorBoard
  meter: reporting.ProgressMeter
  stop: preemption.StopRequest
  stop_check: Periodic  # fn -> whether every process agrees to stop (never run after the last step)
  actions: Sequence[Periodic]  # in order: progress line, checkpoint, evaluation
  last_metrics: Optional[dict] = None  # of the last fetched step
  truncation_reported: bool = False  # the truncation figures go to the log with the first progress line


def train_loop(run: Run) -> TrainResult:
  """Steps until train_steps or a stop request. Metrics are fetched one step late, so the host queues
  step s+1 before waiting for step s; they are always fetched (and checked) before any action."""
  config = run.config
  pending = None  # (step, device metrics) not yet fetched
  step = run.start_step
  started = time.time()

  def record(step_and_metrics):
    done_step, device_metrics = step_and_metrics
    metrics = trainer.host_metrics(device_metrics)
    check_finite(done_step, metrics)
    run.metrics_log.write({"kind": "train", "step": done_step, **metrics})
    if done_step == run.start_step + 1:
      logging.info("first step done in %.1fs (compilation included)", time.time() - started)
      run.meter.restart_clock()
    else:
      run.meter.add(metrics)
    run.last_metrics = metrics

  while step < config.train_steps:
    batch = run.assembly.model.shard_batch(next(run.data))
    run.state, device_metrics = run.assembly.train_step(run.state, batch)
    step += 1
    if pending is not None:
      record(pending)
    pending = (step, device_metrics)
    last = step == config.train_steps
    stopping = not last and run.stop_check.due(step) and run.stop_check(run, step)
    due = [action for action in run.actions if action.due(step, last=last, stopping=stopping)]
    if due or step == run.start_step + 1:
      record(pending)
      pending = None
    for action in due:
      action(run, step)
    if stopping:
      logging.info("stopped at step %d on %s; checkpoint saved: restart with the same MODEL_DIR "
                   "to continue", step, run.stop.signal_name or "another process's request")
      return TrainResult("stopped", step, config.model_dir, run.last_metrics)
  logging.info("finished: step %d, loss %.4f; checkpoint %s", step, run.last_metrics["loss"],
               checkpoints.step_directory(config.model_dir, step))
  return TrainResult("finished", step, config.model_dir, run.last_metrics)
