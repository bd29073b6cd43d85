"""An estimate of the train step's time and MFU from the compiled program's counts and a chip's peaks.

Per device, from the `Plan` (XLA's cost analysis and the program's collectives):
  compute_seconds = FLOPs / peak FLOP/s
  hbm_seconds     = bytes accessed / HBM bytes/s
  communication   = per mesh axis, the sum over its collectives of ring cost x bytes / axis bandwidth,
                    with the ring costs for a group of n devices, on the bytes `hlo_collectives` counts
                    (all-reduce: the array; all-gather: the gathered array; reduce-scatter: the shard):
                      all-reduce 2(n-1)/n x bytes, all-gather (n-1)/n x bytes,
                      reduce-scatter (n-1) x shard bytes (= (n-1)/n x the full array),
                      all-to-all 1 x bytes; collective-permute 1 x bytes over one link, one way
                      (it sends to one peer), the others over the axis' links_per_axis.
  seconds            = max(compute, hbm) + sum of communication   (no overlap: a roofline for the
                       device's own work, then every collective waits)
  seconds_overlapped = max(compute, hbm, sum of communication)    (perfect overlap)
  mfu                = model FLOPs per step / devices / seconds / peak (`training_flops_per_step`, the
                       6ND-style count of useful work: recomputation under remat lowers the MFU).
Collectives spanning several mesh axes are charged at one axis' bandwidth; '?' (groups not read) too.

XLA's cost analysis counts a `while` body once. With loops (scanned layers, micro-batches), FLOPs
and bytes accessed are both scaled by `loop_scale` = the model's FLOPs of the whole step / those of
what XLA counted (one layer per scanned stack, one micro-batch: `Plan.flops_model_counted`). This
keeps XLA's own ratio of executed to model FLOPs (remat recomputation, elementwise work) and assumes
the loop bodies hold the same share of bytes as of FLOPs: an estimate. The FLOPs are never taken below
the model's own (`training_flops_per_step` / devices): XLA:TPU's count for the scanned mt5-xxl step
on v4-256 (2.77e13 per device) is below the model FLOPs of one layer per stack plus the LM head
(3.69e13), so its loop bodies are not simply counted once there. Collectives need no scaling:
`hlo_collectives` multiplies by trip counts.
`xla_optimal_seconds` is XLA's own cost-model time where the backend reports it (None elsewhere).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

from xmtf_jax.train import hardware

_NO_OVERLAP = "max(compute, hbm) + communication"


def ring_factor(kind: str, n: int) -> float:
  """How many times the counted bytes cross a device's links for one collective over n devices."""
  if n <= 1:
    return 0.0
  if kind == "all-reduce":
    return 2.0 * (n - 1) / n
  if kind == "all-gather":
    return (n - 1) / n
  if kind == "reduce-scatter":
    return float(n - 1)
  return 1.0  # all-to-all, collective-permute, broadcasts: every byte once


def axis_seconds(kinds: Mapping[str, Mapping], chip: hardware.Chip) -> float:
  """Seconds of one mesh axis' collectives (`hlo_collectives.collectives_by_axis`'s entry for it): at
  the axis bandwidth, except a collective-permute, which sends to one peer over one link."""
  total = 0.0
  for kind, stats in kinds.items():
    bandwidth = chip.link_bytes_per_second if kind == "collective-permute" else chip.axis_bytes_per_second
    total += ring_factor(kind, stats["group_size"]) * stats["bytes"] / bandwidth
  return total


@dataclasses.dataclass(frozen=True)
class StepTimeEstimate:
  """Seconds per step, per device, by part; see the module doc for the formulas."""
  chip: str
  seconds: float
  seconds_overlapped: float
  compute_seconds: float
  hbm_seconds: float
  communication_seconds: dict  # mesh axes -> seconds
  mfu: float
  mfu_overlapped: float
  xla_optimal_seconds: Optional[float]
  flops: float  # per device, after loop_scale
  bytes_accessed: float  # per device, after loop_scale
  loop_scale: float

  @property
  def communication_total(self) -> float:
    return sum(self.communication_seconds.values())

  def to_dict(self) -> dict:
    return dict(dataclasses.asdict(self), label="estimate", formula=_NO_OVERLAP)

  def render(self) -> str:
    bound = max((("compute", self.compute_seconds), ("HBM", self.hbm_seconds),
                 ("communication", self.communication_total)), key=lambda x: x[1])[0]
    comm = ", ".join(f"{axis} {s * 1e3:.1f} ms" for axis, s in sorted(self.communication_seconds.items()))
    lines = [
        f"step time (estimate, {self.chip} peaks; roofline, not a measurement):",
        f"  {self.seconds * 1e3:.1f} ms without overlap ({_NO_OVERLAP}), MFU {self.mfu:.1%}; "
        f"{self.seconds_overlapped * 1e3:.1f} ms with full overlap, MFU {self.mfu_overlapped:.1%}; "
        f"{bound}-bound",
        f"  compute {self.compute_seconds * 1e3:.1f} ms ({self.flops:.3e} FLOPs per device), HBM "
        f"{self.hbm_seconds * 1e3:.1f} ms ({self.bytes_accessed / 2**30:.2f} GiB accessed per device)"
        + (f", loop bodies scaled x{self.loop_scale:.2f}" if self.loop_scale != 1.0 else ""),
        f"  communication {self.communication_total * 1e3:.1f} ms" + (f" ({comm})" if comm else ""),
    ]
    if self.xla_optimal_seconds is not None:
      lines.append(f"  XLA's own cost-model estimate (optimal_seconds): {self.xla_optimal_seconds * 1e3:.1f} ms")
    return "\n".join(lines)


def estimate(plan, chip: hardware.Chip) -> StepTimeEstimate:
  """The estimate of `plan` (a `train.plan.Plan`) on `chip`."""
  loop_scale = 1.0
  model_per_device = plan.flops_model / plan.num_devices
  if plan.step.get("loops") and plan.flops_model_counted > 0:
    loop_scale = plan.flops_model / plan.flops_model_counted
  flops = max(plan.flops_per_device * loop_scale, model_per_device)
  bytes_accessed = plan.bytes_accessed * loop_scale
  compute = flops / chip.peak_flops
  hbm = bytes_accessed / chip.hbm_bytes_per_second
  communication = {axes: axis_seconds(kinds, chip) for axes, kinds in (plan.collectives_by_axis or {}).items()}
  total_comm = sum(communication.values())
  seconds = max(compute, hbm) + total_comm
  overlapped = max(compute, hbm, total_comm)
  mfu = lambda s: model_per_device / s / chip.peak_flops if s > 0 else 0.0
  return StepTimeEstimate(
      chip=chip.name, seconds=seconds, seconds_overlapped=overlapped, compute_seconds=compute,
      hbm_seconds=hbm, communication_seconds=communication, mfu=mfu(seconds), mfu_overlapped=mfu(overlapped),
      xla_optimal_seconds=plan.optimal_seconds, flops=flops, bytes_accessed=bytes_accessed,
      loop_scale=loop_scale)
