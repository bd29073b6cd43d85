"""Per-chip peak numbers for the plan's step-time estimate: bf16 FLOP/s, HBM bytes/s, interconnect.

Every number is a published peak, not a measurement: the estimate built from them is a roofline, and
real steps are slower. Interconnect is modelled per mesh axis: a mesh axis is assumed to run over one
ring of the chip's interconnect, `links_per_axis` links leaving each chip along it (2 on a TPU torus
axis with wraparound: one to each neighbour, each carrying `link_bytes_per_second` one way; 1 on a
GPU, whose NVLink bandwidth through the NVSwitch is given as one link). A mesh axis laid over several
torus axes gets more in reality; this table charges it one ring (a conservative estimate).

Sources (checked 2025):
  [cloud] Cloud TPU system architecture pages, cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e}: peak bf16
          TFLOP/s and HBM bandwidth per chip.
  [book]  "How to Scale Your Model" (jax-ml.github.io/scaling-book), part 2, TPU table: ICI bandwidth
          per link, one way: v4 4.5e10, v5e 4.5e10, v5p 9e10, v6e 9e10 bytes/s.
  [nv]    NVIDIA H100 / H200 SXM datasheets: 989 TFLOP/s dense bf16 (1979 is with sparsity); HBM3
          3.35 TB/s (H100), HBM3e 4.8 TB/s (H200); NVLink 900 GB/s per GPU both ways, 450 GB/s one way.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Optional

from xmtf_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Chip:
  """One device's peaks. `links_per_axis` x `link_bytes_per_second` is the bandwidth one device has
  along one mesh axis (both ring directions together)."""
  name: str
  peak_flops: float  # bf16 FLOP/s, dense
  hbm_bytes_per_second: float
  link_bytes_per_second: float  # one link, one direction
  links_per_axis: int

  @property
  def axis_bytes_per_second(self) -> float:
    return self.link_bytes_per_second * self.links_per_axis


CHIPS = {
    # TPU v4: 275 TFLOP/s, 1200 GB/s HBM2 [cloud]; ICI 4.5e10 B/s per link one way [book]; 3-D torus.
    "v4": Chip("TPU v4", 275e12, 1.2e12, 4.5e10, 2),
    # TPU v5e (v5litepod): 197 TFLOP/s, 819 GB/s [cloud]; ICI 4.5e10 per link [book]; 2-D torus.
    "v5e": Chip("TPU v5e", 197e12, 8.19e11, 4.5e10, 2),
    # TPU v5p: 459 TFLOP/s, 2765 GB/s [cloud]; ICI 9e10 per link [book]; 3-D torus.
    "v5p": Chip("TPU v5p", 459e12, 2.765e12, 9e10, 2),
    # TPU v6e (Trillium): 918 TFLOP/s, 1640 GB/s [cloud]; ICI 9e10 per link [book]; 2-D torus.
    "v6e": Chip("TPU v6e", 918e12, 1.64e12, 9e10, 2),
    # H100 SXM: 989 TFLOP/s dense bf16, 3.35 TB/s HBM3, NVLink 450 GB/s one way [nv].
    "h100": Chip("NVIDIA H100", 989e12, 3.35e12, 4.5e11, 1),
    # H200 SXM: 989 TFLOP/s dense bf16, 4.8 TB/s HBM3e, NVLink 450 GB/s one way [nv].
    "h200": Chip("NVIDIA H200", 989e12, 4.8e12, 4.5e11, 1),
}

# device_kind strings (as jax reports them) and slice-name prefixes -> CHIPS keys; checked in order.
_PATTERNS = (
    (r"v5\s*lite|v5litepod|v5e", "v5e"),
    (r"v6\s*lite|v6e|trillium", "v6e"),
    (r"v5p|tpu v5$|tpu v5\b(?!\s*lite)", "v5p"),
    (r"\bv4\b|tpu v4|^v4", "v4"),
    (r"h200", "h200"),
    (r"h100", "h100"),
)


def chip_for(device_kind_or_topology: str) -> Optional[Chip]:
  """The chip of a jax `device_kind` ('TPU v4', 'TPU v5 lite', 'NVIDIA H100 80GB HBM3') or a topology
  name ('v4-256', 'v5e-256', 'v5litepod-16', 'cpu:8'). None for CPUs: a host CPU has no peak this
  table could stand behind, so a cpu target gets no estimate unless the caller passes a Chip.
  UserError for anything else."""
  text = device_kind_or_topology.strip().lower()
  if text == "cpu" or text.startswith("cpu:") or text.startswith("cpu "):
    return None
  for pattern, key in _PATTERNS:
    if re.search(pattern, text):
      return CHIPS[key]
  raise UserError(f"no peak numbers for {device_kind_or_topology!r}: known chips are "
                  f"{', '.join(CHIPS)} (xmtf_jax/train/hardware.py)")
