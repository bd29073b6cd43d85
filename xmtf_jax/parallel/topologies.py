"""Devices to compile for without owning them: TPU slices through libtpu's topology descriptions, or
simulated CPU devices, plus the memory of each chip (for "does it fit").

Slice names follow Cloud TPU: `v4-N` and `v5p-N` count TensorCores (two per chip, used as one megacore
device: N/2 devices), `v5e-N` (alias `v5litepod-N`) and `v6e-N` count chips (one core each). `cpu:N`
is N simulated host devices (`--xla_force_host_platform_device_count`, set before jax is imported:
the planner's entry point does it, and sets `TPU_ENVIRONMENT` for TPU targets).

libtpu (requirements-tpu-plan.txt) compiles for a topology on a machine without TPUs; install it in a
separate virtual environment, since with it installed every JAX process looks for a TPU first.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

import jax
from jax.experimental import topologies as jax_topologies

from xmtf_jax.errors import UserError

GIB = 2**30

# High-bandwidth memory per device (chip), bytes.
HBM_BYTES = {"v4": 32 * GIB, "v5e": 16 * GIB, "v5p": 95 * GIB, "v6e": 32 * GIB,
             "h100": 80 * GIB, "h200": 141 * GIB}

# Chip grids of the slice shapes Cloud TPU offers (3-D torus for v4/v5p, 2-D for v5e/v6e).
_GRID_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
            256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16), 4096: (16, 16, 16)}
_GRID_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
            256: (16, 16)}
# generation -> (libtpu name, TensorCores per chip in the slice name, grid dimensions)
_GENERATIONS = {"v4": ("v4", 2, 3), "v5p": ("v5p", 2, 3), "v5e": ("v5e", 1, 2),
                "v5litepod": ("v5e", 1, 2), "v6e": ("v6e", 1, 2)}
# Environment libtpu reads at start-up; these values stop it from looking for TPU metadata servers.
TPU_ENVIRONMENT = {"TPU_SKIP_MDS_QUERY": "1", "TPU_ACCELERATOR_TYPE": "v4-8",
                   "TPU_WORKER_HOSTNAMES": "localhost"}
INSTALL_HINT = "pip install -r requirements-tpu-plan.txt (in a separate virtual environment)"


@dataclasses.dataclass(frozen=True)
class Target:
  """What to compile for: `name` as given, `platform` 'tpu' or 'cpu', `num_devices`, HBM per device."""
  name: str
  platform: str
  generation: str
  num_devices: int
  hbm_bytes_per_device: int


def parse_target(name: str) -> Target:
  """'v4-256' -> Target(tpu, 128 devices, 32 GiB); 'cpu:8' -> 8 simulated devices (HBM of a v4 chip,
  so that CPU plans read like TPU ones)."""
  text = name.strip().lower()
  if text.startswith("cpu:"):
    count = text[4:]
    if not count.isdigit() or int(count) < 1:
      raise UserError(f"--topology={name}: write cpu:N with N >= 1 simulated devices")
    return Target(name, "cpu", "cpu", int(count), HBM_BYTES["v4"])
  generation, _, count = text.rpartition("-")
  if generation not in _GENERATIONS or not count.isdigit():
    raise UserError(f"--topology={name}: expected a slice name like v4-256, v5e-256, v5p-128, v6e-64 "
                    "or cpu:8")
  libtpu_name, cores_per_chip, dims = _GENERATIONS[generation]
  chips = int(count) // cores_per_chip
  grids = _GRID_3D if dims == 3 else _GRID_2D
  if int(count) % cores_per_chip or chips not in grids:
    sizes = sorted(n * cores_per_chip for n in grids)
    raise UserError(f"--topology={name}: {generation} slices come in sizes {sizes}")
  return Target(name, "tpu", libtpu_name, chips, HBM_BYTES[libtpu_name])


def topology_arguments(target: Target) -> dict:
  """Keyword arguments of `jax.experimental.topologies.get_topology_desc` for a TPU target."""
  _, _, dims = _GENERATIONS["v5e" if target.generation == "v5e" else target.generation]
  grid = (_GRID_3D if dims == 3 else _GRID_2D)[target.num_devices]
  arguments = {"platform": "tpu", "topology_name": f"{target.generation}:{'x'.join(map(str, grid))}",
               "num_slices": 1}
  if dims == 3:
    # Without "megacore", v4 exposes both TensorCores of a chip as devices; training uses one per chip.
    arguments["chip_config_name"] = "megacore"
    arguments["chips_per_host_bounds"] = (2, 2, 1)
  else:
    arguments["chips_per_host_bounds"] = (2, 4, 1) if target.num_devices == 8 else (
        min(2, grid[0]), min(2, grid[1]), 1)
  return arguments


def libtpu_available() -> bool:
  return importlib.util.find_spec("libtpu") is not None


def devices(target: Target) -> list[Any]:
  """The devices to build the mesh from: the topology's (abstract TPU devices) or the local CPUs.

  TPU: libtpu must be installed and jax imported with `TPU_ENVIRONMENT` set (`python -m xmtf_jax.plan`
  does both). CPU: jax must have been imported with enough simulated devices.
  """
  if target.platform == "cpu":
    found = jax.devices("cpu")
    if len(found) < target.num_devices:
      raise RuntimeError(f"--topology={target.name}: only {len(found)} CPU devices; set "
                         f"XLA_FLAGS=--xla_force_host_platform_device_count={target.num_devices} "
                         "before jax is imported")
    return found[:target.num_devices]
  if not libtpu_available():
    raise RuntimeError(f"--topology={target.name} needs libtpu to compile for TPUs: {INSTALL_HINT}")
  for key, value in TPU_ENVIRONMENT.items():  # libtpu reads them when its backend first starts
    os.environ.setdefault(key, value)
  return list(jax_topologies.get_topology_desc(**topology_arguments(target)).devices)


def tpu_devices(name: str) -> list[Any]:
  """The devices of the TPU slice `name`, e.g. 'v4-8' (libtpu required)."""
  return devices(parse_target(name))
