"""Will this run fit? The real train step, compiled ahead of time for a device set nobody has to own.

`plan_train_step` gets the step from `step_assembly.assemble_step`, the function `train.loop.train`
builds its step with (mesh, model, optimizer, state shardings, abstract state, jitted step), over the
given devices (a TPU topology from libtpu, or simulated CPUs), and feeds it the assembly's abstract
state and an abstract batch, ShapeDtypeStructs with shardings: nothing is allocated. It lowers and
compiles the step and reads back from XLA, per device: the bytes of parameters, optimizer state, the
input batch and temporaries, the peak; FLOPs per step; the collectives in the program. `Plan.render()`
prints them with a verdict against the chip's HBM and, when it does not fit, a suggestion.

XLA's numbers are per device (`memory_analysis`, `cost_analysis`). Its cost analysis counts the body
of a `while` loop once, so with scanned layers or micro-batches the FLOPs it reports are those of one
iteration; `Plan` multiplies nothing and says which loops there are.
"""
from __future__ import annotations

import dataclasses
import re
import time
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xmtf_jax.data import batch_source
from xmtf_jax.errors import UserError
from xmtf_jax.model import family
from xmtf_jax.parallel import hlo_collectives, partitioning
from xmtf_jax.train import hardware, losses, optim, step_assembly, step_time, trainer

GIB = 2**30
# Leave this much of HBM for XLA's runtime reservations and fragmentation.
HBM_HEADROOM = 0.95


@dataclasses.dataclass(frozen=True)
class StepShape:
  """The batch the step is compiled for and the step's settings (TrainConfig's fields of the same
  names)."""
  batch_size: int
  task_feature_lengths: Mapping[str, int]
  use_packing: bool = False
  settings: step_assembly.StepSettings = step_assembly.StepSettings()

  @classmethod
  def of(cls, train_config: Any) -> "StepShape":
    return cls(batch_size=train_config.batch_size,
               task_feature_lengths=dict(train_config.task_feature_lengths),
               use_packing=train_config.use_packing,
               settings=step_assembly.StepSettings.of(train_config))

  @property
  def num_microbatches(self) -> int:
    return self.settings.num_microbatches


@dataclasses.dataclass
class Plan:
  """Everything `render` prints; `to_dict` is the JSON. Bytes are per device."""
  target: str
  device_kind: str
  num_devices: int
  mesh: dict
  model: dict
  step: dict
  num_parameters: int
  parameter_bytes: int
  optimizer_state_bytes: int
  batch_bytes: int
  temp_bytes: int
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  generated_code_bytes: int
  peak_bytes: int  # arguments + outputs - donated (aliased) + temporaries + code, or XLA's if larger
  xla_peak_bytes: int
  hbm_bytes: int
  flops_per_device: float
  flops_six_n_tokens: float
  flops_model: float
  collectives: dict
  lower_seconds: float
  compile_seconds: float
  suggestion: str = ""
  compile_error: str = ""  # XLA's out-of-memory refusal, when it refused (the numbers are its estimate)
  collectives_error: str = ""  # why the compiled program's collectives could not be read
  bytes_accessed: float = 0.0  # XLA's cost analysis, per device (a loop body counted once)
  optimal_seconds: Optional[float] = None  # XLA's cost-model step time, where the backend reports it
  collectives_by_axis: Optional[dict] = None  # mesh axes -> kind -> stats (hlo_collectives)
  estimate: Optional[step_time.StepTimeEstimate] = None  # None: no chip numbers (cpu targets)
  # training_flops_per_step of what XLA's cost analysis counts: one iteration of each loop (one layer
  # per scanned stack, one micro-batch); flops_model / this scales XLA's counts to the whole step.
  flops_model_counted: float = 0.0

  @property
  def fits(self) -> bool:
    return self.peak_bytes <= self.hbm_bytes * HBM_HEADROOM

  def to_dict(self) -> dict:
    out = dataclasses.asdict(self)
    out["fits"] = self.fits
    out["estimate"] = self.estimate.to_dict() if self.estimate else None
    return out

  def _peak_source(self) -> str:
    """Which figure `peak_bytes` is. XLA's own peak estimate is shown beside the sum only where it is
    comparable: XLA:CPU's leaves out the temporaries (MiB beside GiB), so it is not shown there."""
    if self.compile_error:
      return "with the temporaries XLA's out-of-memory error names"
    if self.xla_peak_bytes >= self.peak_bytes:
      return "XLA's peak-memory estimate"
    text = "arguments + outputs - donated + temporaries + code"
    if self.xla_peak_bytes >= self.peak_bytes / 2:
      text += f"; XLA's own estimate {self.xla_peak_bytes / GIB:.2f} GiB"
    return text

  def render(self) -> str:
    gib = lambda n: f"{n / GIB:8.2f} GiB" if n >= GIB / 10 else f"{n / 2**20:8.2f} MiB"
    lines = [
        f"plan for {self.target}: {self.num_devices} x {self.device_kind}, mesh {self.mesh}",
        f"model: {self.model}",
        f"step: {self.step}",
        f"parameters: {self.num_parameters:,}",
        "per device:",
        f"  parameters       {gib(self.parameter_bytes)}",
        f"  optimizer state  {gib(self.optimizer_state_bytes)}",
        f"  input batch      {gib(self.batch_bytes)}",
        f"  temporaries      {gib(self.temp_bytes)}   (activations, gradients, XLA buffers)",
        f"  code             {gib(self.generated_code_bytes)}",
        f"  peak             {gib(self.peak_bytes)}   of {self.hbm_bytes / GIB:g} GiB "
        f"({100 * self.peak_bytes / self.hbm_bytes:.0f}%; {self._peak_source()})",
        f"FLOPs per step: XLA {self.flops_per_device * self.num_devices:.3e} "
        f"({self.flops_per_device:.3e} per device{'; loop bodies counted once' if self.step.get('loops') else ''})"
        f", 6*N*tokens {self.flops_six_n_tokens:.3e}, training_flops_per_step {self.flops_model:.3e}",
    ]
    if self.collectives:
      lines.append("collectives per step (count, MiB per device):")
    if self.collectives_error:
      lines.append(f"collectives: not read (XLA could not print the compiled program: {self.collectives_error})")
    for kind, stats in sorted(self.collectives.items()):
      dtypes = ", ".join(f"{d} {b / 2**20:.1f}" for d, b in sorted(stats["dtypes"].items()))
      lines.append(f"  {kind:<20}{stats['count']:>7}{stats['bytes'] / 2**20:>12.1f}   ({dtypes})")
    for axes, kinds in sorted((self.collectives_by_axis or {}).items()):
      parts = ", ".join(f"{kind} {s['bytes'] / 2**20:.1f}" for kind, s in sorted(kinds.items()))
      lines.append(f"  on mesh axes {axes:<11} ({parts}) MiB")
    if self.estimate:
      lines.append(self.estimate.render())
    elif not self.compile_error:
      lines.append("step time: no estimate (no peak numbers for this device kind; cpu targets get none)")
    lines.append(f"lower {self.lower_seconds:.1f} s, compile {self.compile_seconds:.1f} s")
    if self.compile_error:
      lines.append(f"XLA refused to compile: {self.compile_error}")
    if self.fits:
      lines.append(f"verdict: fits ({(self.hbm_bytes * HBM_HEADROOM - self.peak_bytes) / GIB:.2f} GiB to "
                   f"spare of {HBM_HEADROOM:.0%} HBM)")
    else:
      lines.append(f"verdict: does not fit by {(self.peak_bytes - self.hbm_bytes * HBM_HEADROOM) / GIB:.2f} "
                   f"GiB ({HBM_HEADROOM:.0%} of HBM usable)")
    if self.suggestion:
      lines.append(f"suggestion: {self.suggestion}")
    return "\n".join(lines)


def abstract_batch(mesh: Any, shape: StepShape, feature_layout: str = "encoder_decoder"
                   ) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch the train loop feeds, as int32 ShapeDtypeStructs with rows over `data`."""
  rows = partitioning.data_sharding(mesh)
  shapes = batch_source.batch_shapes(shape.task_feature_lengths, shape.batch_size, shape.use_packing,
                                     feature_layout)
  return {name: jax.ShapeDtypeStruct(dims, jnp.int32, sharding=rows) for name, dims in shapes.items()}


def bytes_per_device(tree: Any) -> int:
  """Bytes of one device's shards of a tree of ShapeDtypeStructs with shardings (the largest shard)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shard = leaf.sharding.shard_shape(tuple(leaf.shape))
    total += int(np.prod(shard, dtype=np.int64)) * jnp.dtype(leaf.dtype).itemsize
  return total


def _hbm_oom_temporaries(message: str) -> Optional[int]:
  """Bytes of temporaries from XLA:TPU's compile-time out-of-memory error, or None for other errors."""
  match = re.search(r"HLO temporaries \(([\d.]+)([KMGT])\) exceeds available HBM", message)
  if "RESOURCE_EXHAUSTED" not in message or not match:
    return None
  return int(float(match.group(1)) * 1024 ** (" KMGT".index(match.group(2))))


def collectives(hlo_text: str) -> dict:
  return hlo_collectives.count_collectives(hlo_text)


def program_text(compiled: Any) -> tuple[Optional[str], str]:
  """(the compiled step's HLO text, "") or (None, XLA's first error line) when XLA cannot print the
  program: libtpu 0.0.52 compiles for v5p but fails a RET_CHECK on an async-update instruction when
  converting it to text. The memory and FLOPs are read before, so the plan still has its verdict."""
  if compiled is None:
    return None, ""
  try:
    return compiled.as_text(), ""
  except jax.errors.JaxRuntimeError as e:
    return None, str(e).splitlines()[0]


def compiled_collectives(compiled: Any) -> tuple[dict, str]:
  """(collectives, "") of a compiled step, or ({}, why not) as `program_text` says."""
  text, error = program_text(compiled)
  return (collectives(text) if text else {}), error


def _optimal_seconds(cost: Optional[Mapping]) -> Optional[float]:
  """XLA's cost-model time, or None where the backend reports none (XLA:CPU) or a meaningless one
  (libtpu 0.0.52 reported -73.7 s for the mt5-xxl step on v4-256)."""
  value = float((cost or {}).get("optimal_seconds", 0.0))
  return value if value > 0 else None


def _chip(device_kind: str) -> Optional[hardware.Chip]:
  try:
    return hardware.chip_for(device_kind)
  except UserError:  # a device the table lacks: the plan stands without an estimate
    return None


def suggest(plan: Plan, model_config: family.ModelConfig, partitioning_config: partitioning.PartitioningConfig,
            shape: StepShape, data_size: int) -> str:
  """A change likely to fit, from a linear model: activations shrink with the micro-batch size.

  An estimate, not a promise: rerun the plan with the suggestion to check it.
  """
  usable = plan.hbm_bytes * HBM_HEADROOM
  state = plan.parameter_bytes + plan.optimizer_state_bytes
  if state > 0.8 * usable:
    if not partitioning_config.parameter_sharding_2d:
      return ("parameters and optimizer state alone take "
              f"{state / GIB:.1f} GiB: shard them over `data` too (--gin_file=gin/partitioning/fsdp.gin)")
    return (f"parameters and optimizer state alone take {state / GIB:.1f} GiB even with 2-D sharding: "
            "use more devices or more model partitions (PartitioningConfig.num_partitions)")
  rows_per_shard = shape.batch_size // max(data_size, 1)
  fixed = plan.peak_bytes - plan.temp_bytes
  activations = plan.temp_bytes
  if shape.num_microbatches == 1:
    fixed += plan.parameter_bytes  # the float32 gradient accumulator micro-batching adds
  m = shape.num_microbatches
  while m * 2 <= rows_per_shard and rows_per_shard % (m * 2) == 0:
    m *= 2
    estimate = fixed + activations * shape.num_microbatches / m
    if estimate <= usable:
      return (f"NUM_MICROBATCHES={m} (--gin.NUM_MICROBATCHES={m}; estimated peak "
              f"{estimate / GIB:.1f} GiB, activations scale with the micro-batch)")
  if model_config.remat_policy in ("none", "dots"):
    return ("micro-batches alone will not do: set --gin.REMAT_POLICY=\"'minimal'\" (recompute each layer "
            "in the backward pass), then plan again")
  return "use more devices, longer sequences split into micro-batches, or more model partitions"


def plan_train_step(model_config: family.ModelConfig, optimizer_config: optim.OptimizerConfig,
                    loss_config: losses.LossConfig, partitioning_config: partitioning.PartitioningConfig,
                    shape: StepShape, devices: Sequence[Any], *, hbm_bytes: int,
                    target: str = "", chip: Optional[hardware.Chip] = None) -> Plan:
  """Lowers and compiles the real train step for `devices` from abstract inputs; see the module doc.
  The step-time estimate uses `chip`, or the table's entry for the devices' kind (none for CPUs)."""
  assembly = step_assembly.assemble_step(model_config, partitioning_config, optimizer_config,
                                         loss_config, shape.settings, devices=devices)
  mesh, state = assembly.mesh, assembly.abstract_state
  batch = abstract_batch(mesh, shape, family.feature_layout(model_config))
  started = time.perf_counter()
  lowered = assembly.train_step.lower(state, batch)
  lowered_at = time.perf_counter()
  compiled, compile_error = None, ""
  try:
    compiled = lowered.compile()
  except Exception as e:  # noqa: BLE001  XLA:TPU refuses programs that cannot fit: that is an answer
    temporaries = _hbm_oom_temporaries(str(e))
    if temporaries is None:
      raise
    compile_error = str(e).splitlines()[0]
  compiled_at = time.perf_counter()

  state_bytes = bytes_per_device(state.params) + bytes_per_device(state.opt_state)
  if compiled is not None:
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    field = lambda name: int(getattr(memory, name, 0) or 0)
    argument, output, alias = (field("argument_size_in_bytes"), field("output_size_in_bytes"),
                               field("alias_size_in_bytes"))
    temp, code = field("temp_size_in_bytes"), field("generated_code_size_in_bytes")
    xla_peak = field("peak_memory_in_bytes")
  else:  # what the error says XLA needed; the state and batch are the donated arguments
    cost, code, xla_peak = {}, 0, 0
    argument = output = alias = state_bytes + bytes_per_device(batch)
    temp = temporaries
  peak = max(xla_peak, argument + output - alias + temp + code)
  text, collectives_error = program_text(compiled)
  found_collectives = collectives(text) if text else {}
  by_axis = hlo_collectives.collectives_by_axis(text, dict(mesh.shape)) if text else {}
  lengths = shape.task_feature_lengths
  num_parameters = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  tokens = shape.batch_size * (lengths["inputs"] + lengths["targets"])
  loops = [name for name, on in (("layers", model_config.scan_layers),
                                 ("micro-batches", shape.num_microbatches > 1)) if on]
  counted_config = model_config
  if model_config.scan_layers:
    counted_config = dataclasses.replace(model_config,
                                         num_encoder_layers=min(1, model_config.num_encoder_layers),
                                         num_decoder_layers=min(1, model_config.num_decoder_layers))
  plan = Plan(
      target=target, device_kind=str(getattr(devices[0], "device_kind", "?")), num_devices=len(devices),
      mesh=dict(mesh.shape),
      model={k: getattr(model_config, k) for k in ("d_model", "d_ff", "num_heads", "d_kv",
                                                   "num_encoder_layers", "num_decoder_layers", "dtype",
                                                   "remat_policy", "scan_layers")},
      step={"batch_size": shape.batch_size, "lengths": dict(lengths), "num_microbatches": shape.num_microbatches,
            "parameter_sharding_2d": partitioning_config.parameter_sharding_2d, "loops": loops},
      num_parameters=num_parameters, parameter_bytes=bytes_per_device(state.params),
      optimizer_state_bytes=bytes_per_device(state.opt_state), batch_bytes=bytes_per_device(batch),
      temp_bytes=temp, argument_bytes=argument, output_bytes=output, alias_bytes=alias,
      generated_code_bytes=code, peak_bytes=peak, xla_peak_bytes=xla_peak, hbm_bytes=hbm_bytes,
      flops_per_device=float(cost.get("flops", 0.0)) if cost else 0.0,
      flops_six_n_tokens=6.0 * num_parameters * tokens,
      flops_model=trainer.training_flops_per_step(model_config, shape.batch_size, lengths["inputs"],
                                                  lengths["targets"]),
      collectives=found_collectives, collectives_error=collectives_error,
      lower_seconds=lowered_at - started, compile_seconds=compiled_at - lowered_at,
      compile_error=compile_error,
      bytes_accessed=float(cost.get("bytes accessed", 0.0)) if cost else 0.0,
      optimal_seconds=_optimal_seconds(cost),
      collectives_by_axis=by_axis,
      flops_model_counted=trainer.training_flops_per_step(
          counted_config, shape.batch_size // shape.num_microbatches, lengths["inputs"], lengths["targets"]))
  chip = chip or _chip(plan.device_kind)
  if chip is not None and compiled is not None:
    plan.estimate = step_time.estimate(plan, chip)
  if not plan.fits:
    plan.suggestion = suggest(plan, model_config, partitioning_config, shape, mesh.shape["data"])
  return plan
