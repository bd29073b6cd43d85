"""The task-level model: a thin wrapper over `network.Transformer` that everything else uses.

`EncoderDecoderModel` owns the config, the Flax module, the mesh and the logical-axis rules. It offers
pure functions to call inside your own `jax.jit` (`forward`, `encode_fn`, `decode_from_encoded`,
`decode_fn`) and jit-compiled conveniences (`logits`, `encode`, `decode_step`, `score_batch`). Training
losses (`xmtf_jax.train.losses`), scoring (`xmtf_jax.model.scoring`) and decoding
(`xmtf_jax.inference`) build on these.

Parameters are a plain nested dict of float32 arrays (the `params` collection, unboxed); see
`network.py` for the tree.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from xmtf_jax.model import scoring
from xmtf_jax.parallel import partitioning
from xmtf_jax.model.config import T5Config
from xmtf_jax.model.network import Transformer

Array = Any
Params = Any

# The features of a seqio EncDecFeatureConverter batch that the network reads (the rest, e.g.
# decoder_target_tokens and decoder_loss_weights, belong to the loss).
MODEL_INPUT_KEYS = ("encoder_input_tokens", "decoder_input_tokens", "encoder_segment_ids",
                    "decoder_segment_ids", "encoder_positions", "decoder_positions")


def model_inputs(batch: dict[str, Array]) -> dict[str, Array]:
  """The network's inputs from a feature-converted batch: `model.forward(params, **model_inputs(batch))`."""
  return {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}


def strip_boxes(tree: Any) -> Any:
  """Drops the logical-axis boxes of freshly initialised params without adding sharding constraints
  (the shardings come from jit's out_shardings instead)."""
  is_box = lambda x: isinstance(x, nn.Partitioned)
  return jax.tree.map(lambda x: x.value if is_box(x) else x, tree, is_leaf=is_box)


def as_int32(x: Optional[Array]) -> Optional[Array]:
  return None if x is None else jnp.asarray(x, jnp.int32)


class EncoderDecoderModel:
  """mT5 with its partitioning. `mesh=None` runs on the default device with no sharding constraints."""
  is_encoder_decoder = True

  def __init__(self, config: T5Config, mesh: Optional[Mesh] = None,
               logical_axis_rules: Optional[partitioning.LogicalRules] = None):
    self.config = config
    self.module = Transformer(config)
    self.mesh = mesh
    self.logical_axis_rules = (partitioning.logical_axis_rules() if logical_axis_rules is None
                               else tuple(logical_axis_rules))
    self._logits_jit = jax.jit(self.forward, static_argnames=("enable_dropout",))
    self._encode_jit = jax.jit(self.encode_fn)
    self._decode_step_jit = jax.jit(self.decode_fn, donate_argnums=(1,))

  def with_mesh(self, mesh: Optional[Mesh], logical_axis_rules: Optional[partitioning.LogicalRules] = None
                ) -> "EncoderDecoderModel":
    """The same model partitioned over another mesh (or none)."""
    return EncoderDecoderModel(self.config, mesh, logical_axis_rules or self.logical_axis_rules)

  def model_inputs(self, batch: dict[str, Array]) -> dict[str, Array]:
    """The network's inputs among a batch's features (`model_inputs`)."""
    return model_inputs(batch)

  def input_token_count(self, batch: dict[str, Array]) -> Array:
    """Real encoder input tokens (not padding) in the batch: the context, as opposed to the targets."""
    return jnp.sum(jnp.asarray(batch["encoder_input_tokens"]) != 0)

  def partitioning_context(self):
    """Context under which tracing sees this model's mesh and rules (entered by every method here)."""
    return partitioning.axis_rules_context(self.mesh, self.logical_axis_rules)

  # ---- parameters -------------------------------------------------------------------------------

  def _boxed_init(self, rng: Array) -> Any:
    tokens = jnp.ones((1, 1), jnp.int32)
    return self.module.init({"params": rng}, tokens, tokens)["params"]

  @functools.cached_property
  def _abstract_boxed(self) -> Any:
    return jax.eval_shape(self._boxed_init, jax.random.key(0))

  def abstract_params(self) -> Params:
    """Tree of jax.ShapeDtypeStruct (float32), computed without allocating anything."""
    return strip_boxes(self._abstract_boxed)

  def param_logical_axes(self) -> Any:
    """Tree (matching params) of PartitionSpecs of logical axis names, e.g. P('embed', 'heads', 'kv')."""
    return nn.get_partition_spec(self._abstract_boxed)

  def param_shardings(self, mesh: Optional[Any] = None) -> Any:
    """NamedSharding of every parameter on `mesh` (default: this model's mesh; an AbstractMesh works)."""
    mesh = self.mesh if mesh is None else mesh
    if mesh is None:
      raise ValueError("param_shardings needs a mesh: build the model with mesh=... or pass one")
    return partitioning.param_shardings(self.param_logical_axes(), mesh, self.logical_axis_rules,
                                        self.abstract_params())

  def init_params(self, rng: Array) -> Params:
    """Random float32 parameters, created directly with their shardings when the model has a mesh."""
    def init(r):
      with self.partitioning_context():
        return strip_boxes(self._boxed_init(r))
    if self.mesh is None:
      return jax.jit(init)(rng)
    return jax.jit(init, out_shardings=self.param_shardings())(rng)

  # ---- pure functions (call inside your own jit) ------------------------------------------------

  def forward(self, params: Params, encoder_input_tokens: Array, decoder_input_tokens: Array,
              encoder_segment_ids: Optional[Array] = None, decoder_segment_ids: Optional[Array] = None,
              encoder_positions: Optional[Array] = None, decoder_positions: Optional[Array] = None, *,
              enable_dropout: bool = False, dropout_rng: Optional[Array] = None) -> Array:
    """Teacher-forced logits, float32 [batch, decoder_length, vocab]. Pure; jit it yourself or use `logits`."""
    if enable_dropout and dropout_rng is None:
      raise ValueError("enable_dropout=True needs a dropout_rng")
    rngs = {"dropout": dropout_rng} if enable_dropout else None
    with self.partitioning_context():
      return self.module.apply(
          {"params": params}, as_int32(encoder_input_tokens), as_int32(decoder_input_tokens),
          as_int32(encoder_segment_ids), as_int32(decoder_segment_ids), as_int32(encoder_positions),
          as_int32(decoder_positions), enable_dropout=enable_dropout, rngs=rngs)

  def encode_fn(self, params: Params, encoder_input_tokens: Array,
                encoder_segment_ids: Optional[Array] = None, encoder_positions: Optional[Array] = None
                ) -> Array:
    """Encoder output [batch, encoder_length, d_model] (activation dtype)."""
    with self.partitioning_context():
      return self.module.apply({"params": params}, as_int32(encoder_input_tokens),
                               as_int32(encoder_segment_ids), as_int32(encoder_positions),
                               method=Transformer.encode)

  def decode_from_encoded(self, params: Params, encoded: Array, encoder_input_tokens: Array,
                          decoder_input_tokens: Array) -> Array:
    """Teacher-forced logits [batch, decoder_length, vocab] float32 from a precomputed encoding (no
    cache): scoring several targets per input encodes the input once."""
    with self.partitioning_context():
      return self.module.apply({"params": params}, encoded, as_int32(encoder_input_tokens),
                               as_int32(decoder_input_tokens), method=Transformer.decode)

  def decode_fn(self, params: Params, cache: Any, encoded: Array, encoder_input_tokens: Array,
                decoder_input_tokens: Array) -> tuple[Array, Any]:
    """One cached decoding step for `decoder_input_tokens` [batch, L] (L new tokens, usually 1).

    Returns (logits float32 [batch, L, vocab], updated cache). Tokens are placed at positions
    `cache_index .. cache_index + L - 1`; the cache comes from `init_cache`.
    """
    with self.partitioning_context():
      logits, variables = self.module.apply(
          {"params": params, "cache": cache}, encoded, as_int32(encoder_input_tokens),
          as_int32(decoder_input_tokens), decode=True, mutable=["cache"], method=Transformer.decode)
    return logits, variables["cache"]

  def init_cache(self, batch_size: int, max_decode_length: int, encoder_length: int) -> Any:
    """Zeroed KV cache for `max_decode_length` decoder positions (cache_index 0).

    Leaves: `decoder/cache_index` (int32 scalar) and per layer
    `self_attention/{cached_key,cached_value}` [batch, max_decode_length, heads, kv] and
    `encoder_decoder_attention/{cached_key,cached_value}` [batch, encoder_length, heads, kv] (filled
    from `encoded` at the first step), in the activation dtype. Beam search expands the batch axis of the
    non-scalar leaves.
    """
    def make(params):
      encoded = jnp.zeros((batch_size, encoder_length, self.config.d_model), jnp.dtype(self.config.dtype))
      tokens = jnp.ones((batch_size, encoder_length), jnp.int32)
      decoder_tokens = jnp.zeros((batch_size, max_decode_length), jnp.int32)
      variables = self.module.init({"params": jax.random.key(0)}, encoded, tokens, decoder_tokens,
                                   decode=True, method=Transformer.decode)
      return variables["cache"]
    shapes = jax.eval_shape(make, None)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  # ---- jit-compiled conveniences (numpy int32 in, pad 0) ----------------------------------------

  def logits(self, params: Params, encoder_input_tokens: Array, decoder_input_tokens: Array,
             encoder_segment_ids: Optional[Array] = None, decoder_segment_ids: Optional[Array] = None,
             encoder_positions: Optional[Array] = None, decoder_positions: Optional[Array] = None, *,
             enable_dropout: bool = False, dropout_rng: Optional[Array] = None) -> jax.Array:
    """jit-compiled `forward`: float32 logits [batch, decoder_length, vocab]."""
    if enable_dropout and dropout_rng is None:
      raise ValueError("enable_dropout=True needs a dropout_rng")
    return self._logits_jit(params, encoder_input_tokens, decoder_input_tokens, encoder_segment_ids,
                            decoder_segment_ids, encoder_positions, decoder_positions,
                            enable_dropout=enable_dropout, dropout_rng=dropout_rng)

  def encode(self, params: Params, encoder_input_tokens: Array,
             encoder_segment_ids: Optional[Array] = None, encoder_positions: Optional[Array] = None
             ) -> jax.Array:
    """jit-compiled `encode_fn`."""
    return self._encode_jit(params, encoder_input_tokens, encoder_segment_ids, encoder_positions)

  def decode_step(self, params: Params, cache: Any, encoded: Array, encoder_input_tokens: Array,
                  decoder_input_tokens: Array) -> tuple[jax.Array, Any]:
    """jit-compiled `decode_fn` (the cache argument is donated: use the returned one)."""
    return self._decode_step_jit(params, cache, encoded, encoder_input_tokens, decoder_input_tokens)

  def shard_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Per-host numpy batch -> global arrays over this model's mesh (rows over `data`)."""
    if self.mesh is None:
      return {k: jnp.asarray(v) for k, v in batch.items()}
    return partitioning.host_local_to_global(batch, self.mesh)

  # ---- scoring (see xmtf_jax/model/scoring.py; decoding lives in xmtf_jax.inference) -------------

  @functools.cached_property
  def _score_batch_jit(self):
    return jax.jit(functools.partial(scoring.score_batch, self))

  def score_batch(self, params: Params, batch: dict[str, Any]) -> jax.Array:
    """jit-compiled `scoring.score_batch`: per-example log-likelihood [B] float32 of
    `decoder_target_tokens` (EOS included, padding excluded) given `encoder_input_tokens`."""
    return self._score_batch_jit(params, dict(batch))
