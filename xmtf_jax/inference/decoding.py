"""Autoregressive decoding over a KV cache: greedy, temperature / top-k / top-p sampling, beam search.

The algorithms know nothing about the network. They call

    tokens_to_logits(decoder_input_tokens [N, 1] int32, cache, step int32) -> (logits [N, V], cache)

once per step, where `cache` is any pytree the caller built (the decoder's KV cache) and `step` is
the position being decoded. All loops are `lax.while_loop`s that stop as soon as every row is done,
so they jit-compile once per (batch, length) shape and run inside `jax.jit` with sharded inputs.

Conventions (as HF transformers and t5x): the decoder starts from `start_id` (0 for mT5; a
decoder-only model passes each row's last prompt token, its earlier tokens already in the cache);
generated tokens are returned without that start token, EOS included, `pad_id` after EOS (mT5: EOS
1, pad 0; BLOOM: 2, 3); `max_decode_length` counts generated tokens (HF's `max_new_tokens`).

Beam search scores a finished hypothesis as `sum of log-probs / length ** length_penalty`, with
`length` the number of generated tokens including EOS: HF's convention (t5x uses ((5 + len) / 6) **
alpha instead). We pick HF's so results can be compared with `generate(num_beams=K)` token for token;
the stopping rules follow HF's `early_stopping` (False: stop a row when no running beam can beat its
worst finished one at the current length; True: stop once K beams finished; "never": as False but
assuming the best running beam could still grow to `max_decode_length`). With one beam it returns
exactly the greedy decode.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Union

import jax
import jax.numpy as jnp
from jax import lax

from xmtf_jax.errors import UserError

# Large negative but finite: -inf would turn into NaN when two of them are added or subtracted.
NEG_INF = -1.0e9

TokensToLogits = Callable[[jax.Array, Any, jax.Array], tuple[jax.Array, Any]]


@dataclasses.dataclass(frozen=True)
class DecodeOutput:
  """sequences [B, L] int32 (EOS included, pad after it) and their scores [B] float32.

  For greedy / sampling `scores` is the sum of the model's log-probabilities of the generated tokens
  (temperature 1, before top-k / top-p filtering). For beam search it is the length-penalised score of
  the best beam, and `beams` [B, K, L] / `beam_scores` [B, K] hold all K finished beams, best first.
  """
  sequences: jax.Array
  scores: jax.Array
  beams: jax.Array | None = None
  beam_scores: jax.Array | None = None


jax.tree_util.register_dataclass(DecodeOutput, data_fields=["sequences", "scores", "beams",
                                                             "beam_scores"], meta_fields=[])


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """Sets logits outside the top-k tokens and outside the top-p nucleus to NEG_INF.

  top_k 0 and top_p 1.0 disable the filters. The nucleus is the smallest set of most likely tokens
  whose probability reaches top_p (the most likely token is always kept); tokens tied with the last
  kept one are kept too.
  """
  if top_k > 0:
    kth_largest = lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth_largest, NEG_INF, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    keep = mass_before < top_p
    keep = keep.at[..., 0].set(True)
    threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, NEG_INF, logits)
  return logits


def _choose_token(logits: jax.Array, rng: jax.Array | None, temperature: float, top_k: int,
                  top_p: float) -> jax.Array:
  if rng is None or temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  scaled = filter_logits(logits / temperature, top_k, top_p)
  return jax.random.categorical(rng, scaled, axis=-1).astype(jnp.int32)


StartIds = Union[int, jax.Array]


def _start_tokens(start_id: StartIds, shape: tuple[int, ...]) -> jax.Array:
  """The first decoder input of every row: one id for all, or one per row (shape[0] rows)."""
  start = jnp.asarray(start_id, jnp.int32)
  if start.ndim:
    start = start.reshape(start.shape + (1,) * (len(shape) - start.ndim))
  return jnp.broadcast_to(start, shape)


def sample_decode(tokens_to_logits: TokensToLogits, cache: Any, *, batch_size: int,
                  max_decode_length: int, rng: jax.Array | None = None, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, eos_id: int = 1, start_id: StartIds = 0,
                  pad_id: int = 0) -> DecodeOutput:
  """Greedy decoding (rng None or temperature 0) or sampling with temperature, top-k and top-p.

  Each row stops at its own EOS; the loop stops when all rows did or at max_decode_length.
  `start_id`: one id, or one per row [batch_size].
  """
  def cond(state):
    step, _, _, done, _, _, _ = state
    return (step < max_decode_length) & ~jnp.all(done)

  def body(state):
    step, sequences, last_tokens, done, scores, cache, rng = state
    logits, cache = tokens_to_logits(last_tokens[:, None], cache, step)
    logits = logits.astype(jnp.float32)
    if rng is not None:
      rng, step_rng = jax.random.split(rng)
    else:
      step_rng = None
    tokens = _choose_token(logits, step_rng, temperature, top_k, top_p)
    tokens = jnp.where(done, pad_id, tokens)
    token_log_probs = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tokens[:, None],
                                          axis=-1)[:, 0]
    scores = scores + jnp.where(done, 0.0, token_log_probs)
    sequences = lax.dynamic_update_slice(sequences, tokens[:, None], (0, step))
    done = done | (tokens == eos_id)
    return step + 1, sequences, tokens, done, scores, cache, rng

  state = (jnp.int32(0), jnp.full((batch_size, max_decode_length), pad_id, jnp.int32),
           _start_tokens(start_id, (batch_size,)), jnp.zeros((batch_size,), bool),
           jnp.zeros((batch_size,), jnp.float32), cache, rng)
  _, sequences, _, _, scores, _, _ = lax.while_loop(cond, body, state)
  return DecodeOutput(sequences=sequences, scores=scores)


def expand_for_beams(tree: Any, num_beams: int) -> Any:
  """Repeats every leaf's rows num_beams times, consecutively: row b → rows b*K .. b*K+K-1."""
  return jax.tree_util.tree_map(lambda x: jnp.repeat(x, num_beams, axis=0), tree)


def gather_cache_rows(cache: Any, flat_rows: jax.Array) -> Any:
  """Reorders the cache rows of the beams that survive: leaves whose leading axis is the
  (batch x beams) axis are gathered; scalars (e.g. a cache index) are kept."""
  num_rows = flat_rows.shape[0]

  def gather(leaf):
    if getattr(leaf, "ndim", 0) >= 1 and leaf.shape[0] == num_rows:
      return jnp.take(leaf, flat_rows, axis=0)
    return leaf
  return jax.tree_util.tree_map(gather, cache)


EarlyStopping = Union[bool, str]


def beam_search(tokens_to_logits: TokensToLogits, cache: Any, *, batch_size: int, num_beams: int,
                max_decode_length: int, length_penalty: float = 1.0,
                early_stopping: EarlyStopping = False, eos_id: int = 1, start_id: StartIds = 0,
                pad_id: int = 0) -> DecodeOutput:
  """Beam search with HF's length penalty and stopping rules (see the module docstring).

  `cache` must already hold batch_size * num_beams rows, row b*K + k for beam k of example b
  (`expand_for_beams` builds it from a per-example cache); `start_id` is one id or one per example
  [batch_size]. Each step keeps the 2K best
  continuations; of those, EOS continuations ranked among the best K become finished hypotheses,
  and the K best non-EOS ones stay alive. At max_decode_length the alive beams are finished too.

  One beam is greedy decoding, as in HF (otherwise, with early_stopping="never" and a positive
  length penalty, the single beam would keep searching past the first EOS for a longer hypothesis).
  """
  if early_stopping not in (True, False, "never"):
    raise UserError(f"DecodingConfig.early_stopping must be True, False or 'never', not {early_stopping!r}")
  if num_beams == 1:
    greedy = sample_decode(tokens_to_logits, cache, batch_size=batch_size,
                           max_decode_length=max_decode_length, eos_id=eos_id, start_id=start_id,
                           pad_id=pad_id)
    is_eos = greedy.sequences == eos_id
    lengths = jnp.where(jnp.any(is_eos, axis=-1), jnp.argmax(is_eos, axis=-1) + 1, max_decode_length)
    scores = greedy.scores / lengths.astype(jnp.float32) ** length_penalty
    return DecodeOutput(sequences=greedy.sequences, scores=scores, beams=greedy.sequences[:, None],
                        beam_scores=scores[:, None])
  if early_stopping != "never":
    early_stopping = bool(early_stopping)
  b, k, length = batch_size, num_beams, max_decode_length
  rows = jnp.arange(b)[:, None]
  # Only beam 0 is live at first, so the K beams do not all pick the same first token.
  alive_log_probs = jnp.where(jnp.arange(k)[None] == 0, 0.0, NEG_INF) * jnp.ones((b, 1))

  def cond(state):
    step, open_rows, finished_flags = state[0], state[5], state[6]
    active = open_rows
    if early_stopping is True:
      active = active & ~jnp.all(finished_flags, axis=-1)
    return (step < length) & jnp.any(active)

  def body(state):
    (step, alive_seqs, alive_log_probs, finished_seqs, finished_scores, open_rows, finished_flags,
     cache, last_tokens) = state
    logits, cache = tokens_to_logits(last_tokens.reshape(b * k, 1), cache, step)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    vocab_size = log_probs.shape[-1]
    candidates = (alive_log_probs[:, :, None] + log_probs.reshape(b, k, vocab_size)).reshape(b, -1)
    top_log_probs, top_ids = lax.top_k(candidates, 2 * k)              # [b, 2k], best first
    top_beams, top_tokens = top_ids // vocab_size, top_ids % vocab_size
    top_seqs = alive_seqs[rows, top_beams]                             # [b, 2k, L]
    top_seqs = lax.dynamic_update_slice(top_seqs, top_tokens[:, :, None], (0, 0, step))
    finishing = (top_tokens == eos_id) | (step == length - 1)

    # The K best continuations that did not finish stay alive; the cache follows their beams.
    alive_candidates = jnp.where(finishing, top_log_probs + NEG_INF, top_log_probs)
    alive_log_probs, keep = lax.top_k(alive_candidates, k)
    alive_seqs = top_seqs[rows, keep]
    last_tokens = top_tokens[rows, keep]
    cache = gather_cache_rows(cache, (rows * k + top_beams[rows, keep]).reshape(-1))

    # Finished hypotheses: among the K best continuations only, in rows still open.
    can_finish = finishing & (jnp.arange(2 * k) < k)[None] & open_rows[:, None]
    if early_stopping is True:
      can_finish = can_finish & ~jnp.all(finished_flags, axis=-1, keepdims=True)
    new_scores = jnp.where(can_finish,
                           top_log_probs / (step + 1).astype(jnp.float32) ** length_penalty, NEG_INF)
    merged_scores = jnp.concatenate([finished_scores, new_scores], axis=1)
    finished_scores, best = lax.top_k(merged_scores, k)
    finished_seqs = jnp.concatenate([finished_seqs, top_seqs], axis=1)[rows, best]
    finished_flags = jnp.concatenate([finished_flags, can_finish], axis=1)[rows, best]

    # Can a running beam still beat the worst finished one? (HF's heuristic for early_stopping.)
    generated = step + 1
    best_length = length if (early_stopping == "never" and length_penalty > 0) else generated
    best_running = alive_log_probs[:, 0] / jnp.float32(best_length) ** length_penalty
    worst_finished = jnp.min(finished_scores, axis=-1)
    open_rows = open_rows & (~jnp.all(finished_flags, axis=-1) | (best_running > worst_finished))
    return (step + 1, alive_seqs, alive_log_probs, finished_seqs, finished_scores, open_rows,
            finished_flags, cache, last_tokens)

  state = (jnp.int32(0), jnp.full((b, k, length), pad_id, jnp.int32), alive_log_probs,
           jnp.full((b, k, length), pad_id, jnp.int32), jnp.full((b, k), NEG_INF, jnp.float32),
           jnp.ones((b,), bool), jnp.zeros((b, k), bool), cache,
           _start_tokens(start_id, (b, k)))
  state = lax.while_loop(cond, body, state)
  finished_seqs, finished_scores = state[3], state[4]
  return DecodeOutput(sequences=finished_seqs[:, 0], scores=finished_scores[:, 0],
                      beams=finished_seqs, beam_scores=finished_scores)
