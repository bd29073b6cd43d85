"""Inference speed: rank-classification scoring and KV-cache decoding, each against a baseline run in
the same process (so the ratios hold on any machine).

  scoring:  encode each input once and decode its C choices against that encoding
            (`scoring.choice_scores`) vs. scoring the C (input, choice) pairs as independent rows
            (`scoring.score_batch` on the input repeated C times).
  decoding: greedy decoding with the KV cache (`generation.predict_batch`) vs. recomputing the
            full teacher-forced forward over the prefix at every step (no cache).

  python benchmarks/inference.py --size small     # mT5-small shapes (GPU/TPU), bfloat16 activations
  python benchmarks/inference.py --size tiny      # CPU smoke run

Prints one JSON line per measurement (examples/s or tokens/s, and the speed-up ratio).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from xmtf_jax.inference import generation
from xmtf_jax.model.encoder_decoder import EncoderDecoderModel
from xmtf_jax.model import scoring  # noqa: E402
from xmtf_jax.model.config import T5Config  # noqa: E402

SIZES = {
    "tiny": T5Config(vocab_size=2048, d_model=64, d_kv=16, d_ff=128, num_heads=4, num_encoder_layers=2,
                     num_decoder_layers=2, dropout_rate=0.0),
    "small": T5Config(dropout_rate=0.0, dtype="bfloat16"),  # mT5-small: 250112 vocab, 512/1024, 8+8
}


def timed(fn, *args, repeats: int) -> float:
  """Seconds per call after one compile-and-warm-up call."""
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / repeats


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
  parser.add_argument("--batch", type=int, default=None)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dtype", default=None, help="activation dtype (default: bfloat16 for small)")
  args = parser.parse_args()
  config = SIZES[args.size]
  if args.size == "tiny":
    config = config.replace(dtype="float32")
  if args.dtype:
    config = config.replace(dtype=args.dtype)
  if config.dtype == "float32":  # exact float32 matmuls (no TF32), for the equality checks
    jax.config.update("jax_default_matmul_precision", "highest")
  model = EncoderDecoderModel(config)
  params = model.init_params(jax.random.key(0))
  rng = np.random.default_rng(0)
  device = jax.devices()[0].device_kind
  common = dict(size=args.size, device=device, dtype=config.dtype)

  # Rank classification, XNLI-like: 128-token prompts, 3 choices of 8 tokens (EOS included).
  batch = args.batch or (64 if args.size != "tiny" else 16)
  choices_per_example, input_length, choice_length = 3, 128, 8
  inputs = rng.integers(2, config.vocab_size, (batch, input_length)).astype(np.int32)
  choices = rng.integers(2, config.vocab_size, (batch, choices_per_example, choice_length)).astype(np.int32)
  choices[..., -1] = 1
  once = jax.jit(lambda p, e, c: scoring.choice_scores(model, p, e, c))
  pairs = jax.jit(lambda p, b: scoring.score_batch(model, p, b))
  flat_batch = {"encoder_input_tokens": np.repeat(inputs, choices_per_example, axis=0),
                "decoder_target_tokens": choices.reshape(batch * choices_per_example, choice_length)}
  np.testing.assert_allclose(np.asarray(once(params, inputs, choices)).reshape(-1),
                             np.asarray(pairs(params, flat_batch)), rtol=2e-2, atol=2e-2)
  t_once = timed(once, params, inputs, choices, repeats=args.repeats)
  t_pairs = timed(pairs, params, flat_batch, repeats=args.repeats)
  print(json.dumps(dict(common, benchmark="rank_classification_scoring", batch_examples=batch,
                        choices=choices_per_example, input_length=input_length,
                        examples_per_second_encode_once=round(batch / t_once, 1),
                        examples_per_second_pairs=round(batch / t_pairs, 1),
                        speedup=round(t_pairs / t_once, 2))))

  # Greedy decoding of 32 tokens for 64-token prompts.
  decode_length, prompt_length = 32, 64
  prompts = rng.integers(2, config.vocab_size, (batch, prompt_length)).astype(np.int32)
  greedy = generation.DecodingConfig(max_decode_length=decode_length)
  cached = jax.jit(lambda p, t: generation.predict_batch(model, p, t, greedy).sequences)

  @jax.jit
  def uncached(p, tokens):
    """Baseline: every step runs the whole decoder over the (padded) prefix."""
    encoded = model.encode_fn(p, tokens)

    def step(i, sequences):
      decoder_inputs = jnp.concatenate([jnp.zeros((batch, 1), jnp.int32), sequences[:, :-1]], 1)
      logits = model.decode_from_encoded(p, encoded, tokens, decoder_inputs)
      next_token = jnp.argmax(logits[:, i], -1).astype(jnp.int32)
      return sequences.at[:, i].set(next_token)
    return jax.lax.fori_loop(0, decode_length, step, jnp.zeros((batch, decode_length), jnp.int32))

  # Equal up to the first EOS (the baseline does not stop at EOS). Where they differ, the
  # teacher-forced logits show how close the two tokens were (a near-tie decided by rounding).
  cached_sequences = np.asarray(cached(params, prompts))
  teacher_forced = np.asarray(jax.jit(lambda p, e, d: (lambda m, *a: m.decode_from_encoded(*a))(
      model, p, model.encode_fn(p, e), e, d))(
          params, prompts, np.concatenate([np.zeros((batch, 1), np.int32), cached_sequences[:, :-1]], 1)),
      np.float32)
  same, gaps = [], []
  for row, (x, y) in enumerate(zip(cached_sequences, np.asarray(uncached(params, prompts)))):
    n = list(x).index(1) + 1 if 1 in x else len(x)
    same.append(bool((x[:n] == y[:n]).all()))
    if not same[-1]:
      t = int(np.argmax(x[:n] != y[:n]))
      gaps.append(float(teacher_forced[row, t].max() - teacher_forced[row, t, x[t]]))
  t_cached = timed(cached, params, prompts, repeats=args.repeats)
  t_uncached = timed(uncached, params, prompts, repeats=args.repeats)
  tokens = batch * decode_length
  print(json.dumps(dict(common, benchmark="greedy_decoding", batch=batch, prompt_length=prompt_length,
                        decode_length=decode_length, same_output_rows=f"{sum(same)}/{len(same)}",
                        max_logit_gap_at_first_difference=round(max(gaps), 4) if gaps else None,
                        logit_std=round(float(teacher_forced.std()), 3),
                        tokens_per_second_kv_cache=round(tokens / t_cached, 1),
                        tokens_per_second_no_cache=round(tokens / t_uncached, 1),
                        speedup=round(t_uncached / t_cached, 2))))
  beam = generation.DecodingConfig(method="beam", num_beams=4, max_decode_length=decode_length)
  beam_fn = jax.jit(lambda p, t: generation.predict_batch(model, p, t, beam).sequences)
  t_beam = timed(beam_fn, params, prompts, repeats=args.repeats)
  print(json.dumps(dict(common, benchmark="beam_search_4", batch=batch, decode_length=decode_length,
                        examples_per_second=round(batch / t_beam, 1))))


if __name__ == "__main__":
  main()
