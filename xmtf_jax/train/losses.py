"""Token cross-entropy with z-loss and label smoothing, and the three ways to normalise it.

The loss of a batch is `sum(weights * (cross_entropy + z_loss)) / normalizing_factor`, where the
weights and the factor depend on `LossNormalization`:

  per_target_token      weights = decoder_loss_weights; factor = number of real target tokens.
  average_per_sequence  every sequence (every packed segment) gets total weight 1, spread evenly
                        over its target tokens; factor = number of sequences. Long and short targets
                        count the same (the mT0 recipe).
  fixed                 weights = decoder_loss_weights; factor = a constant (t5x's finetuning
                        default, 233472 = 2048 x 114: the loss scale does not change with how many
                        real tokens a batch holds).

Weights and factor are computed once for the whole batch (`normalized_loss_weights`), before any split
into micro-batches, so accumulating `weighted sums / factor` over micro-batches gives exactly the
full-batch loss.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

from xmtf_jax.errors import UserError

Array = Any


class LossNormalization(str, enum.Enum):
  PER_TARGET_TOKEN = "per_target_token"
  AVERAGE_PER_SEQUENCE = "average_per_sequence"
  FIXED = "fixed"


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """How the training loss is computed (gin: `LossConfig.*`, macros in gin/runs/*.gin).

  normalization: 'per_target_token' | 'average_per_sequence' | 'fixed' (see the module docstring).
  normalizing_factor: the constant for 'fixed'.
  z_loss: coefficient of log(Z)^2 per target token (keeps the softmax normaliser near 1; t5x 1e-4).
  label_smoothing: mass spread uniformly over the other vocabulary entries (0 = none).
  """
  normalization: str = "per_target_token"
  normalizing_factor: Optional[float] = None
  z_loss: float = 1e-4
  label_smoothing: float = 0.0

  def __post_init__(self):
    names = [m.value for m in LossNormalization]
    if self.normalization not in names:
      raise UserError(f"LossConfig.normalization={self.normalization!r}: choose one of {names}")
    if self.normalization == LossNormalization.FIXED and not self.normalizing_factor:
      raise UserError("LossConfig.normalization='fixed' needs LossConfig.normalizing_factor "
                      "(t5x's finetuning default is 233472)")
    if not 0.0 <= self.label_smoothing < 1.0:
      raise UserError(f"LossConfig.label_smoothing={self.label_smoothing} must be in [0, 1)")


@jax.custom_vjp
def _logit_stats(logits: Array, targets: Array) -> tuple[Array, Array, Array, Array]:
  """float32 logits [..., vocab], int32 targets [...] -> (log Z, target logit, max logit, sum of logits).

  Why a custom gradient: autodiff of `take_along_axis` scatters into a zero tensor the size of the
  logits and adds it to the softmax gradient (two extra passes over 1 GiB per step at mt5-small shapes
  on the CPU); here the whole logits gradient is one fused elementwise pass. The max is a metric only
  (no gradient).
  """
  return _logit_stats_forward(logits, targets)[0]


def _logit_stats_forward(logits, targets):
  row_max = jnp.max(logits, axis=-1)
  log_z = row_max + jnp.log(jnp.sum(jnp.exp(logits - row_max[..., None]), axis=-1))
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return (log_z, target_logit, row_max, jnp.sum(logits, axis=-1)), (logits, targets, log_z)


def _logit_stats_backward(residuals, cotangents):
  logits, targets, log_z = residuals
  d_log_z, d_target, _, d_sum = cotangents
  is_target = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1) == targets[..., None]
  d_logits = (jnp.exp(logits - log_z[..., None]) * d_log_z[..., None]
              + jnp.where(is_target, d_target[..., None], 0.0) + d_sum[..., None])
  return d_logits, None


_logit_stats.defvjp(_logit_stats_forward, _logit_stats_backward)


def _cross_entropy_and_stats(logits: Array, targets: Array, z_loss: float, label_smoothing: float):
  """(cross_entropy, z_loss, target_logit, max_logit) per token; see cross_entropy_with_z_loss."""
  logits = logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  log_z, target_logit, max_logit, sum_logits = _logit_stats(logits, targets.astype(jnp.int32))
  if label_smoothing:
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1)
    # -sum_v q_v (l_v - log Z) = log Z - confidence*l_t - low*(sum_v l_v - l_t)
    cross_entropy = log_z - confidence * target_logit - low * (sum_logits - target_logit)
    entropy_of_q = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20))
    cross_entropy = cross_entropy - entropy_of_q
  else:
    cross_entropy = log_z - target_logit
  return cross_entropy, z_loss * jnp.square(log_z), target_logit, max_logit


def cross_entropy_with_z_loss(logits: Array, targets: Array, *, z_loss: float = 0.0,
                              label_smoothing: float = 0.0) -> tuple[Array, Array]:
  """Per-token (cross_entropy, z_loss) in float32, both shaped like `targets`.

  logits: [..., vocab] (any float dtype; computed in float32); targets: int [...].
  cross_entropy = -sum_v q_v log softmax(logits)_v with q = one-hot smoothed to
  (1 - label_smoothing) on the target and label_smoothing / (vocab - 1) elsewhere, minus the entropy
  of q, so that a perfect prediction of q scores 0 (as t5x reports it).
  z_loss = z_loss * logsumexp(logits)^2.
  """
  return _cross_entropy_and_stats(logits, targets, z_loss, label_smoothing)[:2]


def _tokens_per_segment(weights: Array, segment_ids: Array) -> Array:
  """For every token, the summed weight of its own segment (same row, same segment id).

  Segment ids are <= length, so (row, segment) -> row * (length + 1) + segment numbers every segment
  of the batch uniquely; a segment sum over those ids is O(batch * length).
  """
  rows, length = weights.shape
  ids = (jnp.arange(rows)[:, None] * (length + 1) + segment_ids).reshape(-1)
  totals = jax.ops.segment_sum(weights.reshape(-1), ids, num_segments=rows * (length + 1))
  return totals[ids].reshape(rows, length)


def normalized_loss_weights(batch: Mapping[str, Array], config: LossConfig) -> tuple[Array, Array]:
  """-> (per-token float32 weights [batch, targets], float32 normalizing factor) for a whole batch.

  Uses `decoder_loss_weights` and, when the batch is packed, `decoder_segment_ids` (each packed
  example counts as one sequence for 'average_per_sequence'). Segment 0 is padding and never a
  sequence, whatever its loss weight (as in t5x; seqio already gives padding weight 0, but a
  hand-made batch may not).
  """
  weights = jnp.asarray(batch["decoder_loss_weights"], jnp.float32)
  mode = LossNormalization(config.normalization)
  if mode == LossNormalization.PER_TARGET_TOKEN:
    return weights, jnp.sum(weights)
  if mode == LossNormalization.FIXED:
    return weights, jnp.asarray(config.normalizing_factor, jnp.float32)
  segment_ids = batch.get("decoder_segment_ids")
  if segment_ids is None:
    per_sequence = jnp.sum(weights, axis=-1, keepdims=True)
  else:
    segment_ids = jnp.asarray(segment_ids)
    weights = jnp.where(segment_ids > 0, weights, 0.0)
    per_sequence = _tokens_per_segment(weights, segment_ids)
  weights = jnp.where(per_sequence > 0, weights / jnp.where(per_sequence > 0, per_sequence, 1.0), 0.0)
  return weights, jnp.sum(weights)


SUM_KEYS = ("cross_entropy_sum", "z_loss_sum", "num_correct", "num_tokens", "token_cross_entropy_sum")


def loss_sums(logits: Array, targets: Array, weights: Array, config: LossConfig) -> dict[str, Array]:
  """Weighted float32 sums of a (micro-)batch; divide the loss terms by the factor afterwards.

  Returns cross_entropy_sum, z_loss_sum (weighted by `weights`), and for metrics num_correct (tokens
  whose target has the highest logit), num_tokens (counted over tokens with weight > 0,
  unnormalised) and token_cross_entropy_sum (the cross-entropy of those tokens, unweighted: divided
  by num_tokens it is the per-token loss, comparable with the validation loss whatever the
  normalisation).
  """
  cross_entropy, z_loss, target_logit, max_logit = _cross_entropy_and_stats(
      logits, targets, config.z_loss, config.label_smoothing)
  real = (weights > 0).astype(jnp.float32)
  # "The target has the highest logit", via max instead of argmax: on the CPU an argmax over a
  # 250k vocabulary costs as much as the whole softmax, a max is nearly free (and shared with the
  # logsumexp). They differ only when another token ties the target's logit exactly.
  correct = (target_logit >= max_logit).astype(jnp.float32)
  return {
      "cross_entropy_sum": jnp.sum(cross_entropy * weights),
      "z_loss_sum": jnp.sum(z_loss * weights),
      "num_correct": jnp.sum(correct * real),
      "num_tokens": jnp.sum(real),
      "token_cross_entropy_sum": jnp.sum(cross_entropy * real),
  }
