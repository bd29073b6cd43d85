"""The two optimizers of the paper's recipes, and learning-rate schedules.

`OptimizerConfig.name` picks one: 'adafactor' (the mT0 recipe, t5x's finetuning setup, the default) or
'adamw' (the BLOOMZ recipe, Megatron-DeepSpeed's apex FusedAdam: decoupled weight decay times the
learning rate, no decay on biases and LayerNorm parameters (`weight_decay_mask`), gradients clipped
to a global norm first). Both are optax chains whose state mirrors the parameter tree, so the
trainer shards it by path (`trainer.train_state_shardings`).

Adafactor's defaults are the mT0 recipe's inherited t5x setup: second-moment decay 1 - step^-0.8,
no momentum, update clipping at RMS 1.0, step size relative to each parameter's RMS ("parameter
scale"), factored second moments for matrices whose two largest dimensions are >= 128, and a constant
learning rate 1e-3.

Factoring: optax factors the two largest dimensions of a parameter when both are >= 128. Our attention
kernels are 3-D ([embed, heads, kv], [heads, kv, embed]) and kv is 64, so optax alone would keep a full
second moment for them. mT5 was trained (mesh-tf / t5x) with these kernels as 2-D matrices
[d_model, heads*kv], factored; `factor_joined_heads` (on by default) reproduces that by running
Adafactor on [embed, heads*kv] views of them (`joined_heads_shapes`). Update clipping and the parameter
scale are per tensor, so the reshape changes nothing else.

Scanned layers (`T5Config.scan_layers`): a stacked leaf [layers, ...] holds one tensor per layer, and
Adafactor must treat each layer as the tensor it is in the per-layer model. Its factored statistics
already do (the leading axis is a batch axis for them, when the two largest dimensions are a layer's);
update clipping and the parameter scale are per *block*, which `layer_blocks_adafactor` takes to be one
layer of a stacked leaf (the whole tensor otherwise). So one step gives the same parameters in either
layout, and the optimizer state is the per-layer state stacked (`model/layer_stacking.py` converts).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec

from xmtf_jax.errors import UserError
from xmtf_jax.model import layer_stacking

SCHEDULES = ("constant", "linear_warmup", "rsqrt", "cosine")
OPTIMIZERS = ("adafactor", "adamw")
# 'except_bias_and_norm': Megatron's _get_params_for_weight_decay_optimization (see `weight_decay_mask`).
WEIGHT_DECAY_MASKS = ("except_bias_and_norm", "all")
# Leaf names that get no weight decay: every `bias` (Dense and LayerNorm) and LayerNorm's `scale`.
NO_DECAY_LEAF_NAMES = ("bias", "scale")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """The optimizer and its learning-rate schedule (gin: `OptimizerConfig.*`, macro LEARNING_RATE).

  name: 'adafactor' (the fields from decay_rate to factor_joined_heads) or 'adamw' (the adam_* and
    weight_decay* fields); max_grad_norm and the schedule apply to both.
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
  max_grad_norm: clip gradients to this global norm before the optimizer (None: off, as in t5x;
    BLOOMZ: 1.0).
  factor_joined_heads: factor attention kernels as [embed, heads*kv] matrices (see module docstring).
  adam_beta1, adam_beta2, adam_epsilon: AdamW's moment decays and the epsilon added to sqrt(v_hat)
    (Megatron's --adam-beta1/--adam-beta2/--adam-eps; torch's and optax's defaults here).
  weight_decay: AdamW's decoupled decay, multiplied by the learning rate as in torch.optim.AdamW and
    apex FusedAdam (p -= lr * (adam update + weight_decay * p)); 0 turns it off. Adafactor's own
    (not multiplied by the learning rate) is weight_decay_rate.
  weight_decay_mask: which parameters AdamW decays: 'except_bias_and_norm' (Megatron's rule: all but
    biases and LayerNorm parameters) or 'all'.
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
  name: str = "adafactor"
  adam_beta1: float = 0.9
  adam_beta2: float = 0.999
  adam_epsilon: float = 1e-8
  weight_decay: float = 0.0
  weight_decay_mask: str = "except_bias_and_norm"

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise UserError(f"OptimizerConfig.name={self.name!r}: choose one of {OPTIMIZERS}")
    if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
      raise UserError(f"OptimizerConfig.learning_rate={self.learning_rate} must be finite and > 0")
    if self.schedule not in SCHEDULES:
      raise UserError(f"OptimizerConfig.schedule={self.schedule!r}: choose one of {SCHEDULES}")
    if self.schedule in ("linear_warmup", "rsqrt") and self.warmup_steps < 1:
      raise UserError(f"OptimizerConfig.schedule={self.schedule!r} needs warmup_steps >= 1")
    if self.decay_offset < 0:
      raise UserError(f"OptimizerConfig.decay_offset={self.decay_offset} must be >= 0 (the steps "
                      "the initial checkpoint was trained for, e.g. 1000000 for mT5)")
    if self.schedule == "cosine" and not self.decay_steps:
      raise UserError("OptimizerConfig.schedule='cosine' needs decay_steps (e.g. %TRAIN_STEPS)")
    if self.weight_decay_mask not in WEIGHT_DECAY_MASKS:
      raise UserError(f"OptimizerConfig.weight_decay_mask={self.weight_decay_mask!r}: choose one of "
                      f"{WEIGHT_DECAY_MASKS}")
    for field in ("adam_beta1", "adam_beta2"):
      if not 0.0 <= getattr(self, field) < 1.0:
        raise UserError(f"OptimizerConfig.{field}={getattr(self, field)} must be in [0, 1)")
    if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
      raise UserError(f"OptimizerConfig.weight_decay={self.weight_decay} must be finite and >= 0")
    # Each optimizer ignores the other's weight decay: say so rather than train without it.
    if self.name == "adafactor" and self.weight_decay:
      raise UserError(f"OptimizerConfig.weight_decay={self.weight_decay} is AdamW's (name='adamw'); "
                      "Adafactor's weight decay is OptimizerConfig.weight_decay_rate")
    if self.name == "adamw" and self.weight_decay_rate is not None:
      raise UserError(f"OptimizerConfig.weight_decay_rate={self.weight_decay_rate} is Adafactor's; "
                      "AdamW's weight decay is OptimizerConfig.weight_decay")


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


def _block_axes(path, x) -> Optional[tuple[int, ...]]:
  """The axes of one block: all but the leading `layers` axis of a stacked leaf, else all (None)."""
  if layer_stacking.is_stacked_path(layer_stacking.path_keys(path)) and x.ndim >= 2:
    return tuple(range(1, x.ndim))
  return None


def _block_rms(x, axes):
  return jnp.sqrt(jnp.mean(jnp.square(x), axis=axes, keepdims=axes is not None))


def clip_by_layer_block_rms(threshold: float) -> optax.GradientTransformation:
  """optax.clip_by_block_rms with one block per layer of a stacked leaf."""
  def update(updates, state, params=None):
    del params
    clip = lambda path, u: u / jnp.maximum(1.0, _block_rms(u, _block_axes(path, u)) / threshold)
    return jax.tree_util.tree_map_with_path(clip, updates), state
  return optax.GradientTransformation(optax.init_empty_state, update)


def scale_by_layer_param_block_rms(min_scale: float = 1e-3) -> optax.GradientTransformation:
  """optax.scale_by_param_block_rms (same safe RMS) with one block per layer of a stacked leaf."""
  def update(updates, state, params):
    def scale(path, u, p):
      axes = _block_axes(path, p)
      rms = _block_rms(p, axes)
      safe = jnp.where(rms <= min_scale, jnp.ones_like(p), p)
      return u * jnp.where(rms <= min_scale, min_scale, _block_rms(safe, axes))
    return jax.tree_util.tree_map_with_path(scale, updates, params), state
  return optax.GradientTransformation(optax.init_empty_state, update)


def _factored_dims(shape: tuple, config: OptimizerConfig) -> Optional[tuple[int, int]]:
  """optax's rule: the two largest dimensions, if the smaller of them is >= min_dim_size_to_factor."""
  if not config.factored or len(shape) < 2:
    return None
  order = np.argsort(shape)
  return None if shape[order[-2]] < config.min_dim_size_to_factor else (int(order[-2]), int(order[-1]))


def _check_stacked_factoring(params: Any, config: OptimizerConfig) -> None:
  """A stacked leaf must factor like one of its layers (else the layouts would differ in state)."""
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    if _block_axes(path, x) is None:
      continue
    per_layer = _factored_dims(tuple(x.shape[1:]), config)
    want = None if per_layer is None else tuple(sorted(d + 1 for d in per_layer))
    got = _factored_dims(tuple(x.shape), config)
    if (None if got is None else tuple(sorted(got))) != want:
      raise UserError(
          f"{jax.tree_util.keystr(path)}: with scan_layers its shape {tuple(x.shape)} would be factored "
          f"over dimensions {got} but one layer over {per_layer}, so Adafactor would differ from the "
          "per-layer model. Use T5Config.scan_layers=False, or change "
          "OptimizerConfig.min_dim_size_to_factor.")


def layer_blocks_adafactor(config: OptimizerConfig) -> optax.GradientTransformation:
  """optax.adafactor's chain (the same state tree) with per-layer blocks for stacked leaves."""
  # optax subtracts its offset from the step (a decay that restarts there); ours continues a count.
  tx = [optax.scale_by_factored_rms(config.factored, config.decay_rate, -config.decay_offset,
                                    config.min_dim_size_to_factor, config.epsilon)]
  if config.clipping_threshold is not None:
    tx.append(clip_by_layer_block_rms(config.clipping_threshold))
  tx.append(optax.scale_by_learning_rate(learning_rate_schedule(config), flip_sign=False))
  if config.multiply_by_parameter_scale:
    tx.append(scale_by_layer_param_block_rms())
  if config.momentum is not None:
    tx.append(optax.ema(config.momentum, debias=False, accumulator_dtype=jnp.float32))
  if config.weight_decay_rate is not None:
    tx.append(optax.add_decayed_weights(config.weight_decay_rate))
  tx.append(optax.scale(-1))
  chain = optax.chain(*tx)

  def init(params):
    _check_stacked_factoring(params, config)
    return chain.init(params)

  return optax.GradientTransformation(init, chain.update)


def _leaf_name(path) -> str:
  last = path[-1]
  return str(getattr(last, "key", getattr(last, "name", last)))


def weight_decay_mask(params: Any) -> Any:
  """True for the parameters AdamW decays: every leaf but biases and LayerNorm parameters.

  Megatron-DeepSpeed's `_get_params_for_weight_decay_optimization` (what BLOOMZ trained with) exempts
  all parameters of LayerNorm modules and every parameter named `bias`, and decays the rest: kernels
  and the (tied) word embedding. In our trees that is the leaf name: LayerNorm's `scale` and `bias`,
  Dense's `bias`. Not by rank: BLOOM's fused QKV bias is [heads, qkv, kv] and scanned layers stack
  every LayerNorm parameter to [layers, embed], so a "1-D parameters" rule would decay both.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: _leaf_name(path) not in NO_DECAY_LEAF_NAMES, params)


def adamw(config: OptimizerConfig) -> optax.GradientTransformation:
  """optax.adamw following `config` (weight decay on `weight_decay_mask`'s leaves only).

  Elementwise, so scanned and per-layer layouts give the same step; mu and nu mirror the parameters.
  """
  mask = weight_decay_mask if config.weight_decay_mask == "except_bias_and_norm" else None
  return optax.adamw(learning_rate_schedule(config), b1=config.adam_beta1, b2=config.adam_beta2,
                     eps=config.adam_epsilon, weight_decay=config.weight_decay, mask=mask)


def make_optimizer(config: OptimizerConfig, param_logical_axes: Any = None,
                   abstract_params: Any = None) -> optax.GradientTransformation:
  """Adafactor or AdamW (config.name), after global-norm clipping when config.max_grad_norm is set.

  Pass the model's `param_logical_axes()` and `abstract_params()` to factor attention kernels as
  [embed, heads*kv] (config.factor_joined_heads, Adafactor only); without them every parameter is
  taken as it is.
  """
  if config.name == "adamw":
    optimizer = adamw(config)
  else:
    optimizer = layer_blocks_adafactor(config)
    if config.factor_joined_heads and param_logical_axes is not None:
      optimizer = on_reshaped_views(optimizer, joined_heads_shapes(param_logical_axes, abstract_params))
  if config.max_grad_norm is None:
    return optimizer
  # Scales by max_grad_norm / norm; Megatron's (and torch's) clip_grad_norm by max / (norm + 1e-6).
  return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optimizer)


def describe(config: OptimizerConfig) -> str:
  """One line for the run log, e.g. 'Adafactor(decay 0.8, clip 1.0, ...) lr constant 0.001'."""
  schedule = config.schedule + (f" (warmup {config.warmup_steps})" if config.warmup_steps else "")
  if config.name == "adamw":
    decayed = {"except_bias_and_norm": " except biases and norms", "all": ""}[config.weight_decay_mask]
    parts = [f"b1 {config.adam_beta1}", f"b2 {config.adam_beta2}", f"eps {config.adam_epsilon:g}",
             f"weight decay {config.weight_decay:g}{decayed}" if config.weight_decay else "no weight decay",
             f"grad norm clip {config.max_grad_norm}" if config.max_grad_norm else "no grad clip"]
    return f"AdamW({', '.join(parts)}) learning rate {config.learning_rate:g} {schedule}"
  parts = [f"decay {config.decay_rate}", f"clip {config.clipping_threshold}",
           "param-scale" if config.multiply_by_parameter_scale else "no param-scale",
           "factored" if config.factored else "unfactored",
           f"momentum {config.momentum}" if config.momentum else "no momentum"]
  return f"Adafactor({', '.join(parts)}) learning rate {config.learning_rate:g} {schedule}"
