"""BLOOM (decoder-only, ALiBi) as Flax linen modules; the generic blocks are in `layers.py`.

Architecture (matches HF `BloomForCausalLM`, checked logit by logit in tests/test_bloom_network.py):
the token embedding is followed by a LayerNorm; pre-LN blocks (LayerNorms with bias, eps from the
config); one fused query/key/value projection with bias whose output is laid out per head
[heads, 3, kv] as HF's and Megatron's; scores q.k / sqrt(kv) plus the ALiBi bias slope_h * key position;
tanh-GELU MLP of width 4 * hidden with biases; hidden dropout after the embedding LayerNorm and before
each residual add, attention dropout on the probabilities; a final LayerNorm and the embedding as the
output layer (tied head, float32 logits over all vocab_size rows).

Parameter tree (the `params` collection; every leaf float32, boxed with logical axis names at init):

  word_embeddings/embedding                                 [vocab, embed]
  word_embeddings_layernorm/{scale,bias}                    [embed]
  decoder/layers_{i}/input_layernorm/{scale,bias}           [embed]
  decoder/layers_{i}/self_attention/query_key_value/kernel  [embed, heads, qkv, kv]
  decoder/layers_{i}/self_attention/query_key_value/bias    [heads, qkv, kv]
  decoder/layers_{i}/self_attention/dense/kernel            [heads, kv, embed]
  decoder/layers_{i}/self_attention/dense/bias              [embed]
  decoder/layers_{i}/post_attention_layernorm/{scale,bias}  [embed]
  decoder/layers_{i}/mlp/dense_h_to_4h/{kernel,bias}        [embed, mlp], [mlp]
  decoder/layers_{i}/mlp/dense_4h_to_h/{kernel,bias}        [mlp, embed], [embed]
  decoder/ln_f/{scale,bias}                                 [embed]

With `BloomConfig.scan_layers` the `layers_{i}` subtrees are one `decoder/layers` subtree with a leading
`layers` axis (as mT5's stacks; `layer_stacking.py` converts).

Masks and positions live in `BloomDecoder`: attention is causal, within equal segment ids and to keys
whose segment id is > 0 (0 = padding, which is also how a left-padded row is written). The ALiBi key
positions are (cumsum(valid) - 1) * valid per row, so left padding changes nothing and a packed row's
examples see row-absolute positions, which ALiBi's translation invariance makes equal to per-example ones.
The ALiBi term is [batch, heads, 1, keys] and the mask [batch, 1, queries, keys], both float32, computed
once per forward and broadcast to every layer.

Decoding (`decode=True` on an initialised cache): the `cache` collection holds per layer
`self_attention/{cached_key,cached_value}` [batch, max_length, heads, kv] (scanned: [batch, layers, ...]),
and in `decoder` the scalar `cache_index` (the next slot) and `key_valid` [batch, max_length] int32
(1 where a slot holds a real token). Each call writes its L tokens into slots cache_index .. +L-1 (with
their validity from the segment ids, so a left-padded prompt is one call) and attends to the valid
slots up to its own; the ALiBi positions of the slots are the cumsum of `key_valid`.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xmtf_jax.model.bloom_config import BloomConfig
from xmtf_jax.model.dropout import Dropout
from xmtf_jax.model.layers import BiasedProjection, Embed, LayerNorm, constrain, mask_bias
from xmtf_jax.model.network import apply_layers, maybe_remat

Array = Any


# ----------------------------------------------------------------------------------------------------
# ALiBi.


def alibi_slopes(num_heads: int) -> np.ndarray:
  """float32 [num_heads]: the geometric slopes of ALiBi as BLOOM (HF, Megatron) computes them.

  c = the largest power of 2 <= num_heads: slopes (2^(-8/c))^i, i = 1..c; for other head counts the
  odd powers of 2^(-8/(2c)) follow (every other slope of the 2c-head series), so 112 heads are not
  monotone. Powers of a float32 base in float32, as HF computes them (HF's vectorised `torch.pow` can
  differ in the last bit; here each power is correctly rounded).
  """
  closest = 2**math.floor(math.log2(num_heads))
  base = np.float32(2**(-(2**-(math.log2(closest) - 3))))
  slopes = np.power(base, np.arange(1, 1 + closest, dtype=np.float32), dtype=np.float32)
  if closest != num_heads:
    extra_base = np.float32(2**(-(2**-(math.log2(2 * closest) - 3))))
    remaining = min(closest, num_heads - closest)
    extra = np.power(extra_base, np.arange(1, 1 + 2 * remaining, 2, dtype=np.float32), dtype=np.float32)
    slopes = np.concatenate([slopes, extra])
  return slopes.astype(np.float32)


def alibi_positions(valid: Array) -> Array:
  """int32 [b, k]: (cumsum(valid) - 1) * valid, the position of each real key among its row's real keys."""
  valid = valid.astype(jnp.int32)
  return (jnp.cumsum(valid, axis=-1) - 1) * valid


def alibi_bias(num_heads: int, key_positions: Array) -> Array:
  """float32 [b, heads, 1, k]: slope_h * key position (the query's own term cancels in the softmax)."""
  slopes = jnp.asarray(alibi_slopes(num_heads))
  return slopes[None, :, None, None] * key_positions.astype(jnp.float32)[:, None, None, :]


# ----------------------------------------------------------------------------------------------------
# Layers.


class BloomAttention(nn.Module):
  """Self-attention with the fused per-head [heads, 3, kv] QKV projection, ALiBi and a KV cache."""
  config: BloomConfig
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x: Array, alibi: Array, mask: Array, cache_index: Optional[Array] = None) -> Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    d, h, k = cfg.d_model, cfg.num_heads, cfg.d_kv
    std = cfg.initializer_range
    act_axes = ("batch", "length", "heads", "kv")
    qkv = BiasedProjection((d, h, 3, k), ("embed", "heads", "qkv", "kv"), 1, std, name="query_key_value")(x)
    qkv = constrain(qkv, ("batch", "length", "heads", "qkv", "kv"))
    query, key, value = (constrain(qkv[:, :, :, j, :], act_axes) for j in range(3))

    if self.decode:
      initialised = self.has_variable("cache", "cached_key")
      kv_shape = (*x.shape[:2], h, k)
      cached_key = self.variable("cache", "cached_key", jnp.zeros, kv_shape, dtype)
      cached_value = self.variable("cache", "cached_value", jnp.zeros, kv_shape, dtype)
      if initialised:  # else: the init call that creates the cache (shapes only)
        start = (0, cache_index, 0, 0)
        key = jax.lax.dynamic_update_slice(cached_key.value, key.astype(dtype), start)
        value = jax.lax.dynamic_update_slice(cached_value.value, value.astype(dtype), start)
        cached_key.value, cached_value.value = key, value

    scores = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
    scores = scores * np.float32(1.0 / math.sqrt(k)) + alibi + mask
    probs = jax.nn.softmax(scores, axis=-1)
    probs = Dropout(cfg.attention_dropout_rate)(probs, deterministic=self.deterministic)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(dtype), value)
    context = constrain(context, act_axes)
    return BiasedProjection((h, k, d), ("heads", "kv", "embed"), 2, std, name="dense")(context)


class BloomMlp(nn.Module):
  """dense_4h_to_h(gelu_tanh(dense_h_to_4h(x))), both with biases."""
  config: BloomConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    std = cfg.initializer_range
    hidden = BiasedProjection((cfg.d_model, cfg.d_ff), ("embed", "mlp"), 1, std, name="dense_h_to_4h")(x)
    hidden = constrain(jax.nn.gelu(hidden, approximate=True), ("batch", "length", "mlp"))
    return BiasedProjection((cfg.d_ff, cfg.d_model), ("mlp", "embed"), 1, std, name="dense_4h_to_h")(hidden)


class BloomBlock(nn.Module):
  """Pre-LN block: x + drop(attn(LN(x))), then x + drop(mlp(LN(x)))."""
  config: BloomConfig
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x: Array, alibi: Array, mask: Array, cache_index: Optional[Array] = None) -> Array:
    cfg = self.config
    dropout = Dropout(cfg.dropout_rate)
    y = LayerNorm(cfg.layer_norm_epsilon, name="input_layernorm")(x)
    attention = BloomAttention(cfg, self.deterministic, self.decode, name="self_attention")
    y = attention(y, alibi, mask, cache_index)
    x = x + dropout(y, deterministic=self.deterministic)
    y = LayerNorm(cfg.layer_norm_epsilon, name="post_attention_layernorm")(x)
    y = BloomMlp(cfg, name="mlp")(y)
    x = x + dropout(y, deterministic=self.deterministic)
    return constrain(x, ("batch", "length", "embed"))


# ----------------------------------------------------------------------------------------------------
# The stack and the full model.


class BloomDecoder(nn.Module):
  """The layers and `ln_f`; owns the masks, the ALiBi term and the cache's index and validity."""
  config: BloomConfig

  @nn.compact
  def __call__(self, x: Array, segment_ids: Optional[Array], enable_dropout: bool, decode: bool) -> Array:
    cfg = self.config
    batch, length = x.shape[:2]
    valid = segment_ids > 0 if segment_ids is not None else jnp.ones((batch, length), bool)

    cache_index = None
    if decode and self.has_variable("cache", "cache_index"):
      index_var = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
      valid_var = self.variable("cache", "key_valid", jnp.zeros, (batch, length), jnp.int32)
      cache_index = index_var.value
      key_valid = jax.lax.dynamic_update_slice(valid_var.value, valid.astype(jnp.int32), (0, cache_index))
      valid_var.value, index_var.value = key_valid, cache_index + length
      mask = mask_bias(key_valid > 0, causal_offset=cache_index, query_length=length)
      key_positions = alibi_positions(key_valid)
    else:
      if decode:  # the init call that creates the cache: [batch, max_length] zeros
        self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
        self.variable("cache", "key_valid", jnp.zeros, (batch, length), jnp.int32)
      mask = mask_bias(valid, segment_ids, segment_ids, causal_offset=0, query_length=length)
      key_positions = alibi_positions(valid)
    alibi = alibi_bias(cfg.num_heads, key_positions)

    deterministic = not enable_dropout
    layer_cls = BloomBlock if decode else maybe_remat(BloomBlock, cfg.remat_policy, cfg.scan_layers,
                                                      "BloomConfig")
    x = apply_layers(layer_cls, cfg, cfg.num_decoder_layers, x, (alibi, mask, cache_index),
                     (deterministic, decode))
    return LayerNorm(cfg.layer_norm_epsilon, name="ln_f")(x)


class BloomLM(nn.Module):
  """BLOOM for causal LM. Token ids int32 [batch, length]; logits float32 [batch, length, vocab]."""
  config: BloomConfig

  def setup(self):
    cfg = self.config
    self.word_embeddings = Embed(cfg, stddev=cfg.initializer_range)
    self.word_embeddings_layernorm = LayerNorm(cfg.layer_norm_epsilon)
    self.embedding_dropout = Dropout(cfg.dropout_rate)
    self.decoder = BloomDecoder(cfg)

  def __call__(self, tokens: Array, segment_ids: Optional[Array] = None, *, enable_dropout: bool = False,
               decode: bool = False) -> Array:
    """segment_ids: 0 = padding (never attended to), else attention stays within equal ids. With
    decode=True the tokens are appended to the cache (segment ids then only mark padding)."""
    x = self.word_embeddings_layernorm(self.word_embeddings(tokens))
    x = self.embedding_dropout(x, deterministic=not enable_dropout)
    x = constrain(x, ("batch", "length", "embed"))
    x = self.decoder(x, segment_ids, enable_dropout, decode)
    return self.word_embeddings.attend(x)
