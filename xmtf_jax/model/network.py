"""The mT5 (T5.1.1) encoder-decoder as Flax linen modules (the blocks are in `layers.py`).

Architecture (matches HF `MT5ForConditionalGeneration`, checked logit by logit in tests/test_network_hf.py):
RMS layer norm without bias or mean subtraction; relative position bias (bucketed, bidirectional in the
encoder, causal in the decoder) computed once per stack and added to every layer's self-attention logits
(with `T5Config.relative_attention_per_layer`: each layer's own table, umT5 / scanned t5x; see below); no
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

With `T5Config.relative_attention_per_layer`, `{encoder,decoder}/relpos_bias` is absent and every layer
has its own `layers_{i}/relpos_bias/embedding` [relpos_buckets, heads] (HF `UMT5ForConditionalGeneration`:
`block.{i}.layer.0.SelfAttention.relative_attention_bias` in every block); the stack then passes the
positions to its layers with a mask-only bias.

With `T5Config.scan_layers`, each stack's `layers_{i}` subtrees are one `layers` subtree whose leaves
have a leading `layers` axis ([layers, embed, heads, kv], ...); `layer_stacking.py` converts.

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
`mutable=['cache']`. Scanned, the per-layer cache leaves are stacked on axis 1 ([batch, layers, ...]).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from xmtf_jax.errors import UserError
from xmtf_jax.model.config import T5Config
from xmtf_jax.model.dropout import Dropout
from xmtf_jax.model.layers import (WEIGHT_MATMUL, Embed, GatedGeluMlp, LMHead, MultiHeadAttention, RMSNorm,
                                   RelativePositionBias, constrain, mask_bias, positions_from_segments)

Array = Any

REMAT_POLICIES = {
    "none": None,
    # What every remat policy keeps anyway: each layer's inputs (the residual stream entering it, and in a
    # scanned stack the scan carry), from which the backward pass recomputes the whole layer. "minimal"
    # is the name other trainers use for this; "full" is the name this project used first.
    "minimal": jax.checkpoint_policies.nothing_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
    # Keep the outputs of matmuls against weights (named in layers._matmul, whose custom VJP hides the
    # dot from dot-based policies); recompute the cheap elementwise work and attention.
    "dots": jax.checkpoint_policies.save_only_these_names(WEIGHT_MATMUL),
}


def layer_self_bias(module: nn.Module, cfg: T5Config, bias: Array, positions: Optional[tuple],
                    bidirectional: bool) -> Array:
  """A layer's self-attention bias: the stack's `bias` as it is, or (per-layer tables) plus this
  layer's own relative position bias of `positions` = (query_positions, key_positions)."""
  if not cfg.relative_attention_per_layer:
    return bias
  return bias + RelativePositionBias(cfg, bidirectional=bidirectional, name="relpos_bias", parent=module)(
      *positions)


class EncoderLayer(nn.Module):
  config: T5Config
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array, bias: Array, positions: Optional[tuple] = None) -> Array:
    cfg = self.config
    dropout = Dropout(cfg.dropout_rate)
    bias = layer_self_bias(self, cfg, bias, positions, bidirectional=True)
    y = RMSNorm(cfg, name="pre_attention_layer_norm")(x)
    y = MultiHeadAttention(cfg, self.deterministic, name="attention")(y, y, bias)
    x = x + dropout(y, deterministic=self.deterministic)
    y = RMSNorm(cfg, name="pre_mlp_layer_norm")(x)
    y = GatedGeluMlp(cfg, self.deterministic, name="mlp")(y)
    x = x + dropout(y, deterministic=self.deterministic)
    return constrain(x, ("batch", "length", "embed"))


class DecoderLayer(nn.Module):
  config: T5Config
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x: Array, encoded: Array, self_bias: Array, cross_bias: Array,
               cache_index: Optional[Array] = None, positions: Optional[tuple] = None) -> Array:
    cfg = self.config
    dropout = Dropout(cfg.dropout_rate)
    self_bias = layer_self_bias(self, cfg, self_bias, positions, bidirectional=False)
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
    return constrain(x, ("batch", "length", "embed"))


def maybe_remat(layer_cls: type, policy_name: str, scanned: bool, config_name: str = "T5Config") -> Callable:
  """`layer_cls` wrapped in `nn.remat` with the named policy of REMAT_POLICIES (any model family)."""
  if policy_name not in REMAT_POLICIES:
    raise UserError(f"{config_name}.remat_policy={policy_name!r}: choose one of {sorted(REMAT_POLICIES)}")
  if policy_name == "none":
    return layer_cls
  # Inside a scan, the loop boundary already keeps XLA from merging the recomputation with the forward.
  return nn.remat(layer_cls, policy=REMAT_POLICIES[policy_name], prevent_cse=not scanned)


def apply_layers(layer_cls: Callable, cfg: T5Config, num_layers: int, x: Array, args: tuple,
                 layer_fields: tuple = ()) -> Array:
  """x through `num_layers` layers `layer_cls(cfg, *layer_fields)`, each called as layer(x, *args).

  The one place that knows both layouts. Per layer (cfg.scan_layers False): modules `layers_{i}`.
  Scanned: one module `layers` under `nn.scan`; its params (and decoding cache) carry a leading
  `layers` axis (logical name `layers`, replicated), `args` are broadcast to every step, and dropout
  draws an independent key per layer. Must be called inside a compact method.
  """
  if not cfg.scan_layers:
    for i in range(num_layers):
      x = layer_cls(cfg, *layer_fields, name=f"layers_{i}")(x, *args)
    return x

  def body(layer, carry, *step_args):
    return layer(carry, *step_args), None

  # The cache goes on axis 1 so its leaves keep batch first (beam search reorders rows on axis 0).
  scan = nn.scan(body, variable_axes={"params": 0, "cache": 1}, split_rngs={"params": True, "dropout": True},
                 in_axes=(nn.broadcast,) * len(args), length=num_layers,
                 metadata_params={nn.PARTITION_NAME: "layers"})
  x, _ = scan(layer_cls(cfg, *layer_fields, name="layers"), x, *args)
  return x


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
    bias = mask_bias(key_valid, encoder_segment_ids, encoder_segment_ids)
    positions = None
    if cfg.relative_attention_per_layer:  # each layer adds its own table's bias of these positions
      positions = (encoder_positions, encoder_positions)
    else:  # one bias for all layers: relative positions (shared, from layer 0 in HF terms) plus the mask
      bias = RelativePositionBias(cfg, bidirectional=True, name="relpos_bias")(
          encoder_positions, encoder_positions) + bias

    x = Dropout(cfg.dropout_rate)(embedded, deterministic=deterministic)
    x = constrain(x, ("batch", "length", "embed"))
    layer_cls = maybe_remat(EncoderLayer, cfg.remat_policy, cfg.scan_layers)
    x = apply_layers(layer_cls, cfg, cfg.num_encoder_layers, x, (bias, positions), (deterministic,))
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
    per_layer = cfg.relative_attention_per_layer
    # Shared table: its bias is added here once; per-layer tables: each layer adds its own (positions).
    relpos = None if per_layer else RelativePositionBias(cfg, bidirectional=False, name="relpos_bias")

    cache_index = None
    if decode and self.has_variable("cache", "cache_index"):
      # Step-wise decoding: `length` new tokens at absolute positions cache_index + [0, length).
      if decoder_segment_ids is not None:
        raise ValueError("decode=True does not take packed (segmented) decoder inputs")
      index_var = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
      cache_index = index_var.value
      layer_cache = self.variables["cache"]["layers" if cfg.scan_layers else "layers_0"]
      max_length = layer_cache["self_attention"]["cached_key"].shape[-3]  # [batch, (layers,) length, h, kv]
      query_positions = (cache_index + jnp.arange(length, dtype=jnp.int32))[None]
      key_positions = jnp.arange(max_length, dtype=jnp.int32)[None]
      positions = (query_positions, key_positions)
      self_bias = mask_bias(jnp.ones((batch, max_length), bool), causal_offset=cache_index,
                            query_length=length)
      index_var.value = cache_index + length
    else:
      if decode:  # the init call that creates the cache
        self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
      if decoder_positions is None:
        decoder_positions = (positions_from_segments(decoder_segment_ids) if decoder_segment_ids is not None
                             else jnp.arange(length, dtype=jnp.int32)[None])
      key_valid = (decoder_segment_ids > 0 if decoder_segment_ids is not None
                   else jnp.ones((batch, length), bool))
      positions = (decoder_positions, decoder_positions)
      self_bias = mask_bias(key_valid, decoder_segment_ids, decoder_segment_ids, causal_offset=0,
                            query_length=length)
    if per_layer:
      self_bias_args = (self_bias, positions)
    else:
      self_bias_args = (relpos(*positions) + self_bias, None)

    if encoder_segment_ids is not None:
      if decoder_segment_ids is None:
        raise ValueError("packed encoder inputs (encoder_segment_ids) need decoder_segment_ids too")
      cross_bias = mask_bias(encoder_segment_ids > 0, decoder_segment_ids, encoder_segment_ids)
    else:
      cross_bias = mask_bias(encoder_input_tokens > 0)

    x = Dropout(cfg.dropout_rate)(embedded, deterministic=deterministic)
    x = constrain(x, ("batch", "length", "embed"))
    layer_cls = DecoderLayer if decode else maybe_remat(DecoderLayer, cfg.remat_policy, cfg.scan_layers)
    x = apply_layers(layer_cls, cfg, cfg.num_decoder_layers, x,
                     (encoded, self_bias_args[0], cross_bias, cache_index, self_bias_args[1]),
                     (deterministic, decode))
    x = RMSNorm(cfg, name="decoder_norm")(x)
    x = Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    return LMHead(cfg, name="logits_dense")(x)


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


