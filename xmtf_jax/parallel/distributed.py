"""Starting JAX's multi-process runtime from command-line flags shared by the entry points.

  --multiprocess                    jax.distributed.initialize() with auto-detection (Cloud TPU pod
                                    slices, SLURM, Open MPI): run the same command on every host.
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
                                    explicit setup (e.g. several processes on one machine, GPUs).

CPU-only processes exchange collectives through gloo (set here before initialising).
"""
from __future__ import annotations

import argparse
import logging
from typing import Optional, Sequence

import jax


def add_flags(parser: argparse.ArgumentParser) -> None:
  group = parser.add_argument_group("several processes")
  group.add_argument("--multiprocess", action="store_true",
                     help="initialise jax.distributed with auto-detection (TPU pod slices, SLURM)")
  group.add_argument("--coordinator_address", default=None, help="HOST:PORT of process 0")
  group.add_argument("--num_processes", type=int, default=None)
  group.add_argument("--process_id", type=int, default=None)


def initialize_from_flags(args: argparse.Namespace) -> None:
  initialize(args.coordinator_address, args.num_processes, args.process_id, auto=args.multiprocess)


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, auto: bool = False) -> None:
  """Initialises jax.distributed when asked to (explicitly or with `auto`); otherwise does nothing."""
  if coordinator_address is None and not auto:
    if num_processes not in (None, 1) or process_id not in (None, 0):
      raise SystemExit("--num_processes/--process_id need --coordinator_address=HOST:PORT")
    return
  if coordinator_address is not None and (num_processes is None or process_id is None):
    raise SystemExit("--coordinator_address needs --num_processes and --process_id")
  # Only affects the CPU backend (tests, CPU clusters); harmless on TPU/GPU.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator_address is None:
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  logging.info("process %d of %d; %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def parse_known(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  parser = argparse.ArgumentParser(add_help=False)
  add_flags(parser)
  return parser.parse_known_args(list(argv))
