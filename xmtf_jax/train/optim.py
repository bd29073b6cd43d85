"""Adafactor (optax) with t5x's finetuning defaults, and learning-rate schedules.

Defaults are the mT0 recipe's inherited t5x setup: second-moment decay 1 - step^-0.8, no momentum,
update clipping at RMS 1.0, step size relative to each parameter's RMS ("parameter scale"), factored
second moments for matrices whose two largest dimensions are >= 128, and a constant learning rate 1e-3.

Factoring: optax factors the two largest dimensions of a parameter when both are >= 128. Our attention
kernels are 3-D ([embed, heads, kv], [heads, kv, embed]) and kv is 64, so optax alone would keep a full
second moment for them. mT5 was trained (mesh-tf / t5x) with these kernels as 2-D matrices
[d_model, heads*kv], factored; `factor_joined_heads` (on by default) reproduces that by running
Adafactor on [embed, heads*kv] views of them (`joined_heads_shapes`). Update clipping and the parameter
scale are per tensor, so the reshape changes nothing else.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

SCHEDULES = ("constant", "linear_warmup", "rsqrt", "cosine")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Adafactor and its learning-rate schedule (gin: `OptimizerConfig.*`, macro LEARNING_RATE).

  learning_rate: the peak (or constant) rate.
  schedule: 'constant'; 'linear_warmup' (0 -> learning_rate over warmup_steps, then constant);
    'rsqrt' (learning_rate * sqrt(warmup_steps / max(step, warmup_steps)): t5x's pretraining
    `constant * rsqrt_decay` with base 1.0 is learning_rate = 1/sqrt(warmup_steps));
    'cosine' (linear warmup, then cosine decay to final_learning_rate at decay_steps).
  decay_rate, decay_offset, momentum, clipping_threshold, multiply_by_parameter_scale, factored,
    min_dim_size_to_factor, epsilon, weight_decay_rate: optax.adafactor's arguments, except
    decay_offset: the steps an initial checkpoint's optimizer had taken (1_000_000 for the mT5
    checkpoints), so the second-moment decay at our step s is t5x's at step s + decay_offset:
    1 - (s + decay_offset + 1) ** -decay_rate.
  max_grad_norm: clip gradients to this global norm before Adafactor (None: off, as in t5x).
  factor_joined_heads: factor attention kernels as [embed, heads*kv] matrices (see module docstring).
  """
  learning_rate: float = 1e-3
  schedule: str = "constant"
  warmup_steps: int = 0
  decay_steps: Optional[int] = None
  final_learning_rate: float = 0.0
  decay_rate: float = 0.8
  decay_offset: int = 0
  momentum: Optional[float] = None
  clipping_threshold: Optional[float] = 1.0
  multiply_by_parameter_scale: bool = True
  factored: bool = True
  min_dim_size_to_factor: int = 128
  epsilon: float = 1e-30
  weight_decay_rate: Optional[float] = None
  max_grad_norm: Optional[float] = None
  factor_joined_heads: bool = True

  def __post_init__(self):
    if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
      raise ValueError(f"OptimizerConfig.learning_rate={self.learning_rate} must be finite and > 0")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"OptimizerConfig.schedule={self.schedule!r}: choose one of {SCHEDULES}")
    if self.schedule in ("linear_warmup", "rsqrt") and self.warmup_steps < 1:
      raise ValueError(f"OptimizerConfig.schedule={self.schedule!r} needs warmup_steps >= 1")
    if self.decay_offset < 0:
      raise ValueError(f"OptimizerConfig.decay_offset={self.decay_offset} must be >= 0 (the steps "
                       "the initial checkpoint was trained for, e.g. 1000000 for mT5)")
    if self.schedule == "cosine" and not self.decay_steps:
      raise ValueError("OptimizerConfig.schedule='cosine' needs decay_steps (e.g. %TRAIN_STEPS)")


def learning_rate_schedule(config: OptimizerConfig) -> Callable[[jnp.ndarray], jnp.ndarray]:
  """step (int, 0-based count of updates already applied) -> learning rate (float32)."""
  lr, warmup = config.learning_rate, config.warmup_steps
  if config.schedule == "constant":
    return optax.constant_schedule(lr)
  if config.schedule == "linear_warmup":
    return optax.linear_schedule(0.0, lr, warmup)
  if config.schedule == "rsqrt":
    return lambda step: lr * jnp.sqrt(warmup / jnp.maximum(jnp.asarray(step, jnp.float32), warmup))
  return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, config.decay_steps,
                                            config.final_learning_rate)


def joined_heads_shapes(param_logical_axes: Any, abstract_params: Any) -> dict[str, tuple]:
  """{parameter path (jax keystr): (shape, 2-D shape)} for parameters with adjacent heads, kv axes."""
  is_spec = lambda x: isinstance(x, PartitionSpec)
  specs = {jax.tree_util.keystr(path): tuple(spec) for path, spec in
           jax.tree_util.tree_flatten_with_path(param_logical_axes, is_leaf=is_spec)[0]}
  shapes = {}
  for path, param in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
    name, axes, shape = jax.tree_util.keystr(path), specs[jax.tree_util.keystr(path)], param.shape
    for i in range(len(axes) - 1):
      if axes[i:i + 2] == ("heads", "kv"):
        shapes[name] = (tuple(shape), shape[:i] + (shape[i] * shape[i + 1],) + shape[i + 2:])
  return shapes


def on_reshaped_views(inner: optax.GradientTransformation, shapes: Mapping[str, tuple]
                      ) -> optax.GradientTransformation:
  """Runs `inner` on reshaped views of some parameters (`shapes`: path -> (shape, view shape))."""
  def view(tree, which):
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x.reshape(shapes[jax.tree_util.keystr(path)][which])
        if x is not None and jax.tree_util.keystr(path) in shapes else x, tree)

  def init(params):
    return inner.init(view(params, 1))

  def update(updates, state, params=None):
    new_updates, state = inner.update(view(updates, 1), state,
                                      None if params is None else view(params, 1))
    return view(new_updates, 0), state

  return optax.GradientTransformation(init, update)


def make_optimizer(config: OptimizerConfig, param_logical_axes: Any = None,
                   abstract_params: Any = None) -> optax.GradientTransformation:
  """optax Adafactor (optionally after global-norm clipping) following `config`.

  Pass the model's `param_logical_axes()` and `abstract_params()` to factor attention kernels as
  [embed, heads*kv] (config.factor_joined_heads); without them every parameter is taken as it is.
  """
  adafactor = optax.adafactor(
      learning_rate=learning_rate_schedule(config),
      min_dim_size_to_factor=config.min_dim_size_to_factor,
      decay_rate=config.decay_rate,
      # optax's offset is subtracted from the step (a decay that restarts at the offset, t5x's
      # `step_offset` for finetuning from a *reset* counter); ours continues a count, so negate it.
      decay_offset=-config.decay_offset,
      multiply_by_parameter_scale=config.multiply_by_parameter_scale,
      clipping_threshold=config.clipping_threshold,
      momentum=config.momentum,
      weight_decay_rate=config.weight_decay_rate,
      eps=config.epsilon,
      factored=config.factored)
  if config.factor_joined_heads and param_logical_axes is not None:
    adafactor = on_reshaped_views(adafactor, joined_heads_shapes(param_logical_axes, abstract_params))
  if config.max_grad_norm is None:
    return adafactor
  return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adafactor)


def describe(config: OptimizerConfig) -> str:
  """One line for the run log, e.g. 'Adafactor(decay 0.8, clip 1.0, ...) lr constant 0.001'."""
  parts = [f"decay {config.decay_rate}", f"clip {config.clipping_threshold}",
           "param-scale" if config.multiply_by_parameter_scale else "no param-scale",
           "factored" if config.factored else "unfactored",
           f"momentum {config.momentum}" if config.momentum else "no momentum"]
  schedule = config.schedule + (f" (warmup {config.warmup_steps})" if config.warmup_steps else "")
  return f"Adafactor({', '.join(parts)}) learning rate {config.learning_rate:g} {schedule}"
