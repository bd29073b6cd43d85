"""The mT5 (T5.1.1) encoder-decoder as Flax linen modules.

Architecture (matches HF `MT5ForConditionalGeneration`, checked logit by logit in tests/test_network_hf.py):
RMS layer norm without bias or mean subtraction; relative position bias (bucketed, bidirectional in the
encoder, causal in the decoder) computed once per stack and added to every layer's attention logits; no
1/sqrt(d_kv) scaling of queries (mT5 folds it into the initialisation); gated-GELU MLP (tanh approximation,
`gelu_new`); no biases; an input embedding shared by encoder and decoder and a separate, unscaled LM head.

Parameter tree (the `params` collection; every leaf float32, boxed with logical axis names at init):

  token_embedder/embedding                                  [vocab, embed]
  encoder/relpos_bias/embedding                             [relpos_buckets, heads]
  encoder/layers_{i}/pre_attention_layer_norm/scale         [embed]
  encoder/layers_{i}/attention/{query,key,value}/kernel     [embed, heads, kv]
  encoder/layers_{i}/attention/out/kernel                   [heads, kv, embed]
  encoder/layers_{i}/pre_mlp_layer_norm/scale               [embed]
  encoder/layers_{i}/mlp/{wi_0,wi_1}/kernel                 [embed, mlp]
  encoder/layers_{i}/mlp/wo/kernel                          [mlp, embed]
  encoder/encoder_norm/scale                                [embed]
  decoder/relpos_bias/embedding                             [relpos_buckets, heads]
  decoder/layers_{i}/pre_self_attention_layer_norm/scale    [embed]
  decoder/layers_{i}/self_attention/...                     (as encoder attention)
  decoder/layers_{i}/pre_cross_attention_layer_norm/scale   [embed]
  decoder/layers_{i}/encoder_decoder_attention/...          (as encoder attention)
  decoder/layers_{i}/pre_mlp_layer_norm/scale               [embed]
  decoder/layers_{i}/mlp/...                                (as encoder mlp)
  decoder/decoder_norm/scale                                [embed]
  decoder/logits_dense/kernel                               [embed, vocab]

Packing: `*_segment_ids` (0 = padding) keep attention inside one example (encoder, causal decoder, and
cross-attention where decoder and encoder segments must be equal); `*_positions` restart at 0 for each
packed example and drive the relative position buckets, so a packed example sees the bias it sees alone.
Without segment ids, encoder padding is token 0 (masked as keys, as HF's attention_mask does) and the
decoder is causal only (decoder inputs start with the pad id 0, so tokens cannot mark decoder padding;
padded positions are excluded by the loss weights).

Decoding: `Transformer.decode(..., decode=True)` reads and writes a `cache` collection: per decoder
layer `self_attention/{cached_key,cached_value}` [batch, max_decode_length, heads, kv] and
`encoder_decoder_attention/{cached_key,cached_value}` [batch, encoder_length, heads, kv] (the encoder
output projected once, at the first step), and one scalar `decoder/cache_index` (the position of the
next token). Create it with `init(..., decode=True)` on decoder tokens of shape
[batch, max_decode_length]; then feed tokens L at a time (L=1 for step-wise decoding) with
`mutable=['cache']`.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xmtf_jax.config import T5Config
from xmtf_jax.dropout import Dropout

Array = Any
# Large negative logit for masked keys: finite so that fully-masked rows (padding queries) give a uniform
# distribution instead of NaN; far below any real logit so masked keys get exactly zero probability.
MASK_LOGIT = -1e10

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    # Keep the outputs of matmuls against weights; recompute the cheap elementwise work and attention.
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


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


def _matmul(x: Array, kernel: Array, in_dims: int, preferred_element_type=None) -> Array:
  """x [..., *in] times kernel [*in, *out] -> [..., *out], as one 2-D [tokens, in] x [in, out] dot.

  Why not an einsum: XLA:CPU lowers the backward of multi-dimension contractions (e.g. `bld,dhk->blhk`,
  whose kernel gradient contracts over batch *and* length) to transposing copies plus dots, which made the
  train step ~1.4x slower; after flattening, both gradients are plain 2-D dots. The reshapes are free.
  """
  in_shape, out_shape = kernel.shape[:in_dims], kernel.shape[in_dims:]
  leading = x.shape[:x.ndim - in_dims]
  flat_in = int(np.prod(in_shape))
  y = jnp.dot(x.reshape(-1, flat_in), kernel.reshape(flat_in, -1), preferred_element_type=preferred_element_type)
  return y.reshape(*leading, *out_shape)


def _constrain(x: Array, axes: tuple[str, ...]) -> Array:
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
  """T5 layer norm: scale * x / rms(x), no mean subtraction, no bias; variance in float32."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    normed = (x32 * jax.lax.rsqrt(variance + self.config.layer_norm_epsilon)).astype(x.dtype)
    return normed * scale.astype(x.dtype)


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
    project = lambda x, w: _constrain(_matmul(x, w.astype(dtype), 1), act_axes)
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
    return _matmul(context, wo.astype(dtype), 2)


class GatedGeluMlp(nn.Module):
  """wo(dropout(gelu_tanh(x wi_0) * (x wi_1)))."""
  config: T5Config
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    wi_0 = Kernel((cfg.d_model, cfg.d_ff), ("embed", "mlp"), cfg.d_model**-0.5, name="wi_0")()
    wi_1 = Kernel((cfg.d_model, cfg.d_ff), ("embed", "mlp"), cfg.d_model**-0.5, name="wi_1")()
    wo = Kernel((cfg.d_ff, cfg.d_model), ("mlp", "embed"), cfg.d_ff**-0.5, name="wo")()
    gate = jax.nn.gelu(_matmul(x, wi_0.astype(dtype), 1), approximate=True)
    hidden = gate * _matmul(x, wi_1.astype(dtype), 1)
    hidden = _constrain(hidden, ("batch", "length", "mlp"))
    hidden = Dropout(cfg.dropout_rate)(hidden, deterministic=self.deterministic)
    return _matmul(hidden, wo.astype(dtype), 1)


class EncoderLayer(nn.Module):
  config: T5Config
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array, bias: Array) -> Array:
    cfg = self.config
    dropout = Dropout(cfg.dropout_rate)
    y = RMSNorm(cfg, name="pre_attention_layer_norm")(x)
    y = MultiHeadAttention(cfg, self.deterministic, name="attention")(y, y, bias)
    x = x + dropout(y, deterministic=self.deterministic)
    y = RMSNorm(cfg, name="pre_mlp_layer_norm")(x)
    y = GatedGeluMlp(cfg, self.deterministic, name="mlp")(y)
    x = x + dropout(y, deterministic=self.deterministic)
    return _constrain(x, ("batch", "length", "embed"))


class DecoderLayer(nn.Module):
  config: T5Config
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x: Array, encoded: Array, self_bias: Array, cross_bias: Array,
               cache_index: Optional[Array] = None) -> Array:
    cfg = self.config
    dropout = Dropout(cfg.dropout_rate)
    y = RMSNorm(cfg, name="pre_self_attention_layer_norm")(x)
    y = MultiHeadAttention(cfg, self.deterministic, self.decode, name="self_attention")(
        y, y, self_bias, cache_index)
    x = x + dropout(y, deterministic=self.deterministic)
    y = RMSNorm(cfg, name="pre_cross_attention_layer_norm")(x)
    y = MultiHeadAttention(cfg, self.deterministic, self.decode, cross=True,
                           name="encoder_decoder_attention")(y, encoded, cross_bias, cache_index)
    x = x + dropout(y, deterministic=self.deterministic)
    y = RMSNorm(cfg, name="pre_mlp_layer_norm")(x)
    y = GatedGeluMlp(cfg, self.deterministic, name="mlp")(y)
    x = x + dropout(y, deterministic=self.deterministic)
    return _constrain(x, ("batch", "length", "embed"))


def _maybe_remat(layer_cls: type, policy_name: str) -> Callable:
  if policy_name not in REMAT_POLICIES:
    raise ValueError(f"T5Config.remat_policy={policy_name!r}: choose one of {sorted(REMAT_POLICIES)}")
  if policy_name == "none":
    return layer_cls
  return nn.remat(layer_cls, policy=REMAT_POLICIES[policy_name], prevent_cse=True)


# ----------------------------------------------------------------------------------------------------
# Stacks and the full model.


class Encoder(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, embedded: Array, encoder_input_tokens: Array, encoder_segment_ids: Optional[Array],
               encoder_positions: Optional[Array], enable_dropout: bool) -> Array:
    cfg = self.config
    deterministic = not enable_dropout
    if encoder_segment_ids is not None:
      key_valid = encoder_segment_ids > 0
      if encoder_positions is None:
        encoder_positions = positions_from_segments(encoder_segment_ids)
    else:
      key_valid = encoder_input_tokens > 0
    if encoder_positions is None:
      encoder_positions = jnp.arange(encoder_input_tokens.shape[1], dtype=jnp.int32)[None]
    # One bias for all layers: relative positions (shared, from layer 0 in HF terms) plus the mask.
    bias = RelativePositionBias(cfg, bidirectional=True, name="relpos_bias")(
        encoder_positions, encoder_positions)
    bias = bias + mask_bias(key_valid, encoder_segment_ids, encoder_segment_ids)

    x = Dropout(cfg.dropout_rate)(embedded, deterministic=deterministic)
    x = _constrain(x, ("batch", "length", "embed"))
    layer_cls = _maybe_remat(EncoderLayer, cfg.remat_policy)
    for i in range(cfg.num_encoder_layers):
      x = layer_cls(cfg, deterministic, name=f"layers_{i}")(x, bias)
    x = RMSNorm(cfg, name="encoder_norm")(x)
    return Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, embedded: Array, encoded: Array, encoder_input_tokens: Array,
               encoder_segment_ids: Optional[Array], decoder_segment_ids: Optional[Array],
               decoder_positions: Optional[Array], enable_dropout: bool, decode: bool) -> Array:
    cfg = self.config
    deterministic = not enable_dropout
    batch, length = embedded.shape[:2]
    relpos = RelativePositionBias(cfg, bidirectional=False, name="relpos_bias")

    cache_index = None
    if decode and self.has_variable("cache", "cache_index"):
      # Step-wise decoding: `length` new tokens at absolute positions cache_index + [0, length).
      if decoder_segment_ids is not None:
        raise ValueError("decode=True does not take packed (segmented) decoder inputs")
      index_var = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
      cache_index = index_var.value
      max_length = self.variables["cache"]["layers_0"]["self_attention"]["cached_key"].shape[1]
      query_positions = (cache_index + jnp.arange(length, dtype=jnp.int32))[None]
      key_positions = jnp.arange(max_length, dtype=jnp.int32)[None]
      self_bias = relpos(query_positions, key_positions) + mask_bias(
          jnp.ones((batch, max_length), bool), causal_offset=cache_index, query_length=length)
      index_var.value = cache_index + length
    else:
      if decode:  # the init call that creates the cache
        self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
      if decoder_positions is None:
        decoder_positions = (positions_from_segments(decoder_segment_ids) if decoder_segment_ids is not None
                             else jnp.arange(length, dtype=jnp.int32)[None])
      key_valid = (decoder_segment_ids > 0 if decoder_segment_ids is not None
                   else jnp.ones((batch, length), bool))
      self_bias = relpos(decoder_positions, decoder_positions) + mask_bias(
          key_valid, decoder_segment_ids, decoder_segment_ids, causal_offset=0, query_length=length)

    if encoder_segment_ids is not None:
      if decoder_segment_ids is None:
        raise ValueError("packed encoder inputs (encoder_segment_ids) need decoder_segment_ids too")
      cross_bias = mask_bias(encoder_segment_ids > 0, decoder_segment_ids, encoder_segment_ids)
    else:
      cross_bias = mask_bias(encoder_input_tokens > 0)

    x = Dropout(cfg.dropout_rate)(embedded, deterministic=deterministic)
    x = _constrain(x, ("batch", "length", "embed"))
    layer_cls = DecoderLayer if decode else _maybe_remat(DecoderLayer, cfg.remat_policy)
    for i in range(cfg.num_decoder_layers):
      x = layer_cls(cfg, deterministic, decode, name=f"layers_{i}")(x, encoded, self_bias, cross_bias,
                                                                     cache_index)
    x = RMSNorm(cfg, name="decoder_norm")(x)
    x = Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    return LMHead(cfg, name="logits_dense")(x)


class LMHead(nn.Module):
  """Untied output projection [embed, vocab], no d_model^-0.5 rescaling (mT5); float32 logits."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    kernel = _param(self, "kernel", (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg.d_model**-0.5)
    logits = _matmul(x, kernel.astype(x.dtype), 1, preferred_element_type=jnp.float32)
    return _constrain(logits, ("batch", "length", "vocab"))


class Transformer(nn.Module):
  """mT5 encoder-decoder. Token ids are int32 with pad 0; logits are float32 [batch, length, vocab]."""
  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = Embed(cfg)
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg)

  def encode(self, encoder_input_tokens: Array, encoder_segment_ids: Optional[Array] = None,
             encoder_positions: Optional[Array] = None, *, enable_dropout: bool = False) -> Array:
    """-> encoded [batch, encoder_length, d_model] in the activation dtype."""
    embedded = self.token_embedder(encoder_input_tokens)
    return self.encoder(embedded, encoder_input_tokens, encoder_segment_ids, encoder_positions,
                        enable_dropout)

  def decode(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
             encoder_segment_ids: Optional[Array] = None, decoder_segment_ids: Optional[Array] = None,
             decoder_positions: Optional[Array] = None, *, enable_dropout: bool = False,
             decode: bool = False) -> Array:
    """-> logits float32 [batch, decoder_length, vocab]. encoder_input_tokens give the cross mask."""
    embedded = self.token_embedder(decoder_input_tokens)
    return self.decoder(embedded, encoded, encoder_input_tokens, encoder_segment_ids, decoder_segment_ids,
                        decoder_positions, enable_dropout, decode)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               encoder_segment_ids: Optional[Array] = None, decoder_segment_ids: Optional[Array] = None,
               encoder_positions: Optional[Array] = None, decoder_positions: Optional[Array] = None, *,
               enable_dropout: bool = False, decode: bool = False) -> Array:
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                          enable_dropout=enable_dropout)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, encoder_segment_ids,
                       decoder_segment_ids, decoder_positions, enable_dropout=enable_dropout, decode=decode)


class Embed(nn.Module):
  """Input embedding [vocab, embed], shared by encoder and decoder (HF `shared`)."""
  config: T5Config

  @nn.compact
  def __call__(self, tokens: Array) -> Array:
    cfg = self.config
    table = _param(self, "embedding", (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), 1.0)
    embedded = jnp.take(table, tokens, axis=0).astype(jnp.dtype(cfg.dtype))
    return _constrain(embedded, ("batch", "length", "embed"))
