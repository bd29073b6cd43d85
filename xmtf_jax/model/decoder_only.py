"""The task-level model of decoder-only families (BLOOM): a thin wrapper over `bloom_network.BloomLM`.

`DecoderOnlyModel` has `EncoderDecoderModel`'s interface where it applies (`model/family.py` lists it):
config, module, mesh and logical-axis rules; pure `forward` / `prefill_fn` / `decode_fn` to call inside
your own `jax.jit` (they enter the mesh+rules context themselves) and jit-compiled `logits` / `prefill` /
`decode_step`; parameters as a plain nested dict of float32 arrays (tree in `bloom_network.py`).

Batches use seqio's decoder feature names: the network reads `decoder_input_tokens` and
`decoder_segment_ids` (0 = padding; left padding is written the same way); `decoder_positions` are
accepted and not needed (ALiBi takes positions from the segment ids, see `bloom_network`).
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from xmtf_jax.model.bloom_config import BloomConfig
from xmtf_jax.model.bloom_network import BloomLM
from xmtf_jax.model.encoder_decoder import as_int32, strip_boxes
from xmtf_jax.parallel import partitioning

Array = Any
Params = Any

# The features of a decoder-only batch that the network reads (targets and loss weights go to the loss).
MODEL_INPUT_KEYS = ("decoder_input_tokens", "decoder_segment_ids", "decoder_positions")


class DecoderOnlyModel:
  """BLOOM with its partitioning. `mesh=None` runs on the default device with no sharding constraints."""
  is_encoder_decoder = False

  def __init__(self, config: BloomConfig, mesh: Optional[Mesh] = None,
               logical_axis_rules: Optional[partitioning.LogicalRules] = None):
    self.config = config
    self.module = BloomLM(config)
    self.mesh = mesh
    self.logical_axis_rules = (partitioning.logical_axis_rules() if logical_axis_rules is None
                               else tuple(logical_axis_rules))
    self._logits_jit = jax.jit(self.forward, static_argnames=("enable_dropout",))
    self._prefill_jit = jax.jit(self.prefill_fn, donate_argnums=(1,))
    self._decode_step_jit = jax.jit(self.decode_fn, donate_argnums=(1,))

  def with_mesh(self, mesh: Optional[Mesh], logical_axis_rules: Optional[partitioning.LogicalRules] = None
                ) -> "DecoderOnlyModel":
    """The same model partitioned over another mesh (or none)."""
    return DecoderOnlyModel(self.config, mesh, logical_axis_rules or self.logical_axis_rules)

  def partitioning_context(self):
    """Context under which tracing sees this model's mesh and rules (entered by every method here)."""
    return partitioning.axis_rules_context(self.mesh, self.logical_axis_rules)

  # ---- batches ----------------------------------------------------------------------------------

  def model_inputs(self, batch: dict[str, Array]) -> dict[str, Array]:
    """The network's inputs from a batch: `model.forward(params, **model.model_inputs(batch))`."""
    return {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}

  def input_token_count(self, batch: dict[str, Array]) -> Array:
    """Real input positions that are context, not targets: segment id > 0 (every position without
    segment ids) and loss weight 0. With the loss's target positions they make up every real token."""
    tokens = jnp.asarray(batch["decoder_input_tokens"])
    real = (jnp.asarray(batch["decoder_segment_ids"]) > 0 if "decoder_segment_ids" in batch
            else jnp.ones(tokens.shape, bool))
    return jnp.sum(real & (jnp.asarray(batch["decoder_loss_weights"]) == 0))

  def shard_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Per-host numpy batch -> global arrays over this model's mesh (rows over `data`)."""
    if self.mesh is None:
      return {k: jnp.asarray(v) for k, v in batch.items()}
    return partitioning.host_local_to_global(batch, self.mesh)

  # ---- parameters -------------------------------------------------------------------------------

  def _boxed_init(self, rng: Array) -> Any:
    return self.module.init({"params": rng}, jnp.ones((1, 1), jnp.int32))["params"]

  @functools.cached_property
  def _abstract_boxed(self) -> Any:
    return jax.eval_shape(self._boxed_init, jax.random.key(0))

  def abstract_params(self) -> Params:
    """Tree of jax.ShapeDtypeStruct (float32), computed without allocating anything."""
    return strip_boxes(self._abstract_boxed)

  def param_logical_axes(self) -> Any:
    """Tree (matching params) of PartitionSpecs of logical axis names, e.g. P('embed', 'mlp')."""
    return nn.get_partition_spec(self._abstract_boxed)

  def param_shardings(self, mesh: Optional[Any] = None) -> Any:
    """NamedSharding of every parameter on `mesh` (default: this model's mesh; an AbstractMesh works)."""
    mesh = self.mesh if mesh is None else mesh
    if mesh is None:
      raise ValueError("param_shardings needs a mesh: build the model with mesh=... or pass one")
    return partitioning.param_shardings(self.param_logical_axes(), mesh, self.logical_axis_rules,
                                        self.abstract_params())

  def init_params(self, rng: Array) -> Params:
    """Random float32 parameters (HF's init: normal(initializer_range), zero biases, unit LayerNorms),
    created directly with their shardings when the model has a mesh."""
    def init(r):
      with self.partitioning_context():
        return strip_boxes(self._boxed_init(r))
    if self.mesh is None:
      return jax.jit(init)(rng)
    return jax.jit(init, out_shardings=self.param_shardings())(rng)

  # ---- pure functions (call inside your own jit) ------------------------------------------------

  def forward(self, params: Params, decoder_input_tokens: Array, decoder_segment_ids: Optional[Array] = None,
              decoder_positions: Optional[Array] = None, *, enable_dropout: bool = False,
              dropout_rng: Optional[Array] = None) -> Array:
    """Teacher-forced logits, float32 [batch, length, vocab]. Attention is causal, within equal segment
    ids and to keys with segment id > 0; without segment ids every token is real. `decoder_positions`
    are not needed (ALiBi is translation-invariant; positions come from the segment ids)."""
    del decoder_positions
    if enable_dropout and dropout_rng is None:
      raise ValueError("enable_dropout=True needs a dropout_rng")
    rngs = {"dropout": dropout_rng} if enable_dropout else None
    with self.partitioning_context():
      return self.module.apply({"params": params}, as_int32(decoder_input_tokens),
                               as_int32(decoder_segment_ids), enable_dropout=enable_dropout, rngs=rngs)

  def init_cache(self, batch_size: int, max_length: int) -> Any:
    """Zeroed KV cache for `max_length` positions (prompt + generated).

    Leaves: `decoder/cache_index` (int32 scalar: the next slot), `decoder/key_valid` [batch, max_length]
    int32 (1 on slots holding real tokens) and per layer `self_attention/{cached_key,cached_value}`
    [batch, max_length, heads, kv] in the activation dtype (scanned: [batch, layers, max_length, ...]).
    Every non-scalar leaf has the batch first (beam search expands and gathers it).
    """
    def make():
      tokens = jnp.zeros((batch_size, max_length), jnp.int32)
      return self.module.init({"params": jax.random.key(0)}, tokens, decode=True)["cache"]
    shapes = jax.eval_shape(make)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def _cached_call(self, params: Params, cache: Any, tokens: Array, segment_ids: Optional[Array]):
    with self.partitioning_context():
      logits, variables = self.module.apply({"params": params, "cache": cache}, as_int32(tokens),
                                            as_int32(segment_ids), decode=True, mutable=["cache"])
    return logits, variables["cache"]

  def prefill_fn(self, params: Params, cache: Any, tokens: Array, segment_ids: Optional[Array] = None
                 ) -> tuple[Array, Any]:
    """Writes a prompt [batch, T] into the cache at its next slots (a fresh cache: slots 0..T-1).

    segment_ids [batch, T]: 1 on real tokens, 0 on padding (left padding, as generation lays prompts
    out; right padding works too: padded slots are never attended to). Returns (logits float32
    [batch, T, vocab], cache); the logits at the last real token predict the first new one.
    """
    return self._cached_call(params, cache, tokens, segment_ids)

  def decode_fn(self, params: Params, cache: Any, tokens: Array) -> tuple[Array, Any]:
    """Appends `tokens` [batch, L] (usually L = 1; always real) -> (logits float32 [batch, L, vocab],
    cache)."""
    return self._cached_call(params, cache, tokens, None)

  # ---- jit-compiled conveniences (numpy int32 in) -----------------------------------------------

  def logits(self, params: Params, decoder_input_tokens: Array, decoder_segment_ids: Optional[Array] = None,
             decoder_positions: Optional[Array] = None, *, enable_dropout: bool = False,
             dropout_rng: Optional[Array] = None) -> jax.Array:
    """jit-compiled `forward`: float32 logits [batch, length, vocab]."""
    if enable_dropout and dropout_rng is None:
      raise ValueError("enable_dropout=True needs a dropout_rng")
    return self._logits_jit(params, decoder_input_tokens, decoder_segment_ids, decoder_positions,
                            enable_dropout=enable_dropout, dropout_rng=dropout_rng)

  def prefill(self, params: Params, cache: Any, tokens: Array, segment_ids: Optional[Array] = None
              ) -> tuple[jax.Array, Any]:
    """jit-compiled `prefill_fn` (the cache argument is donated: use the returned one)."""
    return self._prefill_jit(params, cache, tokens, segment_ids)

  def decode_step(self, params: Params, cache: Any, tokens: Array) -> tuple[jax.Array, Any]:
    """jit-compiled `decode_fn` (the cache argument is donated: use the returned one)."""
    return self._decode_step_jit(params, cache, tokens)
