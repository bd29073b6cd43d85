"""The loop's cadence, on a run whose step, data and sinks are stand-ins that log what happens: metrics
fetched one step late and always before a save, evaluation or progress line; saves every
CHECKPOINT_PERIOD steps, at the last step and at a stop; evaluations every EVAL_PERIOD steps and at the
last; save and evaluation time left out of the meter; a stop request ends the run after saving; a
non-finite loss stops it before the next save. (tests/test_training.py runs the real thing.)"""
import types

import numpy as np
import pytest

from xmtf_jax.train import loop as training
from xmtf_jax.train import preemption, run_loop


class Recorder:
  """The run's step, data, checkpointer, metrics log, TensorBoard and meter, logging into `events`."""

  def __init__(self, events, bad_step=None):
    self.events, self.bad_step, self.position = events, bad_step, 0

  # data
  def __next__(self):
    self.position += 1
    return {"rows": self.position}

  def get_state(self):
    return {"position": self.position}

  def stats(self):  # what BatchSource.stats() returns before any example was cut
    return {"split": "train", "truncation": {}, "bad_lines": {}}

  # the train step: the state is the step count
  def train_step(self, state, batch):
    step = state.step + 1
    self.events.append(("step", step))
    loss = np.nan if step == self.bad_step else 1.0 / step
    return (types.SimpleNamespace(step=step, params=f"params {step}", opt_state=None),
            {"loss": np.float32(loss), "grad_norm": np.float32(1), "param_norm": np.float32(2)})

  # checkpointer, metrics log, TensorBoard
  def save(self, step, params, opt_state, metadata, input_position, force):
    assert params == f"params {step}" and input_position == {"position": step} and force
    assert metadata == {"t5_config": "tiny", "gin_config": "gin text"}
    self.events.append(("save", step))

  def write(self, record):
    if record["kind"] == "train":
      self.events.append(("fetch", record["step"]))
    elif record["kind"] == "eval":
      self.events.append(("eval", record["step"]))

  def flush(self):
    pass

  def scalars(self, kind, step, values):
    if kind == "train":
      self.events.append(("progress", step))

  # meter
  def restart_clock(self):
    pass

  def add(self, metrics):
    pass

  def exclude(self, seconds):
    self.events.append(("excluded", self.events[-1]))

  def summary(self, step):
    return {}

  def line(self, step, summary):
    return f"step {step}"


def make_run(events, stop, steps=7, start_step=0, bad_step=None, **periods):
  config = training.TrainConfig(model_dir="/nonexistent", mixture_or_task_name="unused",
                                task_feature_lengths={"inputs": 4, "targets": 2}, train_steps=steps,
                                **periods)
  fake = Recorder(events, bad_step)
  fake.position = start_step  # a resumed run's data continue where the checkpoint left them
  evaluations = [("fake", lambda step, params: {"accuracy": 0.5})]
  return run_loop.Run(
      config=config, assembly=types.SimpleNamespace(model=types.SimpleNamespace(shard_batch=dict),
                                                    train_step=fake.train_step),
      state=types.SimpleNamespace(step=start_step), start_step=start_step, data=fake,
      checkpointer=fake, metrics_log=fake, tensorboard=fake, meter=fake, stop=stop,
      stop_check=training.stop_check(config),
      actions=training.periodic_actions(config, evaluations, {"t5_config": "tiny"},
                                        lambda: "gin text"))


def test_actions_run_at_their_periods_after_the_metrics_are_fetched():
  events = []
  run = make_run(events, preemption.StopRequest(), log_period=3, checkpoint_period=4, eval_period=5)
  result = run_loop.train_loop(run)
  assert (result.status, result.step, result.last_metrics["loss"]) == ("finished", 7, np.float32(1 / 7))
  assert events == [
      ("step", 1), ("fetch", 1),  # the first step is fetched at once (compilation time)
      ("step", 2),  # no action due: fetched one step late
      ("step", 3), ("fetch", 2), ("fetch", 3), ("progress", 3),
      ("step", 4), ("fetch", 4), ("save", 4), ("excluded", ("save", 4)),
      ("step", 5), ("fetch", 5), ("eval", 5), ("excluded", ("eval", 5)),
      ("step", 6), ("fetch", 6), ("progress", 6),
      ("step", 7), ("fetch", 7), ("progress", 7), ("save", 7), ("excluded", ("save", 7)),
      ("eval", 7), ("excluded", ("eval", 7))]


def test_a_resumed_run_counts_its_first_step_from_the_start_step():
  events = []
  result = run_loop.train_loop(make_run(events, preemption.StopRequest(), steps=10, start_step=8,
                                        log_period=3, checkpoint_period=4, eval_period=50))
  assert result.status == "finished"
  # Step 9 is this process's first: fetched at once, and no progress line (its time is compilation).
  assert events == [("step", 9), ("fetch", 9),
                    ("step", 10), ("fetch", 10), ("progress", 10), ("save", 10),
                    ("excluded", ("save", 10)), ("eval", 10), ("excluded", ("eval", 10))]


def test_a_stop_request_saves_and_ends_the_run_at_the_next_step():
  events = []
  stop = preemption.StopRequest()
  run = make_run(events, stop, steps=20, log_period=100, checkpoint_period=100, eval_period=100)
  original = run.assembly.train_step

  def step_then_signal(state, batch):
    out = original(state, batch)
    if state.step + 1 == 5:
      stop.signal_name = "SIGTERM"  # what the handler does
    return out
  run.assembly.train_step = step_then_signal
  result = run_loop.train_loop(run)
  assert (result.status, result.step) == ("stopped", 5)
  # A progress line and a save at the stop; evaluation waits for the resumed run.
  assert events[-6:] == [("step", 5), ("fetch", 4), ("fetch", 5), ("progress", 5), ("save", 5),
                         ("excluded", ("save", 5))]
  assert [e for e in events if e[0] in ("save", "eval", "progress")] == [("progress", 5), ("save", 5)]


def test_a_non_finite_loss_stops_before_the_next_save():
  events = []
  with pytest.raises(run_loop.NonFiniteLossError,
                     match=r"^step 3: non-finite loss=nan\. Stopped without saving these parameters$"):
    run_loop.train_loop(make_run(events, preemption.StopRequest(), bad_step=3, log_period=100,
                                 checkpoint_period=2, eval_period=100))
  assert events == [("step", 1), ("fetch", 1), ("step", 2), ("fetch", 2), ("save", 2),
                    ("excluded", ("save", 2)), ("step", 3), ("step", 4)]  # step 3 fetched late


def test_with_several_processes_the_stop_check_runs_at_its_period_and_at_checkpoints(monkeypatch):
  config = training.TrainConfig(model_dir="/nonexistent", mixture_or_task_name="unused",
                                task_feature_lengths={"inputs": 4, "targets": 2}, train_steps=40,
                                stop_check_period=10, checkpoint_period=4)
  assert [s for s in range(1, 41) if training.stop_check(config).due(s)] == list(range(1, 41))
  monkeypatch.setattr(training.jax, "process_count", lambda: 2)
  check = training.stop_check(config)
  assert [s for s in range(1, 41) if check.due(s)] == [4, 8, 10, 12, 16, 20, 24, 28, 30, 32, 36, 40]
