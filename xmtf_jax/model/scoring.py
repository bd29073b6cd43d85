"""Log-likelihood of targets given inputs: the model's `score_batch` and multiple-choice `choice_scores`.

    scores = score_batch(model, params, batch)                     # [B] float32
    scores = choice_scores(model, params, inputs, choice_targets)  # [B, C] (rank classification)

A target's score is the sum over its tokens (padding excluded) of log p(token | input, previous
tokens), computed in float32 whatever the activation dtype. This is the quantity the paper ranks
answer choices by: no length normalisation. Each family's layout of inputs and choices (EOS or not,
padding side and id) is its `prompt_format.PromptFormat`; the function for the family is chosen by
`model.is_encoder_decoder`.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from xmtf_jax.model.prompt_format import prompt_format


def shift_right(targets: jax.Array, start_id: int = 0) -> jax.Array:
  """Decoder inputs for teacher forcing: [start, t0, t1, ...] (the last target is dropped)."""
  start = jnp.full_like(targets[..., :1], start_id)
  return jnp.concatenate([start, targets[..., :-1]], axis=-1)


def token_log_likelihoods(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """log p(target) per position, float32, without materialising a second [..., V] array."""
  logits = logits.astype(jnp.float32)
  target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return target_logits - jax.nn.logsumexp(logits, axis=-1)


def sequence_log_likelihood(logits: jax.Array, targets: jax.Array,
                            weights: jax.Array | None = None) -> jax.Array:
  """Sum of token log-likelihoods over the last axis; positions with weight 0 (default: target
  id 0, i.e. padding) do not count."""
  if weights is None:
    weights = targets != 0
  return jnp.sum(token_log_likelihoods(logits, targets) * weights.astype(jnp.float32), axis=-1)


def score_batch(model, params: Any, batch: Mapping[str, Any]) -> jax.Array:
  """Per-example log-likelihood [B] float32 of `decoder_target_tokens`. Unpacked batches only.

  Encoder-decoder: seqio's EncDecFeatureConverter names, encoder_input_tokens [B, L_in],
  decoder_target_tokens [B, L_t] (EOS-terminated, 0-padded); optional decoder_input_tokens (default:
  the targets shifted right) and decoder_loss_weights (default: targets != 0).
  Decoder-only: the family's training features (decoder_input_tokens, decoder_target_tokens,
  decoder_loss_weights marking the target positions, decoder_segment_ids 0 on padding); the score sums
  the log-probabilities of the positions with weight 1.
  """
  targets = jnp.asarray(batch["decoder_target_tokens"])
  if not model.is_encoder_decoder:
    if "decoder_loss_weights" not in batch:
      raise ValueError("score_batch of a decoder-only model needs decoder_loss_weights (1 on the "
                       "target positions): its rows hold the inputs too")
    logits = model.forward(params, **model.model_inputs(dict(batch)))
    return sequence_log_likelihood(logits, targets, batch["decoder_loss_weights"])
  decoder_inputs = batch.get("decoder_input_tokens")
  if decoder_inputs is None:
    decoder_inputs = shift_right(targets)
  logits = model.forward(params, jnp.asarray(batch["encoder_input_tokens"]), jnp.asarray(decoder_inputs))
  return sequence_log_likelihood(logits, targets, batch.get("decoder_loss_weights"))


def choice_scores(model, params: Any, input_tokens: jax.Array,
                  choice_target_tokens: jax.Array) -> jax.Array:
  """Scores [B, C] of C answer choices per input, laid out by the family's `PromptFormat`.

  input_tokens [B, L_in]; choice_target_tokens [B, C, L_t], right-padded with the format's pad id.
  All-padding choices (unused slots) score 0.
  """
  if model.is_encoder_decoder:
    return _encoder_decoder_choice_scores(model, params, input_tokens, choice_target_tokens)
  return _decoder_only_choice_scores(model, params, input_tokens, choice_target_tokens,
                                     prompt_format(model.config).pad_id)


def _encoder_decoder_choice_scores(model, params: Any, encoder_input_tokens: jax.Array,
                                   choice_target_tokens: jax.Array) -> jax.Array:
  """Encodes each input (0-padded) once; its output is repeated C times and the decoder runs
  teacher-forced on B*C rows. Choices are EOS-terminated, 0-padded."""
  b, c, length = choice_target_tokens.shape
  encoded = model.encode_fn(params, encoder_input_tokens)
  repeat = lambda x: jnp.repeat(x, c, axis=0)  # noqa: E731
  targets = choice_target_tokens.reshape(b * c, length)
  logits = model.decode_from_encoded(params, repeat(encoded), repeat(encoder_input_tokens),
                                     shift_right(targets))
  return sequence_log_likelihood(logits, targets).reshape(b, c)


def _decoder_only_choice_scores(model, params: Any, input_tokens: jax.Array,
                                choice_target_tokens: jax.Array, pad_id: int) -> jax.Array:
  """t-zero's `DecoderModel`: each (left-padded) input repeated once per choice, the row
  concat(input, choice) run causally with segment ids 1 on real tokens and 0 on padding (ALiBi
  positions count real tokens only, so padding changes nothing); a choice token's log-probability is
  read at the position before it."""
  b, c, length = choice_target_tokens.shape
  input_length = input_tokens.shape[1]
  targets = choice_target_tokens.reshape(b * c, length)
  tokens = jnp.concatenate([jnp.repeat(input_tokens, c, axis=0), targets], axis=1)
  segment_ids = (tokens != pad_id).astype(jnp.int32)
  # Only the choice positions go through the LM head: [rows, choice length, vocab], not the whole row.
  choice_logits = model.forward(params, tokens, decoder_segment_ids=segment_ids,
                                logits_window=(input_length - 1, length))
  return sequence_log_likelihood(choice_logits, targets, targets != pad_id).reshape(b, c)
