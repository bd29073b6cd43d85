"""Generating text with a model: one decoding configuration, batched and sharded prediction.

    config = DecodingConfig(method="beam", num_beams=4, max_decode_length=64)
    sequences = predict_batch(model, params, encoder_input_tokens, config)         # [B, L] ids
    texts = predict_texts(model, params, vocabulary, ["Translate to French: hi"], config)

`predict_batch` encodes the inputs once, initialises the decoder's KV cache and runs the algorithm
from `xmtf_jax.inference.decoding`; everything runs in one jit-compiled function per batch shape.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from xmtf_jax.errors import UserError
from xmtf_jax.inference import decoding
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


def predict_batch(model, params: Any, encoder_input_tokens: jax.Array, config: DecodingConfig,
                  rng: jax.Array | None = None) -> decoding.DecodeOutput:
  """Decodes a batch of (0-padded) encoder inputs; see `decoding.DecodeOutput`. Traceable (jit it)."""
  batch_size = encoder_input_tokens.shape[0]
  encoded = model.encode_fn(params, encoder_input_tokens)
  beams = config.num_beams if config.method == "beam" else 1
  if config.method == "beam":
    encoded = decoding.expand_for_beams(encoded, beams)
    encoder_input_tokens = decoding.expand_for_beams(encoder_input_tokens, beams)
  cache = model.init_cache(encoded.shape[0], config.max_decode_length, encoded.shape[1])

  def tokens_to_logits(tokens, cache, step):
    # The cache tracks its own position (cache_index); `step` is part of the decoding contract only.
    del step
    logits, cache = model.decode_fn(params, cache, encoded, encoder_input_tokens, tokens)
    return logits[:, -1], cache

  if config.method == "beam":
    return decoding.beam_search(tokens_to_logits, cache, batch_size=batch_size, num_beams=beams,
                                max_decode_length=config.max_decode_length,
                                length_penalty=config.length_penalty,
                                early_stopping=config.early_stopping)
  if config.method == "sample":
    if rng is None:
      rng = jax.random.PRNGKey(config.seed)
    return decoding.sample_decode(tokens_to_logits, cache, batch_size=batch_size,
                                  max_decode_length=config.max_decode_length, rng=rng,
                                  temperature=config.temperature, top_k=config.top_k,
                                  top_p=config.top_p)
  return decoding.sample_decode(tokens_to_logits, cache, batch_size=batch_size,
                                max_decode_length=config.max_decode_length)


@functools.lru_cache(maxsize=16)
def _jitted_predict_batch(model) -> Callable:
  return jax.jit(functools.partial(predict_batch, model), static_argnames=("config",))


def generate(model, params: Any, encoder_input_tokens: Any, config: DecodingConfig | None = None,
             rng: jax.Array | None = None) -> decoding.DecodeOutput:
  """jit-compiled `predict_batch` (one compilation per model, config and shape): sequences [B, L]
  without the start token, EOS included, 0 after it; scores [B]. Default: greedy, 64 tokens."""
  return _jitted_predict_batch(model)(params, encoder_input_tokens, config=config or DecodingConfig(),
                                      rng=rng)


def make_predictor(model, params: Any, config: DecodingConfig, mesh: Mesh | None = None,
                   ) -> Callable[..., np.ndarray]:
  """numpy encoder inputs [B, L] (+ optional rng) -> numpy sequences [B, max_decode_length],
  jit-compiled once per shape, rows over the mesh's `data` axis (see `BatchFunction`)."""
  def sequences(p, tokens, rng=None):
    return predict_batch(model, p, tokens, config, rng).sequences
  batch_fn = BatchFunction(sequences, mesh)
  return lambda tokens, rng=None: batch_fn(params, tokens, rng=rng)


def _batches(token_lists: Sequence[Sequence[int]], batch_size: int, max_input_length: int
             ) -> Iterator[tuple[np.ndarray, list[int]]]:
  """Fixed-size batches of similar-length inputs (lengths bucketed to powers of two)."""
  order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
  for start in range(0, len(order), batch_size):
    members = order[start:start + batch_size]
    length = bucket_length(max(len(token_lists[i]) for i in members), 8,
                           bucket_length(max_input_length))
    tokens = np.zeros((batch_size, length), np.int32)
    for row, i in enumerate(members):
      tokens[row, :len(token_lists[i])] = token_lists[i]
    yield tokens, members


def decode_ids(vocabulary, sequence: np.ndarray) -> str:
  """Text of one generated sequence: ids up to (excluding) the first EOS."""
  ids = [int(t) for t in sequence]
  if 1 in ids:
    ids = ids[:ids.index(1)]
  return vocabulary.decode([t for t in ids if t != 0])


def predict_texts(model, params: Any, vocabulary, texts: Iterable[str], config: DecodingConfig, *,
                  batch_size: int = 32, max_input_length: int = 1024, add_eos: bool = True,
                  mesh: Mesh | None = None, print_fn: Callable[[str], None] | None = None,
                  predictor=None) -> list[str]:
  """Generates one text per input text, in input order.

  add_eos: append EOS to the encoder input, as seqio tasks with `add_eos=True` (xP3 training) do.
  Inputs longer than max_input_length keep their first tokens.
  """
  token_lists = []
  for text in texts:
    ids = list(vocabulary.encode(text))
    ids = ids[:max_input_length - 1] + [1] if add_eos else ids[:max_input_length]
    token_lists.append(ids)
  predictor = predictor or make_predictor(model, params, config, mesh)
  rng = jax.random.PRNGKey(config.seed)
  outputs: list[str | None] = [None] * len(token_lists)
  progress = Progress(len(token_lists), print_fn, label="decoded")
  for tokens, members in _batches(token_lists, batch_size, max_input_length):
    rng, batch_rng = jax.random.split(rng)
    sequences = predictor(tokens, batch_rng if config.method == "sample" else None)
    for row, index in enumerate(members):
      outputs[index] = decode_ids(vocabulary, sequences[row])
    progress.update(len(members))
  return outputs  # type: ignore[return-value]
