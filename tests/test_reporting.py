"""What a person watching a run sees: the progress line, metrics.jsonl and TensorBoard after restarts."""
import json
import os

import pytest
from tensorboard.backend.event_processing import event_accumulator

from xmtf_jax.train import reporting


def _metrics(loss, token_loss, tokens=10.0, z_loss=0.0):
  return {"loss": loss + z_loss, "cross_entropy": loss, "z_loss": z_loss, "token_loss": token_loss,
          "accuracy": 0.5, "num_target_tokens": tokens, "num_input_tokens": tokens,
          "learning_rate": 1e-3}


def test_progress_line_shows_the_per_token_loss_when_the_normalisation_hides_it():
  meter = reporting.ProgressMeter(10, 1.0, 1, None)
  meter.add(_metrics(0.002, 3.6, tokens=10))
  meter.add(_metrics(0.004, 3.0, tokens=30))
  summary = meter.summary(2)
  assert summary["token_loss"] == pytest.approx((3.6 * 10 + 3.0 * 30) / 40)
  line = meter.line(2, summary)
  assert "loss 0.0030 (per token 3.1500)" in line, line
  meter.add(_metrics(2.5, 2.5, z_loss=0.01))
  # Per-token normalisation: said once (the z-loss in `loss` is no reason to repeat it).
  assert "per token" not in meter.line(3, meter.summary(3))


def _scalar_steps(log_dir, tag="loss"):
  accumulator = event_accumulator.EventAccumulator(log_dir)
  accumulator.Reload()
  return [event.step for event in accumulator.Scalars(tag)]


def test_tensorboard_hides_what_a_killed_run_logged_after_the_restored_step(tmp_path):
  model_dir = str(tmp_path)
  first = reporting.TensorBoard(model_dir, start_step=0)
  for step in range(1, 8):  # killed at 7; its last checkpoint was 4
    first.scalars("train", step, {"loss": float(step)})
  first.close()
  resumed = reporting.TensorBoard(model_dir, start_step=4)
  for step in range(5, 10):
    resumed.scalars("train", step, {"loss": 10.0 + step})
  resumed.close()
  assert _scalar_steps(os.path.join(model_dir, "train")) == list(range(1, 10))
  accumulator = event_accumulator.EventAccumulator(os.path.join(model_dir, "train"))
  values = {e.step: e.value for e in accumulator.Reload().Scalars("loss")}
  assert values[4] == 4.0 and values[5] == 15.0  # the resumed run's steps, once each


def test_metrics_log_restarted_from_scratch_keeps_nothing_of_the_killed_run(tmp_path):
  log = reporting.MetricsLog(str(tmp_path))
  for step in (1, 2, 3):
    log.write({"kind": "train", "step": step, "loss": 1.0})
  log.flush()
  reporting.MetricsLog(str(tmp_path)).truncate_after(0)  # what the loop does with no checkpoint
  assert reporting.read_metrics(str(tmp_path)) == []


def test_loss_curve_plots_per_token_and_optimised_loss(tmp_path):
  with open(tmp_path / reporting.METRICS_FILE, "w") as f:
    for step in range(1, 6):
      f.write(json.dumps({"kind": "train", "step": step, "loss": 0.002 / step,
                          "token_loss": 3.6 / step}) + "\n")
    f.write(json.dumps({"kind": "eval", "name": "validation", "step": 5, "loss": 3.0}) + "\n")
  path = reporting.plot_loss_curve(str(tmp_path))
  assert path and os.path.getsize(path) > 1000
