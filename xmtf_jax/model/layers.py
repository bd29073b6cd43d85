"""The building blocks of the networks: projections with logical axes, the bucketed relative
position bias, attention masks for packed batches, RMS norm, multi-head attention with a KV cache,
the gated-GELU MLP, the shared embedding and the untied LM head (mT5, assembled in `network.py`); a
projection with a bias, LayerNorm with a bias and the embedding's tied read-out (`Embed.attend`) that
BLOOM (`bloom_network.py`) adds.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from xmtf_jax.model.config import T5Config
from xmtf_jax.model.dropout import Dropout

Array = Any
# Large negative logit for masked keys: finite so that fully-masked rows (padding queries) give a uniform
# distribution instead of NaN; far below any real logit so masked keys get exactly zero probability.
MASK_LOGIT = -1e10


def _param(module: nn.Module, name: str, shape: tuple[int, ...], axes: tuple[str, ...], stddev: float):
  init = nn.with_logical_partitioning(nn.initializers.normal(stddev=stddev), axes)
  return module.param(name, init, shape, jnp.float32)


class Kernel(nn.Module):
  """A weight under `<name>/kernel` (the t5x-style tree the docs list); returned as float32."""
  shape: tuple[int, ...]
  axes: tuple[str, ...]
  stddev: float

  @nn.compact
  def __call__(self) -> Array:
    return _param(self, "kernel", self.shape, self.axes, self.stddev)


WEIGHT_MATMUL = "weight_matmul"  # checkpoint name of every activation x weight product (remat "dots")


def _matmul(x: Array, kernel: Array, in_dims: int, preferred_element_type=None) -> Array:
  """x [..., *in] times the float32 kernel [*in, *out] (cast to x's dtype) -> [..., *out].

  One 2-D [tokens, in] x [in, out] dot. Why not an einsum: XLA:CPU lowers the backward of
  multi-dimension contractions (e.g. `bld,dhk->blhk`, whose kernel gradient contracts over batch *and*
  length) to transposing copies plus dots, which made the train step ~1.4x slower; after flattening,
  both gradients are plain 2-D dots. The reshapes are free.

  The kernel gradient is accumulated and returned in float32 (`_flat_matmul`'s VJP), so with bfloat16
  activations the sum of weight gradients over the data-parallel replicas (the all-reduce or
  reduce-scatter after this dot) is float32, not bfloat16.
  """
  in_shape, out_shape = kernel.shape[:in_dims], kernel.shape[in_dims:]
  leading = x.shape[:x.ndim - in_dims]
  flat_in = int(np.prod(in_shape))
  out_dtype = None if preferred_element_type is None else jnp.dtype(preferred_element_type)
  y = _flat_matmul(x.reshape(-1, flat_in), kernel.reshape(flat_in, -1), out_dtype)
  return checkpoint_name(y.reshape(*leading, *out_shape), WEIGHT_MATMUL)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _flat_matmul(x: Array, kernel: Array, out_dtype) -> Array:
  """[tokens, in] x float32 [in, out] in x's dtype; out_dtype None: x's dtype."""
  return jnp.dot(x, kernel.astype(x.dtype), preferred_element_type=out_dtype)


def _flat_matmul_fwd(x, kernel, out_dtype):
  weight = kernel.astype(x.dtype)
  return jnp.dot(x, weight, preferred_element_type=out_dtype), (x, weight)


def _flat_matmul_bwd(out_dtype, residuals, g):
  x, weight = residuals
  # What autodiff would do for dx (in the promoted dtype of g and x, then x's dtype); dW keeps float32.
  common = jnp.promote_types(g.dtype, x.dtype)
  g = g.astype(common)
  dx = jax.lax.dot_general(g, weight.astype(common), (((1,), (1,)), ((), ()))).astype(x.dtype)
  dw = jax.lax.dot_general(x.astype(common), g, (((0,), (0,)), ((), ())),
                           preferred_element_type=jnp.float32)
  return dx, dw


_flat_matmul.defvjp(_flat_matmul_fwd, _flat_matmul_bwd)


def constrain(x: Array, axes: tuple[str, ...]) -> Array:
  return nn.with_logical_constraint(x, axes)


# ----------------------------------------------------------------------------------------------------
# Relative position buckets.


@functools.lru_cache(maxsize=None)
def _bucket_table(num_buckets: int, max_distance: int) -> np.ndarray:
  """Bucket of each non-negative distance 0..max_distance (one direction).

  Distances below num_buckets/2 get their own bucket; larger ones share log-spaced buckets up to
  max_distance. Computed once in numpy float32 with the same operation order as HF's
  `_relative_position_bucket` (log, divide, multiply, truncate), so boundary distances such as 64, where a
  float32 rounding decides the bucket, land where the pretrained model expects them.
  """
  max_exact = num_buckets // 2
  distance = np.arange(max_distance + 1)
  safe = np.maximum(distance, 1).astype(np.float32)
  scaled = (np.log(safe / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
            * np.float32(num_buckets - max_exact))
  large = np.minimum(max_exact + scaled.astype(np.int64), num_buckets - 1)
  return np.where(distance < max_exact, distance, large).astype(np.int32)


def relative_position_buckets(relative_position: Array, *, bidirectional: bool, num_buckets: int,
                              max_distance: int) -> Array:
  """Maps key_position - query_position (int array) to bucket ids in [0, num_buckets)."""
  if bidirectional:
    half = num_buckets // 2
    offset = jnp.where(relative_position > 0, half, 0)
    distance = jnp.abs(relative_position)
    table = _bucket_table(half, max_distance)
  else:
    offset = 0
    distance = jnp.maximum(-relative_position, 0)
    table = _bucket_table(num_buckets, max_distance)
  return offset + jnp.asarray(table)[jnp.minimum(distance, max_distance)]


class RelativePositionBias(nn.Module):
  """Learned per-head bias of each (query, key) pair from their bucketed distance; float32 output."""
  config: T5Config
  bidirectional: bool

  @nn.compact
  def __call__(self, query_positions: Array, key_positions: Array) -> Array:
    """query_positions [b|1, q], key_positions [b|1, k] -> bias [b|1, heads, q, k]."""
    cfg = self.config
    table = _param(self, "embedding", (cfg.relative_attention_num_buckets, cfg.num_heads),
                   ("relpos_buckets", "heads"), stddev=cfg.d_model**-0.5)
    relative = key_positions[:, None, :] - query_positions[:, :, None]
    buckets = relative_position_buckets(relative, bidirectional=self.bidirectional,
                                        num_buckets=cfg.relative_attention_num_buckets,
                                        max_distance=cfg.relative_attention_max_distance)
    bias = jnp.take(table, buckets, axis=0)  # [b, q, k, heads]
    return jnp.transpose(bias, (0, 3, 1, 2))


# ----------------------------------------------------------------------------------------------------
# Masks.


def positions_from_segments(segment_ids: Array) -> Array:
  """Per-example positions (restarting at 0 where the segment id changes) for packed rows."""
  length = segment_ids.shape[-1]
  index = jnp.arange(length, dtype=jnp.int32)
  starts = jnp.concatenate(
      [jnp.ones_like(segment_ids[:, :1], dtype=bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  start_index = jax.lax.cummax(jnp.where(starts, index, 0), axis=1)
  return index - start_index


def mask_bias(key_valid: Array, query_segments: Optional[Array] = None,
              key_segments: Optional[Array] = None, causal_offset: Optional[Array] = None,
              query_length: Optional[int] = None) -> Array:
  """Additive float32 attention mask [b, 1, q, k]: 0 where allowed, MASK_LOGIT elsewhere.

  key_valid [b, k] bool; segments [b, q] / [b, k] (attention only within equal segment ids);
  causal_offset: if given, query i (absolute position causal_offset + i) sees keys at positions <= it.
  """
  allowed = key_valid[:, None, :]
  if query_segments is not None:
    allowed = allowed & (query_segments[:, :, None] == key_segments[:, None, :])
  if causal_offset is not None:
    q_len = query_length if query_segments is None else query_segments.shape[1]
    query_index = causal_offset + jnp.arange(q_len, dtype=jnp.int32)
    key_index = jnp.arange(key_valid.shape[1], dtype=jnp.int32)
    allowed = allowed & (key_index[None, None, :] <= query_index[None, :, None])
  return jnp.where(allowed, 0.0, MASK_LOGIT).astype(jnp.float32)[:, None, :, :]


# ----------------------------------------------------------------------------------------------------
# Layers.


class RMSNorm(nn.Module):
  """T5 layer norm: scale * x / rms(x), no mean subtraction, no bias; computed in float32."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    # Scaled in float32 before the cast, so the scale's gradient (summed over tokens and then over data
    # replicas) is float32 too, as the weight gradients of `_matmul` are.
    return (x32 * jax.lax.rsqrt(variance + self.config.layer_norm_epsilon) * scale).astype(x.dtype)


class LayerNorm(nn.Module):
  """LayerNorm with scale and bias (BLOOM): computed in float32, variance as E[(x - mean)^2] (not the
  faster E[x^2] - mean^2, which differs in the last bits from torch's)."""
  epsilon: float

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (features,), jnp.float32)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                      (features,), jnp.float32)
    x32 = x.astype(jnp.float32)
    centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    variance = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
    return (centred * jax.lax.rsqrt(variance + self.epsilon) * scale + bias).astype(x.dtype)


class BiasedProjection(nn.Module):
  """x [..., *in] times `kernel` [*in, *out] plus `bias` [*out] (zero-initialised), in x's dtype.

  `axes` names all kernel dimensions; the bias takes the names of the output ones.
  """
  shape: tuple[int, ...]
  axes: tuple[str, ...]
  in_dims: int
  stddev: float

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = _param(self, "kernel", self.shape, self.axes, self.stddev)
    out_shape, out_axes = self.shape[self.in_dims:], self.axes[self.in_dims:]
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, out_axes),
                      out_shape, jnp.float32)
    return _matmul(x, kernel, self.in_dims) + bias.astype(x.dtype)


class MultiHeadAttention(nn.Module):
  """Multi-head dot-product attention with an additive float32 bias (relative positions + mask).

  Kernels are 3-D ([embed, heads, kv] and [heads, kv, embed]) so heads shard over `model` without
  reshapes. Decoding (`decode=True` on an initialised cache): self-attention writes the new tokens'
  keys/values at `cache_index` and attends over the whole cache (the bias masks slots not yet written);
  cross-attention (`cross=True`) projects the encoder output once, at cache_index 0, and reuses it.
  """
  config: T5Config
  deterministic: bool = True
  decode: bool = False
  cross: bool = False

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, bias: Array,
               cache_index: Optional[Array] = None) -> Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    d, h, k = cfg.d_model, cfg.num_heads, cfg.d_kv
    qkv_axes = ("embed", "heads", "kv")
    # No 1/sqrt(d_kv) on the scores: mT5 folds it into the query initialisation (std (d*k)^-0.5).
    wq = Kernel((d, h, k), qkv_axes, (d * k)**-0.5, name="query")()
    wk = Kernel((d, h, k), qkv_axes, d**-0.5, name="key")()
    wv = Kernel((d, h, k), qkv_axes, d**-0.5, name="value")()
    wo = Kernel((h, k, d), ("heads", "kv", "embed"), (h * k)**-0.5, name="out")()

    act_axes = ("batch", "length", "heads", "kv")
    project = lambda x, w: constrain(_matmul(x, w, 1), act_axes)
    query = project(inputs_q, wq)
    project_kv = lambda: (project(inputs_kv, wk), project(inputs_kv, wv))

    if self.decode:
      kv_shape = (*inputs_kv.shape[:2], h, k)
      initialised = self.has_variable("cache", "cached_key")
      cached_key = self.variable("cache", "cached_key", jnp.zeros, kv_shape, dtype)
      cached_value = self.variable("cache", "cached_value", jnp.zeros, kv_shape, dtype)
      if not initialised:  # the init call that creates the cache: shapes only
        key, value = project_kv()
      elif self.cross:
        # The encoder output is fixed for the whole sequence: project it at the first step only.
        key, value = jax.lax.cond(cache_index == 0, project_kv,
                                  lambda: (cached_key.value, cached_value.value))
        cached_key.value, cached_value.value = key, value
      else:
        new_key, new_value = project_kv()
        start = (0, cache_index, 0, 0)
        key = jax.lax.dynamic_update_slice(cached_key.value, new_key, start)
        value = jax.lax.dynamic_update_slice(cached_value.value, new_value, start)
        cached_key.value, cached_value.value = key, value
    else:
      key, value = project_kv()

    scores = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(scores + bias, axis=-1)
    probs = Dropout(cfg.dropout_rate)(probs, deterministic=self.deterministic)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(dtype), value)
    return _matmul(context, wo, 2)


class GatedGeluMlp(nn.Module):
  """wo(dropout(gelu_tanh(x wi_0) * (x wi_1)))."""
  config: T5Config
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    wi_0 = Kernel((cfg.d_model, cfg.d_ff), ("embed", "mlp"), cfg.d_model**-0.5, name="wi_0")()
    wi_1 = Kernel((cfg.d_model, cfg.d_ff), ("embed", "mlp"), cfg.d_model**-0.5, name="wi_1")()
    wo = Kernel((cfg.d_ff, cfg.d_model), ("mlp", "embed"), cfg.d_ff**-0.5, name="wo")()
    gate = jax.nn.gelu(_matmul(x, wi_0, 1), approximate=True)
    hidden = gate * _matmul(x, wi_1, 1)
    hidden = constrain(hidden, ("batch", "length", "mlp"))
    hidden = Dropout(cfg.dropout_rate)(hidden, deterministic=self.deterministic)
    return _matmul(hidden, wo, 1)


class LMHead(nn.Module):
  """Untied output projection [embed, vocab], no d_model^-0.5 rescaling (mT5); float32 logits."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    kernel = _param(self, "kernel", (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg.d_model**-0.5)
    logits = _matmul(x, kernel, 1, preferred_element_type=jnp.float32)
    return constrain(logits, ("batch", "length", "vocab"))


class Embed(nn.Module):
  """Input embedding [vocab, embed] (mT5: HF `shared`, shared by encoder and decoder; BLOOM:
  `word_embeddings`, also the tied output layer through `attend`). Any config with vocab_size, d_model
  and dtype."""
  config: Any
  stddev: float = 1.0

  def setup(self):
    cfg = self.config
    self.embedding = _param(self, "embedding", (cfg.vocab_size, cfg.d_model), ("vocab", "embed"),
                            self.stddev)

  def __call__(self, tokens: Array) -> Array:
    embedded = jnp.take(self.embedding, tokens, axis=0).astype(jnp.dtype(self.config.dtype))
    return constrain(embedded, ("batch", "length", "embed"))

  def attend(self, x: Array) -> Array:
    """Tied read-out: x [..., embed] (activation dtype) times the table's transpose -> float32 logits
    [..., vocab] (float32 accumulation, as `LMHead`)."""
    logits = _matmul(x, self.embedding.T, 1, preferred_element_type=jnp.float32)
    return constrain(logits, ("batch", "length", "vocab"))
