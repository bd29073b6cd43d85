"""The jit-partitioned train and eval steps.

One train step: normalised per-token loss weights for the whole batch (`losses.py`), gradients of
`sum(weights * (cross_entropy + z_loss)) / factor` accumulated over micro-batches with `lax.scan`
(float32), one optax update, and scalar metrics. The state is donated; parameters and optimizer state
stay float32 whatever the activation dtype (`T5Config.dtype`).

Dropout randomness is a pure function of (dropout_seed, step[, micro-batch]): a run resumed from a
checkpoint draws the same masks as one that never stopped.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from xmtf_jax.train import losses
from xmtf_jax.train import optim
from xmtf_jax.parallel import partitioning
from xmtf_jax.model import family

Array = Any
Params = Any
Batch = Mapping[str, Array]
Model = Any  # a family's task-level model (model/family.py)

@flax.struct.dataclass
class TrainState:
  """step: int32 scalar, updates applied so far; params: float32 tree; opt_state: optax state."""
  step: Array
  params: Params
  opt_state: optax.OptState


# ---- shardings --------------------------------------------------------------------------------------

def _reduced_spec(param_spec: PartitionSpec, param_shape: tuple, shape: tuple) -> PartitionSpec:
  """The sharding of an optimizer-state leaf derived from its parameter's.

  Same shape: same spec. One dimension fewer (Adafactor's factored row/column statistics): the
  parameter's spec without that dimension. Anything else (scalars, (1,) placeholders): replicated.
  """
  spec = tuple(param_spec) + (None,) * (len(param_shape) - len(param_spec))
  if tuple(shape) == tuple(param_shape):
    return PartitionSpec(*spec)
  if len(shape) == len(param_shape) - 1:
    candidates = {spec[:i] + spec[i + 1:] for i in range(len(param_shape))
                  if param_shape[:i] + param_shape[i + 1:] == tuple(shape)}
    if len(candidates) == 1:
      return PartitionSpec(*candidates.pop())
  return PartitionSpec()


def _dict_keys(path) -> tuple:
  return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def train_state_shardings(model: Model, optimizer: optax.GradientTransformation,
                          mesh: Mesh) -> TrainState:
  """NamedShardings of every leaf of the train state on `mesh` (parameters by their logical axes).

  An optimizer-state leaf belongs to the parameter whose path ends its own path (optax keeps trees
  shaped like the parameters); its sharding follows from the parameter's (`_reduced_spec`).
  """
  abstract_params = model.abstract_params()
  param_shardings = model.param_shardings(mesh)
  by_path = {_dict_keys(path): (param, sharding) for (path, param), sharding in zip(
      jax.tree_util.tree_flatten_with_path(abstract_params)[0], jax.tree.leaves(param_shardings))}

  def leaf_sharding(path, leaf):
    keys = _dict_keys(path)
    for start in range(len(keys)):
      if keys[start:] in by_path:
        param, sharding = by_path[keys[start:]]
        return NamedSharding(mesh, _reduced_spec(sharding.spec, tuple(param.shape),
                                                 tuple(leaf.shape)))
    return NamedSharding(mesh, PartitionSpec())

  abstract_opt_state = jax.eval_shape(optimizer.init, abstract_params)
  opt_shardings = jax.tree_util.tree_map_with_path(leaf_sharding, abstract_opt_state)
  return TrainState(step=NamedSharding(mesh, PartitionSpec()), params=param_shardings,
                    opt_state=opt_shardings)


def make_optimizer(model: Model, config: optim.OptimizerConfig
                   ) -> optax.GradientTransformation:
  """`optim.make_optimizer` with the model's logical axes (attention kernels factored as matrices)."""
  return optim.make_optimizer(config, model.param_logical_axes(), model.abstract_params())


def abstract_train_state(model: Model, optimizer: optax.GradientTransformation,
                         mesh: Optional[Mesh] = None) -> TrainState:
  """ShapeDtypeStructs of the train state (with shardings when `mesh` is given): restore targets."""
  params = model.abstract_params()
  state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                     opt_state=jax.eval_shape(optimizer.init, params))
  if mesh is None:
    return state
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
                      train_state_shardings(model, optimizer, mesh))


def init_train_state(params: Params, optimizer: optax.GradientTransformation,
                     shardings: TrainState) -> TrainState:
  """A fresh state at step 0 around `params` (placed with `shardings`)."""
  def init(p):
    return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p))
  return jax.jit(init, out_shardings=shardings)(params)


# ---- the steps ------------------------------------------------------------------------------------

def _split_microbatches(batch: Batch, num_microbatches: int, mesh: Optional[Mesh]) -> dict[str, Array]:
  """[B, ...] -> [M, B/M, ...] with micro-batch i = rows i, i+M, i+2M, ...

  Strided rather than contiguous so that every micro-batch keeps rows on every `data` shard (rows are
  laid out contiguously per shard): no resharding when the per-shard batch divides by M.
  """
  def split(x):
    rows = x.shape[0]
    x = x.reshape((rows // num_microbatches, num_microbatches) + x.shape[1:])
    x = jnp.swapaxes(x, 0, 1)
    if mesh is not None:
      spec = PartitionSpec(None, "data", *(None,) * (x.ndim - 2))
      x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
    return x
  return {k: split(v) for k, v in batch.items()}


def make_train_step(model: Model, optimizer: optax.GradientTransformation,
                    loss_config: losses.LossConfig, learning_rate_fn: Callable[[Array], Array], *,
                    dropout_seed: int = 0, num_microbatches: int = 1, rng_impl: str = "rbg",
                    state_shardings: Optional[TrainState] = None) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  """jit-compiled `(state, batch) -> (new_state, metrics)`; the state argument is donated.

  batch: global arrays [global_batch, length] (see input_pipeline.batch_shapes). metrics: float32
  scalars `loss` (what is differentiated), `cross_entropy`, `z_loss`, `accuracy`, `num_target_tokens`,
  `num_input_tokens`, `normalizing_factor`, `learning_rate` (used for this update), `grad_norm`,
  `param_norm` (after the update).
  Dropout is on when `model.config.dropout_rate > 0`; its key for step s is
  fold_in(key(dropout_seed, impl=rng_impl), s) (and fold_in(., i) for micro-batch i).
  """
  mesh = model.mesh
  # Any dropout of the family's (BLOOM also has attention dropout) turns the dropout key on.
  enable_dropout = (model.config.dropout_rate > 0
                    or getattr(model.config, "attention_dropout_rate", 0) > 0)

  def loss_fn(params, microbatch, weights, factor, rng):
    logits = model.forward(params, **model.model_inputs(microbatch), enable_dropout=enable_dropout,
                           dropout_rng=rng if enable_dropout else None)
    sums = losses.loss_sums(logits, microbatch["decoder_target_tokens"], weights, loss_config)
    return (sums["cross_entropy_sum"] + sums["z_loss_sum"]) / factor, sums

  grad_fn = jax.grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch: Batch):
    batch = dict(batch)
    weights, factor = losses.normalized_loss_weights(batch, loss_config)
    batch["_weights"] = weights
    rng = jax.random.fold_in(jax.random.key(dropout_seed, impl=rng_impl), state.step)
    if num_microbatches == 1:
      grads, sums = grad_fn(state.params, batch, weights, factor, rng)
    else:
      micro = _split_microbatches(batch, num_microbatches, mesh)

      def accumulate(carry, inputs):
        grad_sum, sum_totals = carry
        index, microbatch = inputs
        grads, sums = grad_fn(state.params, microbatch, microbatch["_weights"], factor,
                              jax.random.fold_in(rng, index))
        return (jax.tree.map(jnp.add, grad_sum, grads),
                jax.tree.map(jnp.add, sum_totals, sums)), None

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      zero_sums = {k: jnp.zeros((), jnp.float32) for k in losses.SUM_KEYS}
      (grads, sums), _ = jax.lax.scan(
          accumulate, (zeros, zero_sums), (jnp.arange(num_microbatches), micro))
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": (sums["cross_entropy_sum"] + sums["z_loss_sum"]) / factor,
        "cross_entropy": sums["cross_entropy_sum"] / factor,
        "z_loss": sums["z_loss_sum"] / factor,
        "accuracy": sums["num_correct"] / jnp.maximum(sums["num_tokens"], 1.0),
        # Per real target token, whatever the normalisation: 'fixed' makes `loss` tiny.
        "token_loss": sums["token_cross_entropy_sum"] / jnp.maximum(sums["num_tokens"], 1.0),
        "num_target_tokens": sums["num_tokens"],
        "num_input_tokens": jnp.asarray(model.input_token_count(batch), jnp.float32),
        "normalizing_factor": factor,
        "learning_rate": jnp.asarray(learning_rate_fn(state.step), jnp.float32),
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(params),
    }
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  if mesh is None or state_shardings is None:
    return jax.jit(train_step, donate_argnums=(0,))
  replicated = NamedSharding(mesh, PartitionSpec())
  # One sharding for the whole batch dict (a pytree prefix): every feature's rows over `data`.
  return jax.jit(train_step, donate_argnums=(0,),
                 in_shardings=(state_shardings, partitioning.data_sharding(mesh)),
                 out_shardings=(state_shardings, replicated))


def make_eval_step(model: Model, loss_config: losses.LossConfig
                   ) -> Callable[[Params, Batch], dict]:
  """jit-compiled `(params, batch) -> sums` of teacher-forced validation, no dropout.

  Returns float32 sums over the batch's real target tokens (decoder_loss_weights > 0):
  cross_entropy_sum, z_loss_sum, num_correct, num_tokens. Sum them over batches, then divide.
  """
  def eval_step(params, batch):
    logits = model.forward(params, **model.model_inputs(batch), enable_dropout=False)
    weights = jnp.asarray(batch["decoder_loss_weights"], jnp.float32)
    return losses.loss_sums(logits, batch["decoder_target_tokens"], weights, loss_config)
  if model.mesh is None:
    return jax.jit(eval_step)
  return jax.jit(eval_step, out_shardings=NamedSharding(model.mesh, PartitionSpec()))


# ---- cost model ------------------------------------------------------------------------------------

def training_flops_per_step(config: family.ModelConfig, batch_size: int, inputs_length: int,
                            targets_length: int) -> float:
  """Matmul FLOPs of one training step on padded shapes (forward + backward = 3 x forward).

  Counts the projections, MLPs, attention scores and values (full squares, as executed), and the LM
  head; embedding lookups, norms and softmaxes are negligible. This is what the hardware executes, so it
  is what MFU divides. A decoder-only row is `inputs_length + targets_length` positions, all through
  the decoder and the head.
  """
  d, ff, hk, vocab = config.d_model, config.d_ff, config.num_heads * config.d_kv, config.vocab_size
  li, lt = inputs_length, targets_length
  if family.is_decoder_only(config):
    mlp = 2 * d * ff  # dense_h_to_4h, dense_4h_to_h
    positions = li + lt
    layer = positions * (4 * d * hk + mlp + 2 * positions * hk)
    multiply_accumulates = batch_size * (config.num_decoder_layers * layer + positions * d * vocab)
    return 3.0 * 2.0 * multiply_accumulates
  mlp = 3 * d * ff  # wi_0, wi_1, wo (multiply-accumulates per token)
  encoder = config.num_encoder_layers * li * (4 * d * hk + mlp + 2 * li * hk)
  decoder = config.num_decoder_layers * (
      lt * (4 * d * hk + lt * 2 * hk + mlp)  # self-attention + MLP
      + lt * (2 * d * hk + 2 * li * hk)  # cross-attention queries/outputs and scores/values
      + li * 2 * d * hk)  # cross-attention keys/values of the encoder output
  head = lt * d * vocab
  multiply_accumulates = batch_size * (encoder + decoder + head)
  return 3.0 * 2.0 * multiply_accumulates


def host_metrics(metrics: Mapping[str, Array]) -> dict[str, float]:
  """Device scalars -> Python floats (one transfer)."""
  return {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}


@dataclasses.dataclass
class EvalSums:
  """Running sums of `make_eval_step` outputs over validation batches."""
  cross_entropy_sum: float = 0.0
  z_loss_sum: float = 0.0
  num_correct: float = 0.0
  num_tokens: float = 0.0
  token_cross_entropy_sum: float = 0.0

  def add(self, sums: Mapping[str, Array]) -> None:
    for k, v in jax.device_get(dict(sums)).items():
      setattr(self, k, getattr(self, k) + float(np.asarray(v)))

  def metrics(self) -> dict[str, float]:
    n = max(self.num_tokens, 1.0)
    return {"loss": self.cross_entropy_sum / n, "z_loss": self.z_loss_sum / n,
            "accuracy": self.num_correct / n, "num_target_tokens": self.num_tokens}
