"""Generating text with a model: one decoding configuration, batched and sharded prediction.

    config = DecodingConfig(method="beam", num_beams=4, max_decode_length=64)
    sequences = predict_batch(model, params, input_tokens, config)         # [B, L] ids
    texts = predict_texts(model, params, vocabulary, ["Translate to French: hi"], config)

`predict_batch` prepares the decoder's KV cache and runs the algorithm from
`xmtf_jax.inference.decoding`; everything runs in one jit-compiled function per batch shape. An
encoder-decoder model (`model.is_encoder_decoder`) encodes the (right-padded) inputs once and decodes
from its start token; a decoder-only model prefills its (left-padded) prompt into the cache and
continues it. Either way the output is the generated continuation only. Token layout (EOS, pad, the
padding side) is the family's `PromptFormat` (`xmtf_jax.model.prompt_format`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from xmtf_jax.errors import UserError
from xmtf_jax.inference import decoding
from xmtf_jax.model.prompt_format import MT5, PromptFormat, prompt_format
from xmtf_jax.parallel.batch_function import BatchFunction, bucket_length
from xmtf_jax.progress import Progress


@dataclasses.dataclass(frozen=True)
class DecodingConfig:
  """How to decode. method: "greedy", "beam" or "sample".

  beam: num_beams, length_penalty (score = log p / length ** length_penalty, HF's convention),
  early_stopping (HF's: False, True or "never"). sample: temperature, top_k (0 = off), top_p (1.0 =
  off), seed. max_decode_length counts generated tokens, EOS included.
  """
  method: str = "greedy"
  max_decode_length: int = 64
  num_beams: int = 4
  length_penalty: float = 1.0
  early_stopping: bool | str = False
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0

  def __post_init__(self):
    if self.method not in ("greedy", "beam", "sample"):
      raise UserError(f"DecodingConfig.method must be 'greedy', 'beam' or 'sample', not {self.method!r}")
    if self.max_decode_length < 1 or self.num_beams < 1:
      raise UserError(f"DecodingConfig.max_decode_length={self.max_decode_length} and "
                      f"num_beams={self.num_beams} must be at least 1")
    if self.method == "sample" and not (self.temperature > 0 and 0 < self.top_p <= 1 and self.top_k >= 0):
      raise UserError(f"DecodingConfig: sampling needs temperature > 0, 0 < top_p <= 1 and top_k >= 0 "
                      f"(got {self.temperature}, {self.top_p}, {self.top_k})")


def predict_batch(model, params: Any, input_tokens: jax.Array, config: DecodingConfig,
                  rng: jax.Array | None = None) -> decoding.DecodeOutput:
  """Decodes a batch of inputs padded as the family's `PromptFormat` pads them (mT5: 0 on the
  right; BLOOM: <pad> 3 on the left); see `decoding.DecodeOutput`. Traceable (jit it)."""
  batch_size = input_tokens.shape[0]
  beams = config.num_beams if config.method == "beam" else 1
  layout = prompt_format(model.config)
  if model.is_encoder_decoder:
    tokens_to_logits, cache, start = _encoder_decoder_steps(model, params, input_tokens, beams,
                                                            config.max_decode_length)
  else:
    tokens_to_logits, cache, start = _decoder_only_steps(model, params, input_tokens, beams,
                                                         config.max_decode_length, layout.pad_id)
  ids = dict(eos_id=layout.eos_id, pad_id=layout.pad_id, start_id=start)
  if config.method == "beam":
    return decoding.beam_search(tokens_to_logits, cache, batch_size=batch_size, num_beams=beams,
                                max_decode_length=config.max_decode_length,
                                length_penalty=config.length_penalty,
                                early_stopping=config.early_stopping, **ids)
  if config.method == "sample":
    if rng is None:
      rng = jax.random.PRNGKey(config.seed)
    return decoding.sample_decode(tokens_to_logits, cache, batch_size=batch_size,
                                  max_decode_length=config.max_decode_length, rng=rng,
                                  temperature=config.temperature, top_k=config.top_k,
                                  top_p=config.top_p, **ids)
  return decoding.sample_decode(tokens_to_logits, cache, batch_size=batch_size,
                                max_decode_length=config.max_decode_length, **ids)


def _encoder_decoder_steps(model, params, encoder_input_tokens, beams: int, max_decode_length: int):
  """(tokens_to_logits, cache, start id): the inputs encoded once (repeated per beam), an empty
  decoder cache, decoding from the start token 0."""
  encoded = model.encode_fn(params, encoder_input_tokens)
  if beams > 1:
    encoded = decoding.expand_for_beams(encoded, beams)
    encoder_input_tokens = decoding.expand_for_beams(encoder_input_tokens, beams)
  cache = model.init_cache(encoded.shape[0], max_decode_length, encoded.shape[1])

  def tokens_to_logits(tokens, cache, step):
    # The cache tracks its own position (cache_index); `step` is part of the decoding contract only.
    del step
    logits, cache = model.decode_fn(params, cache, encoded, encoder_input_tokens, tokens)
    return logits[:, -1], cache
  return tokens_to_logits, cache, 0


def _decoder_only_steps(model, params, prompt_tokens, beams: int, max_decode_length: int,
                        pad_id: int):
  """(tokens_to_logits, cache, start ids): the left-padded prompt (repeated per beam, as HF expands
  it) but its last column prefilled into the cache with segment ids 0 on padding; decoding starts
  from each row's last prompt token, whose logits give the first generated token."""
  if beams > 1:
    prompt_tokens = decoding.expand_for_beams(prompt_tokens, beams)
  rows, prompt_length = prompt_tokens.shape
  cache = model.init_cache(rows, prompt_length - 1 + max_decode_length)
  if prompt_length > 1:
    context = prompt_tokens[:, :-1]
    _, cache = model.prefill_fn(params, cache, context, (context != pad_id).astype(jnp.int32))

  def tokens_to_logits(tokens, cache, step):
    del step  # the cache tracks its own position
    logits, cache = model.decode_fn(params, cache, tokens)
    return logits[:, -1], cache
  start = prompt_tokens[::beams, -1]  # one per example; beam search repeats it per beam
  return tokens_to_logits, cache, start


@functools.lru_cache(maxsize=16)
def _jitted_predict_batch(model) -> Callable:
  return jax.jit(functools.partial(predict_batch, model), static_argnames=("config",))


def generate(model, params: Any, input_tokens: Any, config: DecodingConfig | None = None,
             rng: jax.Array | None = None) -> decoding.DecodeOutput:
  """jit-compiled `predict_batch` (one compilation per model, config and shape): sequences [B, L]
  of generated tokens only, EOS included, the family's pad id after it; scores [B]. Default:
  greedy, 64 tokens."""
  return _jitted_predict_batch(model)(params, input_tokens, config=config or DecodingConfig(),
                                      rng=rng)


def make_predictor(model, params: Any, config: DecodingConfig, mesh: Mesh | None = None,
                   ) -> Callable[..., np.ndarray]:
  """numpy inputs [B, L] (+ optional rng) -> numpy sequences [B, max_decode_length],
  jit-compiled once per shape, rows over the mesh's `data` axis (see `BatchFunction`)."""
  def sequences(p, tokens, rng=None):
    return predict_batch(model, p, tokens, config, rng).sequences
  batch_fn = BatchFunction(sequences, mesh)
  return lambda tokens, rng=None: batch_fn(params, tokens, rng=rng)


def _batches(token_lists: Sequence[Sequence[int]], batch_size: int, max_input_length: int,
             layout: PromptFormat = MT5) -> Iterator[tuple[np.ndarray, list[int]]]:
  """Fixed-size batches of similar-length inputs (lengths bucketed to powers of two), padded as
  `layout` pads prompts."""
  order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
  for start in range(0, len(order), batch_size):
    members = order[start:start + batch_size]
    length = bucket_length(max(len(token_lists[i]) for i in members), 8,
                           bucket_length(max_input_length))
    yield layout.pad_inputs([token_lists[i] for i in members], length, batch_size), members


def decode_ids(vocabulary, sequence: np.ndarray, layout: PromptFormat = MT5) -> str:
  """Text of one generated sequence: ids up to (excluding) the first EOS, padding dropped."""
  return vocabulary.decode(layout.generated_ids(sequence))


def predict_texts(model, params: Any, vocabulary, texts: Iterable[str], config: DecodingConfig, *,
                  batch_size: int = 32, max_input_length: int = 1024, add_eos: bool | None = None,
                  mesh: Mesh | None = None, print_fn: Callable[[str], None] | None = None,
                  predictor=None) -> list[str]:
  """Generates one text per input text, in input order.

  add_eos: append EOS to the input, as seqio tasks with `add_eos=True` (mT0's xP3 training) do; None:
  the family's `PromptFormat.eos_after_inputs` (mT5 yes, BLOOM no). Inputs longer than
  max_input_length keep their first tokens (a left-padding family, BLOOM: their last).
  """
  layout = prompt_format(model.config)
  if add_eos is None:
    add_eos = layout.eos_after_inputs
  token_lists = []
  for text in texts:
    token_lists.append(layout.input_ids(vocabulary.encode(text), max_input_length, add_eos))
    if not token_lists[-1] and not model.is_encoder_decoder:
      raise UserError(f"input {len(token_lists) - 1} ({text!r}) has no tokens: a decoder-only model "
                      "has no prompt to continue")
  predictor = predictor or make_predictor(model, params, config, mesh)
  rng = jax.random.PRNGKey(config.seed)
  outputs: list[str | None] = [None] * len(token_lists)
  progress = Progress(len(token_lists), print_fn, label="decoded")
  for tokens, members in _batches(token_lists, batch_size, max_input_length, layout):
    rng, batch_rng = jax.random.split(rng)
    sequences = predictor(tokens, batch_rng if config.method == "sample" else None)
    for row, index in enumerate(members):
      outputs[index] = decode_ids(vocabulary, sequences[row], layout)
    progress.update(len(members))
  return outputs  # type: ignore[return-value]
