"""`python -m xmtf_jax.plan`: compile the real train step ahead of time for a TPU slice (or simulated
CPUs) and say whether it fits, without owning the hardware.

  python -m xmtf_jax.plan --gin_file=gin/models/mt5_xxl.gin --gin_file=gin/runs/mt0_recipe.gin \
      --gin_file=gin/partitioning/model_parallel_8.gin --gin_file=gin/partitioning/fsdp.gin \
      --topology=v4-256 [--output_json=plan.json]

--topology: v4-N / v5p-N (N TensorCores, N/2 chips), v5e-N / v6e-N (N chips), or cpu:N (N simulated
CPU devices; the HBM of a v4 chip is assumed). TPU slices need libtpu:
`pip install -r requirements-tpu-plan.txt` in a separate virtual environment.
Macros the train command needs but the plan does not read (MODEL_DIR, MIXTURE_OR_TASK_NAME) get
placeholder values; everything else comes from the gin files as `python -m xmtf_jax.train` reads them.
"""
from __future__ import annotations

import importlib.util
import os
import sys

_TPU_ENVIRONMENT = {"TPU_SKIP_MDS_QUERY": "1", "TPU_ACCELERATOR_TYPE": "v4-8",
                    "TPU_WORKER_HOSTNAMES": "localhost"}
_INSTALL = "pip install -r requirements-tpu-plan.txt (in a separate virtual environment)"


def _topology_argument(argv: list[str]) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith("--topology="):
      return arg.split("=", 1)[1]
    if arg == "--topology" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def prepare_environment(topology: str | None) -> None:
  """Before jax is imported: simulated CPU devices, or libtpu's settings for compiling without TPUs."""
  if topology is None:
    return
  if topology.lower().startswith("cpu:"):
    count = topology.split(":", 1)[1]
    if count.isdigit() and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
      flag = f"--xla_force_host_platform_device_count={count}"
      os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    return
  if importlib.util.find_spec("libtpu") is None:
    raise SystemExit(f"error: --topology={topology} needs libtpu to compile for TPUs: {_INSTALL}")
  for key, value in _TPU_ENVIRONMENT.items():
    os.environ.setdefault(key, value)


# At import, so that it precedes every import of jax (the shim imports this module first).
prepare_environment(_topology_argument(sys.argv[1:]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
from typing import Optional  # noqa: E402

from xmtf_jax import paths  # noqa: E402
from xmtf_jax.cli import configurables, gin_flags  # noqa: E402
from xmtf_jax.parallel import topologies  # noqa: E402
from xmtf_jax.train import plan as train_plan  # noqa: E402

PLACEHOLDERS = ("--gin.MODEL_DIR='/nonexistent/plan'", "--gin.MIXTURE_OR_TASK_NAME='plan'")


def run(argv: list[str]) -> train_plan.Plan:
  """Parses gin and flags, compiles, returns the plan (printing is `main`'s)."""
  rest = gin_flags.parse_gin(list(PLACEHOLDERS) + list(argv))
  parser = argparse.ArgumentParser(prog="python -m xmtf_jax.plan", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--topology", required=True, help="v4-128, v4-256, v5e-256, v5p-128, cpu:8, ...")
  parser.add_argument("--output_json", default=None, help="also write the plan as JSON here")
  args = parser.parse_args(rest)
  try:
    target = topologies.parse_target(args.topology)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  if target.platform == "tpu" and not topologies.libtpu_available():
    raise SystemExit(f"error: --topology={args.topology} needs libtpu to compile for TPUs: {_INSTALL}")
  try:
    train_config = configurables.TrainConfig()
  except ValueError as e:
    raise SystemExit(f"error: {e} (pass the run's gin file, e.g. --gin_file=gin/runs/mt0_recipe.gin)")
  shape = train_plan.StepShape.of(train_config)
  try:
    devices = topologies.devices(target)
  except RuntimeError as e:
    raise SystemExit(f"error: {e}") from None
  plan = train_plan.plan_train_step(
      configurables.T5Config(), configurables.OptimizerConfig(), configurables.LossConfig(),
      configurables.PartitioningConfig(), shape, devices, hbm_bytes=target.hbm_bytes_per_device,
      target=target.name)
  if args.output_json:
    paths.write_text(args.output_json, json.dumps(plan.to_dict(), indent=1))
  return plan


def main(argv: Optional[list[str]] = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  prepare_environment(_topology_argument(argv))  # a no-op if jax was imported already with them
  logging.basicConfig(level=logging.WARNING)
  plan = run(argv)
  print(plan.render())
  return 0 if plan.fits else 1
