"""`python -m xmtf_jax.plan`: compile the real train step ahead of time for a TPU slice (or simulated
CPUs) and say whether it fits, and an estimate of its step time and MFU, without owning the hardware.

  python -m xmtf_jax.plan --gin_file=gin/models/mt5_xxl.gin --gin_file=gin/runs/mt0_recipe.gin \
      --gin_file=gin/partitioning/model_parallel_8.gin --gin_file=gin/partitioning/fsdp.gin \
      --topology=v4-256 [--output_json=plan.json]

--topology: v4-N / v5p-N (N TensorCores, N/2 chips), v5e-N / v6e-N (N chips), or cpu:N (N simulated
CPU devices, planned against a v4 chip's 32 GiB of HBM unless --hbm_gib says otherwise). TPU slices
need libtpu: `pip install -r requirements-tpu-plan.txt` in a separate virtual environment.
The gin files are read as `python -m xmtf_jax.train` reads them, after gin/runs/finetune.gin (which
every run file includes), so a model gin file alone plans finetune.gin's step (batch 128, 1024/1024
tokens). The plan needs no MODEL_DIR, mixture or VOCABULARY_PATH: settings only training reads are not
checked.

The plan goes to stdout, logs to stderr. Exit status: 0 it fits, 3 it does not fit, 2 a mistake in
the command (gin, flags, topology).

The step time is an estimate (a roofline from the chip's peak FLOP/s, HBM and interconnect bandwidth in
xmtf_jax/train/hardware.py; see xmtf_jax/train/step_time.py), printed with its parts; --chip=NAME
picks the chip's numbers (cpu:N targets get none unless it is given).
"""
from __future__ import annotations

import importlib.util
import os
import sys

from xmtf_jax.cli import quiet_start  # standard library only until called

_TPU_ENVIRONMENT = {"TPU_SKIP_MDS_QUERY": "1", "TPU_ACCELERATOR_TYPE": "v4-8",
                    "TPU_WORKER_HOSTNAMES": "localhost"}
EXIT_FITS, EXIT_USER_ERROR, EXIT_DOES_NOT_FIT = 0, 2, 3
# --search's time limit per candidate compile on TPU targets (mt5-xl's fitting v4-128 compiles take
# 1.5 to 5 minutes on a 2-core machine; the pure data-parallel ones that ran past 15 never won).
DEFAULT_SEARCH_TIMEOUT_S = 300
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
    print(f"error: --topology={topology} needs libtpu to compile for TPUs: {_INSTALL}", file=sys.stderr)
    raise SystemExit(EXIT_USER_ERROR)
  for key, value in _TPU_ENVIRONMENT.items():
    os.environ.setdefault(key, value)


# At import, so that it precedes every import of jax (the shim imports this module first).
prepare_environment(_topology_argument(sys.argv[1:]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
quiet_start.import_tensorflow()  # without its C++ start-up lines on stderr

import json  # noqa: E402
import logging  # noqa: E402
from typing import Optional  # noqa: E402

from xmtf_jax import paths  # noqa: E402
from xmtf_jax.cli import configurables, gin_flags, usage  # noqa: E402
from xmtf_jax.errors import UserError  # noqa: E402
from xmtf_jax.parallel import topologies  # noqa: E402
from xmtf_jax.train import hardware  # noqa: E402
from xmtf_jax.train import plan as train_plan  # noqa: E402
from xmtf_jax.train import plan_search, search_report, search_run  # noqa: E402

# Read before the user's gin files: every run file includes it, and it gives a model file alone a step.
RUN_DEFAULTS = "gin/runs/finetune.gin"
# Macros only training reads (RUN_DEFAULTS, or a recipe such as bloomz_recipe.gin, defines them as
# required): placeholders the plan never uses. Bound before the user's flags, so a user's value wins.
PLACEHOLDERS = ("--gin.MODEL_DIR='/nonexistent/plan'", "--gin.MIXTURE_OR_TASK_NAME='plan'",
                "--gin.VOCABULARY_PATH='/nonexistent/plan'")


def _setup(argv: list[str]) -> tuple:
  """Parses gin and flags: (args, target, devices, hbm_bytes, shape, chip or None)."""
  parser = usage.plan_parser()
  parser.parse_known_args(argv)  # --topology is checked before gin is read
  rest = gin_flags.parse_gin(list(PLACEHOLDERS) + list(argv), default_files=[RUN_DEFAULTS])
  args = parser.parse_args(rest)
  target = topologies.parse_target(args.topology)  # ValueError: a user's mistake
  if target.platform == "tpu" and not topologies.libtpu_available():
    raise UserError(f"--topology={args.topology} needs libtpu to compile for TPUs: {_INSTALL}")
  if args.hbm_gib is not None and not args.hbm_gib > 0:
    raise UserError(f"--hbm_gib={args.hbm_gib}: give the memory per device in GiB, e.g. --hbm_gib=16")
  if args.chip is not None and args.chip.lower() not in hardware.CHIPS:
    raise UserError(f"--chip={args.chip}: give one of {', '.join(hardware.CHIPS)}")
  chip = hardware.CHIPS[args.chip.lower()] if args.chip else None
  train_config = configurables.TrainConfig()
  if not train_config.task_feature_lengths:
    raise UserError("TrainConfig.task_feature_lengths is not set: the plan needs the step's token "
                    "lengths, e.g. --gin.TASK_FEATURE_LENGTHS=\"{'inputs': 1024, 'targets': 256}\"")
  shape = train_plan.StepShape.of(train_config)
  try:
    devices = topologies.devices(target)
  except RuntimeError as e:
    raise UserError(str(e)) from None
  hbm_bytes = int(args.hbm_gib * topologies.GIB) if args.hbm_gib else target.hbm_bytes_per_device
  return args, target, devices, hbm_bytes, shape, chip


def run(argv: list[str]) -> train_plan.Plan:
  """Parses gin and flags, compiles, returns the plan (printing is `main`'s)."""
  args, target, devices, hbm_bytes, shape, chip = _setup(argv)
  plan = train_plan.plan_train_step(
      configurables.model_config(), configurables.OptimizerConfig(), configurables.LossConfig(),
      configurables.PartitioningConfig(), shape, devices, hbm_bytes=hbm_bytes, target=target.name,
      chip=chip)
  if args.output_json:
    paths.write_text(args.output_json, json.dumps(plan.to_dict(), indent=1))
  return plan


def search(argv: list[str], progress=lambda line: print(line, file=sys.stderr, flush=True)
           ) -> tuple[str, list, Optional[plan_search.Row]]:
  """`--search`: compiles the candidates, returns (what to print, rows, the best fitting row)."""
  # Worker processes each load libtpu to compile (no TPU is opened): without this, the second one
  # stops at libtpu's one-process lockfile.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  args, target, devices, hbm_bytes, shape, chip = _setup(argv)
  chip = chip or plan_search.chip_of(target.name)
  model_config = configurables.model_config()
  base = plan_search.SearchBase(model_config, configurables.OptimizerConfig(), configurables.LossConfig(),
                                configurables.PartitioningConfig(), shape, target.name, hbm_bytes)
  space = plan_search.parse_space(args.search_space or "")
  groups = plan_search.candidate_groups(space, model_config, len(devices), shape.batch_size)
  if args.search_workers is not None and args.search_workers < 1:
    raise UserError(f"--search_workers={args.search_workers}: give 1 or more")
  workers = args.search_workers or plan_search.default_workers(target.platform)
  if args.search_timeout_s is not None and args.search_timeout_s < 0:
    raise UserError(f"--search_timeout_s={args.search_timeout_s:g}: give seconds, or 0 for no limit")
  timeout_s = args.search_timeout_s
  if timeout_s is None:  # real-size TPU compiles take minutes; cpu:N ones seconds
    timeout_s = DEFAULT_SEARCH_TIMEOUT_S if target.platform == "tpu" else 0
  timeout_s = timeout_s or None
  cache = None
  if args.output_json:
    cache = (args.output_json[:-5] if args.output_json.endswith(".json") else args.output_json) + ".candidates"
  progress(f"search: {len(groups)} (mesh, fsdp, remat) settings, micro-batches "
           f"{'every count' if args.search_exhaustive else 'until one fits'}, {workers} worker(s), "
           f"{f'{timeout_s:g} s' if timeout_s else 'no'} time limit per compile"
           + (f", cache {cache}" if cache else ""))
  rows = search_run.run_search(base, groups, chip, workers=workers, cache_folder=cache,
                               exhaustive=args.search_exhaustive, timeout_s=timeout_s, progress=progress)
  chip_name = chip.name + (" (assumed for cpu:N; --chip picks another)"
                           if target.platform == "cpu" and not args.chip else "")
  text = [memory_note(argv), search_report.render_table(rows, target.name, chip_name)]
  best = search_report.best_fitting(rows)
  files, bindings, _ = gin_flags.split_gin_args(argv)
  config_name = type(model_config).__name__
  command = f"python -m xmtf_jax.plan --search --topology={target.name}"
  body = search_report.gin_body(best, files, bindings, config_name, command) if best else ""
  if best:
    text += ["", "best as flags (after the run's own):", "  " + search_report.gin_flags(best, config_name),
             "", "best as a gin file:", body.rstrip()]
  else:
    text += ["", "nothing fits: widen --search_space (more micro-batches, remat, model axes) or use more devices"]
  if args.output_json:
    paths.write_text(args.output_json, json.dumps(
        {"target": target.name, "chip": chip.name, "rows": [row.to_dict() for row in rows],
         "best": best.candidate.key if best else None, "gin_file": body,
         "gin_flags": search_report.gin_flags(best, config_name) if best else ""}, indent=1))
  return "\n".join(text), rows, best


def memory_note(argv: list[str]) -> str:
  """Which memory per device the verdict is against, and where that figure comes from."""
  args, _ = usage.plan_parser().parse_known_args(argv)
  target = topologies.parse_target(args.topology)
  if args.hbm_gib:
    return f"memory per device: {args.hbm_gib:g} GiB (--hbm_gib)"
  if target.platform == "cpu":
    return (f"memory per device: {target.hbm_bytes_per_device / topologies.GIB:.0f} GiB assumed (a v4 "
            "chip's HBM; cpu:N devices have none of their own): pass --hbm_gib=N to plan for another")
  return f"memory per device: {target.hbm_bytes_per_device / topologies.GIB:.0f} GiB ({target.generation} HBM)"


def main(argv: Optional[list[str]] = None) -> int:
  """Prints the plan on stdout; returns EXIT_FITS or EXIT_DOES_NOT_FIT (user errors raise UserError,
  which `errors.run` prints as a paragraph with exit status 2)."""
  argv = sys.argv[1:] if argv is None else list(argv)
  if usage.help_requested(argv):
    usage.plan_parser().print_help()
    return EXIT_FITS
  prepare_environment(_topology_argument(argv))  # a no-op if jax was imported already with them
  logging.basicConfig(level=logging.WARNING)
  if "--search" in argv:
    text, _, best = search(argv)
    print(text, flush=True)
    return EXIT_FITS if best else EXIT_DOES_NOT_FIT
  plan = run(argv)
  print(memory_note(argv))
  print(plan.render(), flush=True)
  return EXIT_FITS if plan.fits else EXIT_DOES_NOT_FIT
