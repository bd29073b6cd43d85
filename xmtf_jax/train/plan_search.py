"""Which mesh, remat policy and micro-batch count is fastest? `python -m xmtf_jax.plan --search`.

Fitting is not enough: users rent pods by the hour. The search compiles the real step
(`plan.plan_train_step`) for every setting a topology allows (data x model splits, FSDP on/off, remat
policies, micro-batch counts), estimates each compiled program's step time (`step_time.estimate`, a
roofline) and ranks the ones that fit by that estimate.

Cost control, because each real-size compile takes minutes: micro-batch counts are a ladder per
(mesh, FSDP, remat) tried from the fewest up, and the ladder stops at the first count that fits (more
micro-batches only add FSDP gathers and loop overhead, never FLOPs saved) or when parameters and
optimizer state alone do not fit (micro-batches cannot help); `exhaustive` compiles every rung.
`search_run` orders the ladders, skips those that cannot fit or cannot win, and limits each compile's
time. Each result is cached on disk as one JSON per candidate (keyed by everything else the step
depends on), so a rerun skips the done ones.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable, Optional, Sequence

import jax

from xmtf_jax import paths
from xmtf_jax.errors import UserError
from xmtf_jax.model import network
from xmtf_jax.parallel import partitioning, topologies
from xmtf_jax.train import losses, optim
from xmtf_jax.train import hardware, step_time
from xmtf_jax.train import plan as train_plan

GIB = 2**30
# Tensor parallelism beyond 16 devices per model replica is slow on every interconnect we plan for
# (each layer's activations are summed over the axis); larger axes only on request.
DEFAULT_MAX_MODEL_AXIS = 16
DEFAULT_MICROBATCHES = (1, 2, 4, 8)
# Host memory one ahead-of-time compile may take (mt5-xxl for v4-256 peaks near this): the default
# worker count is min(cores, available memory / this).
COMPILE_HOST_GIB = 6.0


@dataclasses.dataclass(frozen=True, order=True)
class Candidate:
  """One setting to compile: the mesh (`data` x `model`), FSDP, remat policy, micro-batches."""
  data: int
  model: int
  fsdp: bool
  remat: str
  microbatches: int

  @property
  def key(self) -> str:
    return f"d{self.data}-m{self.model}-{'fsdp' if self.fsdp else 'nofsdp'}-{self.remat}-mb{self.microbatches}"

  @property
  def mesh(self) -> str:
    return f"{self.data} x {self.model}"

  def bindings(self, config_name: str) -> list[str]:
    """gin bindings that select this candidate (after every other file and binding of the run)."""
    return [f"PartitioningConfig.num_partitions = {self.model}",
            f"PartitioningConfig.num_data_partitions = {self.data}",
            f"PartitioningConfig.parameter_sharding_2d = {self.fsdp}",
            f"{config_name}.remat_policy = {self.remat!r}",
            f"TrainConfig.num_microbatches = {self.microbatches}"]


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  """What to try; None: the default for the model and topology (see `candidate_groups`)."""
  model: Optional[tuple[int, ...]] = None
  fsdp: tuple[bool, ...] = (False, True)
  remat: Optional[tuple[str, ...]] = None
  microbatches: tuple[int, ...] = DEFAULT_MICROBATCHES


@dataclasses.dataclass(frozen=True)
class SearchBase:
  """Everything the step depends on besides the candidate (pickled to the worker processes)."""
  model_config: Any
  optimizer_config: optim.OptimizerConfig
  loss_config: losses.LossConfig
  partitioning_config: partitioning.PartitioningConfig
  shape: train_plan.StepShape
  target: str
  hbm_bytes: int

  def fingerprint(self) -> str:
    """Changes whenever the compiled program or its recorded fields may: the configs (less what a
    candidate sets), the target, HBM, jax's version, the fields of `Plan`."""
    plan_fields = [f.name for f in dataclasses.fields(train_plan.Plan)]  # a cached plan's schema
    # Without the fields every candidate sets itself: run gins that differ only in those share a cache.
    searched = dataclasses.replace(
        self, model_config=dataclasses.replace(self.model_config, remat_policy="none"),
        partitioning_config=dataclasses.replace(self.partitioning_config, num_partitions=1,
                                                num_data_partitions=-1, parameter_sharding_2d=False),
        shape=dataclasses.replace(self.shape, settings=dataclasses.replace(self.shape.settings,
                                                                           num_microbatches=1)))
    text = repr((searched, jax.__version__, topologies.libtpu_available(), plan_fields))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass
class Row:
  """One compiled (or failed) candidate: its plan, the step-time estimate, where it came from."""
  candidate: Candidate
  plan: Optional[train_plan.Plan] = None
  estimate: Optional[Any] = None  # step_time.StepTimeEstimate
  error: str = ""  # the compile failed, or "timed out after N s" (search_run)
  cached: bool = False
  skipped: str = ""  # why it was not compiled (search_run: cannot fit, cannot win)

  @property
  def fits(self) -> bool:
    return self.plan is not None and self.plan.fits

  def sort_key(self) -> tuple:
    seconds = self.estimate.seconds_overlapped if self.estimate is not None else float("inf")
    group = 0 if self.fits else (1 if self.plan is not None else (3 if self.skipped else 2))
    return (group, seconds, self.candidate)

  def to_dict(self) -> dict:
    return {"candidate": dataclasses.asdict(self.candidate), "key": self.candidate.key, "fits": self.fits,
            "peak_gib": self.plan.peak_bytes / GIB if self.plan else None,
            "estimate": self.estimate.to_dict() if self.estimate is not None else None, "error": self.error,
            "skipped": self.skipped, "cached": self.cached, "plan": self.plan.to_dict() if self.plan else None}


def _values(text: str, cast: Callable[[str], Any], key: str) -> tuple:
  try:
    values = tuple(cast(v.strip()) for v in text.split(",") if v.strip())
  except ValueError:
    raise UserError(f"--search_space {key}={text}: not a comma list of {cast.__name__} values") from None
  if not values:
    raise UserError(f"--search_space {key}=: give at least one value")
  return values


def _on_off(text: str) -> bool:
  if text.lower() in ("on", "true", "1", "yes"):
    return True
  if text.lower() in ("off", "false", "0", "no"):
    return False
  raise ValueError(text)


def parse_space(text: str) -> SearchSpace:
  """`model=2,4;fsdp=on;remat=minimal,dots;microbatches=1,2` (any subset; `;` or spaces between)."""
  space = SearchSpace()
  casts = {"model": int, "fsdp": _on_off, "remat": str, "microbatches": int}
  for item in text.replace(";", " ").split():
    key, sep, value = item.partition("=")
    if not sep or key not in casts:
      raise UserError(f"--search_space: {item!r} is not KEY=V1,V2 with KEY one of {', '.join(casts)}")
    values = _values(value, casts[key], key)
    if key == "remat":
      unknown = [v for v in values if v not in network.REMAT_POLICIES]
      if unknown:
        raise UserError(f"--search_space remat={value}: {unknown} unknown; choose from "
                        f"{sorted(network.REMAT_POLICIES)}")
    if key in ("model", "microbatches") and min(values) < 1:
      raise UserError(f"--search_space {key}={value}: sizes are >= 1")
    space = dataclasses.replace(space, **{key: values})
  return space


def canonical_remat(name: str) -> str:
  """The first name of a policy with several ('full' is 'minimal'): compiled once, shown once."""
  for other, policy in network.REMAT_POLICIES.items():
    if policy is network.REMAT_POLICIES[name]:
      return other
  return name


def model_axes(model_config: Any, num_devices: int, batch_size: int,
               requested: Optional[Sequence[int]] = None) -> list[int]:
  """`model` axis sizes: dividing the devices, heads, MLP and vocabulary (else the rules would leave
  those replicated), with a `data` axis that divides the batch."""
  sizes = (model_config.num_heads, model_config.d_ff, model_config.vocab_size)

  def why_not(m: int) -> str:
    if num_devices % m:
      return f"does not divide the {num_devices} devices"
    if any(s % m for s in sizes):
      return f"does not divide heads, MLP and vocabulary {sizes}"
    if batch_size % (num_devices // m):
      return f"leaves a data axis of {num_devices // m}, which does not divide the batch of {batch_size}"
    return ""
  if requested is not None:
    for m in requested:
      if why_not(m):
        raise UserError(f"--search_space model={m}: {why_not(m)}")
    return sorted(set(requested))
  return [m for m in range(1, min(num_devices, DEFAULT_MAX_MODEL_AXIS) + 1) if not why_not(m)]


def candidate_groups(space: SearchSpace, model_config: Any, num_devices: int, batch_size: int
                     ) -> list[list[Candidate]]:
  """Micro-batch ladders, one per (mesh, FSDP, remat), fewest micro-batches first.

  Defaults: model axes up to 16; FSDP both ways (not where `data` is 1 or does not divide d_model:
  the rules would shard nothing more); remat 'minimal' and 'dots' plus the model config's own; the
  micro-batch counts that keep whole rows per data shard.
  """
  remats = space.remat or ("minimal", "dots", model_config.remat_policy)
  remats = list(dict.fromkeys(canonical_remat(r) for r in remats))
  groups = []
  for m in model_axes(model_config, num_devices, batch_size, space.model):
    data = num_devices // m
    for fsdp in dict.fromkeys(space.fsdp):
      if fsdp and (data == 1 or model_config.d_model % data):
        continue
      for remat in remats:
        ladder = [Candidate(data, m, fsdp, remat, k) for k in sorted(set(space.microbatches))
                  if batch_size % (data * k) == 0]
        if ladder:
          groups.append(ladder)
  if not groups:
    raise UserError(f"--search_space leaves nothing to compile for {num_devices} devices and batch "
                    f"{batch_size}: widen it")
  return groups


def compile_candidate(base: SearchBase, candidate: Candidate) -> dict:
  """The plan of one candidate as a dict (worker processes return it), or {"error": ...}."""
  model_config = dataclasses.replace(base.model_config, remat_policy=candidate.remat)
  mesh = dataclasses.replace(base.partitioning_config, num_partitions=candidate.model,
                             num_data_partitions=candidate.data, parameter_sharding_2d=candidate.fsdp)
  settings = dataclasses.replace(base.shape.settings, num_microbatches=candidate.microbatches)
  shape = dataclasses.replace(base.shape, settings=settings)
  try:
    devices = topologies.devices(topologies.parse_target(base.target))
    plan = train_plan.plan_train_step(model_config, base.optimizer_config, base.loss_config, mesh, shape,
                                      devices, hbm_bytes=base.hbm_bytes, target=base.target)
  except Exception as e:  # noqa: BLE001  one candidate's failure is a row of the table, not the end
    return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
  return {"plan": plan.to_dict()}


def plan_from_dict(data: dict) -> train_plan.Plan:
  """The plan of a cached result, without its own estimate (the search makes one for its chip)."""
  fields = {f.name: data[f.name] for f in dataclasses.fields(train_plan.Plan) if f.name in data}
  return train_plan.Plan(**dict(fields, estimate=None))


def default_workers(num_devices_platform: str) -> int:
  """min(cores, available memory / COMPILE_HOST_GIB); 1 where memory cannot be read."""
  cores = os.cpu_count() or 1
  try:
    with open("/proc/meminfo") as f:  # local-only: the host's memory
      fields = dict(line.split(":", 1) for line in f)
    available = int(fields["MemAvailable"].split()[0]) * 1024 / GIB
  except (OSError, KeyError, ValueError):
    return 1
  per_compile = COMPILE_HOST_GIB if num_devices_platform == "tpu" else 1.0
  return max(1, min(cores, int(available // per_compile)))


class _Cache:
  """One JSON per candidate under `folder` (None: in memory only), valid for one base fingerprint."""

  def __init__(self, folder: Optional[str], fingerprint: str):
    self.folder, self.fingerprint = folder, fingerprint

  def _path(self, candidate: Candidate) -> str:
    return paths.join(self.folder, candidate.key + ".json")

  def get(self, candidate: Candidate) -> Optional[dict]:
    if self.folder is None or not paths.exists(self._path(candidate)):
      return None
    try:
      saved = json.loads(paths.read_text(self._path(candidate)))
    except ValueError:
      return None
    return saved["result"] if saved.get("fingerprint") == self.fingerprint else None

  def put(self, candidate: Candidate, result: dict) -> None:
    if self.folder is not None:
      paths.makedirs(self.folder)
      paths.write_text(self._path(candidate), json.dumps({"fingerprint": self.fingerprint,
                                                          "result": result}, indent=1))


def chip_of(target: str) -> hardware.Chip:
  """The chip the estimates use without --chip: the target's, or for cpu:N a v4 chip (as the plan
  assumes its HBM there)."""
  return hardware.chip_for(target) or hardware.chip_for("v4")


def _row(candidate: Candidate, result: dict, cached: bool, chip: hardware.Chip) -> Row:
  if "error" in result:
    return Row(candidate, error=result["error"], cached=cached)
  plan = plan_from_dict(result["plan"])
  # A program XLA refused has no FLOPs or collectives to estimate from.
  estimate = None if plan.compile_error else step_time.estimate(plan, chip)
  return Row(candidate, plan=plan, estimate=estimate, cached=cached)


def short(estimate: Optional[Any]) -> str:
  if estimate is None:
    return "no estimate"
  return f"estimate {estimate.seconds_overlapped:.3g} s/step, MFU {100 * estimate.mfu_overlapped:.1f}%"


def sort_rows(rows: Sequence[Row]) -> list[Row]:
  """Fitting rows by estimated (overlapped) step time, then those that do not fit, then failures and
  time-outs, then the skipped."""
  return sorted(rows, key=Row.sort_key)
