"""What a person watching a run sees: one progress line per logging period, a metrics JSONL, TensorBoard
event files and, at the end, a loss-curve PNG. Only process 0 writes files.

A progress line:

  step 200/1000  loss 3.214  acc 0.412  lr 1.0e-03  tokens/s 18.2k  s/step 0.041  MFU n/a  ETA 0:00:33

`tokens/s` counts real (non-padding) input + target tokens; MFU divides the step's matmul FLOPs on the
padded shapes (trainer.training_flops_per_step) by the devices' peak (PEAK_FLOPS_PER_DEVICE by device
kind, bfloat16 dense; "n/a" on CPU unless TrainConfig.peak_flops_per_device is given).
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Mapping, Optional

import jax

from xmtf_jax import paths
from xmtf_jax.progress import format_duration

METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"

# Peak dense bfloat16 FLOP/s per device (per chip; per GPU), from the vendors' spec sheets.
PEAK_FLOPS_PER_DEVICE = {
    "TPU v2": 45e12 / 2,  # a v2 chip has 2 devices (cores)
    "TPU v3": 123e12 / 2,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5": 459e12,  # v5p
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,  # v6e (Trillium)
    "TPU v6e": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
    "NVIDIA L4": 121e12,
}


def peak_flops_per_device(device_kind: str, override: Optional[float] = None) -> Optional[float]:
  """Peak FLOP/s of one device of `device_kind`; the longest matching table prefix; None if unknown."""
  if override:
    return float(override)
  matches = [k for k in PEAK_FLOPS_PER_DEVICE if device_kind.startswith(k)]
  return PEAK_FLOPS_PER_DEVICE[max(matches, key=len)] if matches else None


def _si(x: float) -> str:
  for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(x) >= scale:
      return f"{x / scale:.1f}{unit}"
  return f"{x:.0f}"


class MetricsLog:
  """Appends one JSON object per line to MODEL_DIR/metrics.jsonl (process 0 only).

  Train lines: {"kind": "train", "step": s, "loss": ..., ...} for every step; eval lines:
  {"kind": "eval", "step": s, "name": ..., ...}. When a run (re)starts, `truncate_after(step)` drops
  the lines of steps a killed run had done after the state it continues from (its last checkpoint, or
  step 0 when none was written), so the file reads as one uninterrupted run.
  On a bucket an object cannot grow: lines are kept here and the whole file is uploaded at most every
  `flush_seconds`, on `flush()` (the train loop calls it before each checkpoint) and at the end.
  """

  def __init__(self, model_dir: str, flush_seconds: float = 30.0):
    self.path = paths.join(model_dir, METRICS_FILE)
    self.enabled = jax.process_index() == 0
    self._remote = paths.is_remote(model_dir)
    self._pending: list[str] = []
    self._flush_seconds = flush_seconds
    self._flushed_at = time.time()
    if self.enabled:
      paths.makedirs(model_dir)

  def truncate_after(self, step: int) -> None:
    if not self.enabled or not paths.exists(self.path):
      return
    kept = [line for line in read_metrics(self.path) if line.get("step", 0) <= step]
    paths.write_text(self.path, "".join(json.dumps(line) + "\n" for line in kept))

  def write(self, record: Mapping) -> None:
    if self.enabled:
      self._pending.append(json.dumps(dict(record)) + "\n")
      if not self._remote or time.time() - self._flushed_at >= self._flush_seconds:
        self.flush()

  def flush(self) -> None:
    if self.enabled and self._pending:
      paths.append_text(self.path, "".join(self._pending))
      self._pending = []
      self._flushed_at = time.time()


def read_metrics(path: str, kind: Optional[str] = None) -> list[dict]:
  """The records of a metrics.jsonl (a file or a MODEL_DIR), optionally only one kind."""
  if paths.isdir(path):
    path = paths.join(path, METRICS_FILE)
  records = []
  with paths.open(path) as f:
    for line in f:
      if line.strip():
        record = json.loads(line)
        if kind is None or record.get("kind") == kind:
          records.append(record)
  return records


class TensorBoard:
  """Scalars under MODEL_DIR/train and MODEL_DIR/eval (tensorboardX; process 0 only).

  start_step: the step the run continues from (0 for a fresh start). Each writer opens with a purge
  marker at start_step + 1, so TensorBoard hides what a killed run logged after the state it resumes
  from: its curves read as one uninterrupted run, as metrics.jsonl does.
  """

  def __init__(self, model_dir: str, start_step: int = 0):
    self._writers = {}
    self._model_dir = model_dir
    self._purge_step = start_step + 1
    self.enabled = jax.process_index() == 0

  def scalars(self, kind: str, step: int, values: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    if kind not in self._writers:
      from tensorboardX import SummaryWriter
      # Event files are named by the second they were opened in: the suffix keeps a restart within
      # the same second from overwriting the file of the run it continues.
      self._writers[kind] = SummaryWriter(paths.join(self._model_dir, kind),
                                          purge_step=self._purge_step,
                                          filename_suffix=f".from_step_{self._purge_step - 1:09d}")
    writer = self._writers[kind]
    for name, value in values.items():
      if isinstance(value, (int, float)) and math.isfinite(value):
        writer.add_scalar(name, value, step)
    if not paths.is_remote(self._model_dir):
      writer.flush()  # on a bucket each flush uploads the whole event file: left to flush_secs/close

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()


class ProgressMeter:
  """Accumulates per-step metrics over a logging period and formats the progress line."""

  def __init__(self, total_steps: int, flops_per_step: float, num_devices: int,
               peak_flops_per_device: Optional[float]):
    self.total_steps = total_steps
    self.flops_per_step = flops_per_step
    self.peak_flops = None if peak_flops_per_device is None else peak_flops_per_device * num_devices
    self._reset(time.time())

  def _reset(self, now: float) -> None:
    self._start = now
    self._steps = 0
    self._sums = {"loss": 0.0, "cross_entropy": 0.0, "token_loss": 0.0, "correct": 0.0, "target_tokens": 0.0,
                  "tokens": 0.0}
    self._last = {}

  def restart_clock(self) -> None:
    """Start a new period from now (after compilation)."""
    self._reset(time.time())

  def exclude(self, seconds: float) -> None:
    """Leave time spent outside training steps (saving, evaluating) out of the rates."""
    self._start += seconds

  def add(self, metrics: Mapping[str, float]) -> None:
    self._steps += 1
    self._sums["loss"] += metrics["loss"]
    self._sums["cross_entropy"] += metrics.get("cross_entropy", metrics["loss"])
    self._sums["token_loss"] += metrics.get("token_loss", metrics["loss"]) * metrics["num_target_tokens"]
    self._sums["correct"] += metrics["accuracy"] * metrics["num_target_tokens"]
    self._sums["target_tokens"] += metrics["num_target_tokens"]
    self._sums["tokens"] += metrics["num_target_tokens"] + metrics["num_input_tokens"]
    self._last = dict(metrics)

  def summary(self, step: int) -> dict[str, float]:
    """Averages over the period since the last summary, and restarts the period."""
    now = time.time()
    seconds = max(now - self._start, 1e-9)
    n = max(self._steps, 1)
    seconds_per_step = seconds / n
    out = {
        "loss": self._sums["loss"] / n,
        "cross_entropy": self._sums["cross_entropy"] / n,
        "token_loss": self._sums["token_loss"] / max(self._sums["target_tokens"], 1.0),
        "accuracy": self._sums["correct"] / max(self._sums["target_tokens"], 1.0),
        "learning_rate": self._last.get("learning_rate", float("nan")),
        "tokens_per_second": self._sums["tokens"] / seconds,
        "seconds_per_step": seconds_per_step,
        "eta_seconds": seconds_per_step * (self.total_steps - step),
    }
    if self.peak_flops:
      out["mfu"] = self.flops_per_step / seconds_per_step / self.peak_flops
    self._reset(now)
    return out

  def line(self, step: int, summary: Mapping[str, float]) -> str:
    mfu = f"{100 * summary['mfu']:.1f}%" if "mfu" in summary else "n/a"
    width = len(str(self.total_steps))
    # With 'fixed' or per-sequence normalisation the optimised loss is not per token: show both. (Its
    # cross-entropy part equals the per-token loss exactly when the normalisation is per token; the
    # z-loss alone is no reason to show it.)
    token_loss = summary.get("token_loss", summary["loss"])
    same = math.isclose(token_loss, summary.get("cross_entropy", summary["loss"]), rel_tol=1e-4,
                        abs_tol=1e-6)
    per_token = "" if same else f" (per token {token_loss:.4f})"
    return (f"step {step:>{width}}/{self.total_steps}  loss {summary['loss']:.4f}{per_token}  "
            f"acc {summary['accuracy']:.3f}  lr {summary['learning_rate']:.2e}  "
            f"tokens/s {_si(summary['tokens_per_second'])}  s/step {summary['seconds_per_step']:.3f}  "
            f"MFU {mfu}  ETA {format_duration(summary['eta_seconds'])}")


def plot_loss_curve(model_dir: str, output: Optional[str] = None) -> Optional[str]:
  """Writes MODEL_DIR/loss_curve.png from metrics.jsonl: the train loss per target token beside the
  validation loss (also per token), and the optimised loss on a second axis when the normalisation
  makes it differ (t5x's 'fixed' factor gives values near 0)."""
  path = paths.join(model_dir, METRICS_FILE)
  if jax.process_index() != 0 or not paths.exists(path):
    return None
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  train = read_metrics(path, "train")
  evals = [r for r in read_metrics(path, "eval") if "loss" in r and r.get("name") == "validation"]
  fig, ax = plt.subplots(figsize=(7, 4))
  steps = [r["step"] for r in train]
  token_loss = [r.get("token_loss", r["loss"]) for r in train]
  handles = []
  if train:
    handles += ax.plot(steps, token_loss, lw=0.8, label="train loss per token")
  if evals:
    handles += ax.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-",
                       label="validation loss per token")
  if train and any(not math.isclose(r.get("cross_entropy", r["loss"]), t, rel_tol=1e-4, abs_tol=1e-6)
                   for r, t in zip(train, token_loss)):
    objective = ax.twinx()
    handles += objective.plot(steps, [r["loss"] for r in train], lw=0.6, color="tab:gray",
                              alpha=0.7, label="train loss as optimised (right axis)")
    objective.set_ylabel("optimised loss")
  ax.set_xlabel("step")
  ax.set_ylabel("loss per target token")
  ax.set_title("/".join(paths.abspath(model_dir).rstrip("/").replace(os.sep, "/").split("/")[-2:]))
  ax.grid(alpha=0.3)
  if handles:
    ax.legend(handles=handles, labels=[h.get_label() for h in handles])
  output = output or paths.join(model_dir, LOSS_CURVE_FILE)
  fig.tight_layout()
  paths.save_figure(fig, output, dpi=100)
  plt.close(fig)
  return output
