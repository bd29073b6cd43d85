"""Decoding algorithms on a toy model whose logits depend on the whole prefix through its cache.

References: step-by-step argmax in plain Python, and exhaustive search over every sequence for beam
search. Parity with HF transformers on a real mT5 is in tests/test_inference_hf.py.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmtf_jax.inference import decoding

VOCAB, STATES, EOS = 6, 101, 1


def make_toy(seed=0, eos_bias=0.0):
  """logits = TABLE[h], h a hash of the prefix kept in the cache (so beams must reorder it)."""
  table = np.random.RandomState(seed).normal(size=(STATES, VOCAB)).astype(np.float32) * 2.0
  table[:, 0] = -30.0  # the pad token is never a likely continuation
  table[:, EOS] += eos_bias

  def next_state(h, token):
    return (h * 7 + token + 3) % STATES

  def tokens_to_logits(tokens, cache, step):
    del step
    h = next_state(cache["h"], tokens[:, 0])
    return jnp.asarray(table)[h], {"h": h, "index": cache["index"] + 1}

  def reference_logits(prefix, start=0):
    h = 0
    for token in [start] + list(prefix):
      h = next_state(h, token)
    return table[h].astype(np.float64)

  return tokens_to_logits, reference_logits


def initial_cache(rows):
  return {"h": jnp.zeros((rows,), jnp.int32), "index": jnp.int32(0)}


def log_softmax(x):
  x = x - x.max()
  return x - np.log(np.exp(x).sum())


def sequence_log_prob(reference_logits, sequence):
  return sum(log_softmax(reference_logits(sequence[:i]))[t] for i, t in enumerate(sequence))


def strip(sequence):
  sequence = list(np.asarray(sequence))
  return sequence[:sequence.index(EOS) + 1] if EOS in sequence else sequence


@pytest.mark.parametrize("seed, eos_bias", [(0, 0.0), (1, 1.5), (2, -3.0)])
def test_greedy_is_the_stepwise_argmax_and_pads_after_eos(seed, eos_bias):
  tokens_to_logits, reference_logits = make_toy(seed, eos_bias)
  out = jax.jit(lambda c: decoding.sample_decode(tokens_to_logits, c, batch_size=1,
                                                 max_decode_length=12))(initial_cache(1))
  expected = []
  while len(expected) < 12 and (not expected or expected[-1] != EOS):
    expected.append(int(np.argmax(reference_logits(expected))))
  got = list(np.asarray(out.sequences[0]))
  assert got[:len(expected)] == expected and all(t == 0 for t in got[len(expected):])
  np.testing.assert_allclose(out.scores[0], sequence_log_prob(reference_logits, expected), rtol=1e-5)


def test_rows_stop_at_their_own_eos():
  # Different start tokens give rows different prefixes; eos_bias makes early EOS likely.
  tokens_to_logits, reference_logits = make_toy(3, eos_bias=1.0)
  outs = [decoding.sample_decode(tokens_to_logits, initial_cache(1), batch_size=1,
                                 max_decode_length=10, start_id=s).sequences[0] for s in (0, 2, 4)]
  batched = decoding.sample_decode(tokens_to_logits, initial_cache(3), batch_size=3,
                                   max_decode_length=10,
                                   start_id=0).sequences  # same start: all rows equal
  assert all((batched[i] == outs[0]).all() for i in range(3))
  lengths = {len(strip(o)) for o in outs}
  assert len(lengths) > 1  # the rows really finished at different steps


def test_per_row_start_tokens_and_a_pad_id_other_than_zero():
  """A decoder-only model starts each row from its own last prompt token and pads with its own id."""
  tokens_to_logits, _ = make_toy(3, eos_bias=1.0)
  alone = [decoding.sample_decode(tokens_to_logits, initial_cache(1), batch_size=1,
                                  max_decode_length=10, start_id=s, pad_id=5).sequences[0]
           for s in (0, 2, 4)]
  batched = decoding.sample_decode(tokens_to_logits, initial_cache(3), batch_size=3,
                                   max_decode_length=10, start_id=jnp.asarray([0, 2, 4]), pad_id=5)
  for row, expected in zip(np.asarray(batched.sequences), alone):
    np.testing.assert_array_equal(row, expected)
    assert all(t == 5 for t in list(row)[len(strip(row)):])
  assert any(len(strip(row)) < 10 for row in alone)  # some padding was written
  beams = decoding.beam_search(tokens_to_logits, initial_cache(6), batch_size=3, num_beams=2,
                               max_decode_length=10, start_id=jnp.asarray([0, 2, 4]), pad_id=5)
  for row, s in enumerate((0, 2, 4)):
    one = decoding.beam_search(tokens_to_logits, initial_cache(2), batch_size=1, num_beams=2,
                               max_decode_length=10, start_id=s, pad_id=5)
    np.testing.assert_array_equal(beams.sequences[row], one.sequences[0])
  assert all(t == 5 for row in np.asarray(beams.sequences) for t in list(row)[len(strip(row)):])


@pytest.mark.parametrize("length_penalty, early_stopping", [(0.0, False), (1.0, False), (2.0, True),
                                                             (0.6, "never"), (2.0, "never")])
def test_one_beam_equals_greedy(length_penalty, early_stopping):
  # (2.0, "never") on seed 0 kept searching past the first EOS before one beam became greedy.
  for seed, eos_bias in [(0, 0.0), (4, 1.0), (5, -1.0), (1, 2.0)]:
    tokens_to_logits, _ = make_toy(seed, eos_bias)
    greedy = decoding.sample_decode(tokens_to_logits, initial_cache(1), batch_size=1,
                                    max_decode_length=9)
    beam = decoding.beam_search(tokens_to_logits, initial_cache(1), batch_size=1, num_beams=1,
                                max_decode_length=9, length_penalty=length_penalty,
                                early_stopping=early_stopping)
    np.testing.assert_array_equal(beam.sequences, greedy.sequences)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_wide_beam_finds_the_exhaustive_best(length_penalty):
  """With as many beams as prefixes nothing is pruned: the result is the true argmax of
  log p / length ** penalty over every sequence ending in EOS or of the maximum length."""
  max_length = 3
  tokens_to_logits, reference_logits = make_toy(6, eos_bias=0.5)
  candidates = []
  for n in range(1, max_length + 1):
    for seq in itertools.product(range(1, VOCAB), repeat=n):
      if EOS in seq[:-1] or (n < max_length and seq[-1] != EOS):
        continue
      score = sequence_log_prob(reference_logits, seq) / n ** length_penalty
      candidates.append((score, list(seq)))
  candidates.sort(reverse=True)
  num_beams = (VOCAB - 1) ** (max_length - 1)
  out = jax.jit(lambda c: decoding.beam_search(
      tokens_to_logits, c, batch_size=1, num_beams=num_beams, max_decode_length=max_length,
      length_penalty=length_penalty, early_stopping="never"))(initial_cache(num_beams))
  assert strip(out.sequences[0]) == candidates[0][1]
  np.testing.assert_allclose(out.scores[0], candidates[0][0], rtol=1e-5)
  # The K finished beams are the K best sequences, best first.
  for (score, seq), beam, beam_score in zip(candidates[:5], out.beams[0], out.beam_scores[0]):
    assert strip(beam) == seq
    np.testing.assert_allclose(beam_score, score, rtol=1e-5)


def test_beam_search_batch_rows_are_independent():
  tokens_to_logits, _ = make_toy(7)
  k = 3
  single = decoding.beam_search(tokens_to_logits, initial_cache(k), batch_size=1, num_beams=k,
                                max_decode_length=6, start_id=2)
  batched = decoding.beam_search(tokens_to_logits, initial_cache(2 * k), batch_size=2, num_beams=k,
                                 max_decode_length=6, start_id=2)
  np.testing.assert_array_equal(batched.sequences[1], single.sequences[0])
  np.testing.assert_allclose(batched.scores[1], single.scores[0], rtol=1e-6)


def test_top_k_one_sampling_equals_greedy():
  tokens_to_logits, _ = make_toy(8)
  greedy = decoding.sample_decode(tokens_to_logits, initial_cache(4), batch_size=4,
                                  max_decode_length=8)
  sampled = decoding.sample_decode(tokens_to_logits, initial_cache(4), batch_size=4,
                                   max_decode_length=8, rng=jax.random.PRNGKey(3),
                                   temperature=1.7, top_k=1)
  np.testing.assert_array_equal(sampled.sequences, greedy.sequences)


def test_sampling_follows_the_filtered_tempered_distribution():
  tokens_to_logits, reference_logits = make_toy(9)
  n = 6000
  first_logits = reference_logits([])
  for temperature, top_k, top_p in [(1.0, 0, 1.0), (0.7, 3, 1.0), (1.3, 0, 0.8)]:
    out = jax.jit(lambda c, r, t=temperature, k=top_k, p=top_p: decoding.sample_decode(
        tokens_to_logits, c, batch_size=n, max_decode_length=1, rng=r, temperature=t, top_k=k,
        top_p=p))(initial_cache(n), jax.random.PRNGKey(0))
    counts = np.bincount(np.asarray(out.sequences[:, 0]), minlength=VOCAB) / n
    expected = np.exp(log_softmax(first_logits / temperature))
    order = np.argsort(-expected)
    allowed = np.ones(VOCAB, bool)
    if top_k:
      allowed[order[top_k:]] = False
    if top_p < 1.0:
      mass_before = np.cumsum(expected[order]) - expected[order]
      allowed[order[mass_before >= top_p]] = False
    expected = np.where(allowed, expected, 0.0)
    expected /= expected.sum()
    assert np.all(counts[~allowed] == 0)
    np.testing.assert_allclose(counts, expected, atol=0.025)


def test_filter_logits_keeps_the_nucleus():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  kept = np.asarray(decoding.filter_logits(logits, top_p=0.8)) > decoding.NEG_INF / 2
  assert kept.tolist() == [[True, True, False, False]]
  kept = np.asarray(decoding.filter_logits(logits, top_p=0.81)) > decoding.NEG_INF / 2
  assert kept.tolist() == [[True, True, True, False]]
  kept = np.asarray(decoding.filter_logits(logits, top_k=3, top_p=0.1)) > decoding.NEG_INF / 2
  assert kept.tolist() == [[True, False, False, False]]
