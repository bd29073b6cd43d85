"""Decoding and scoring on a real (tiny, random) mT5, against HF transformers on the same weights.

The HF model gets a distinct LM head (transformers 5 ties it otherwise) whose EOS row is shifted so
that generations end at different lengths and EOS handling is exercised.
"""
import jax
import numpy as np
import pytest
import torch

import xmtf_jax
from xmtf_jax.inference import generation
from xmtf_jax.parallel import partitioning
from xmtf_jax.evaluation import rank_classification
from xmtf_jax.model import scoring
from xmtf_jax.inference.generation import DecodingConfig

MAX_DECODE = 10


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  from conftest import build_random_hf_mt5
  hf_model = build_random_hf_mt5(seed=12)
  with torch.no_grad():
    # Shift EOS's row towards the mean row: some greedy rows now end after 1 or 6 tokens, others
    # run to the maximum length.
    head = hf_model.lm_head.weight
    head[1] = head.mean(0) * 12.0 + head[1]
  folder = tmp_path_factory.mktemp("hf_mt5_eos")
  hf_model.save_pretrained(folder)
  model, params = xmtf_jax.load_pretrained(str(folder))
  return model, params, hf_model


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  tokens = np.zeros((6, 9), np.int32)
  for row, length in enumerate([9, 3, 6, 1, 7, 5]):
    tokens[row, :length] = rng.integers(2, 128, length)
  return tokens


def hf_generate(hf_model, tokens, **kwargs):
  # use_cache=False: HF sizes its cache by the encoder depth, which fails for this model's deeper
  # decoder (3 vs 2 layers); without the cache HF recomputes every step, with the same results.
  with torch.no_grad():
    out = hf_model.generate(input_ids=torch.tensor(tokens, dtype=torch.long),
                            attention_mask=torch.tensor(tokens > 0, dtype=torch.long),
                            max_new_tokens=MAX_DECODE, return_dict_in_generate=True,
                            output_scores=True, use_cache=False, **kwargs)
  sequences = out.sequences.numpy()[:, 1:]  # drop the decoder start token
  padded = np.zeros((tokens.shape[0], MAX_DECODE), np.int64)
  padded[:, :sequences.shape[1]] = sequences
  # HF's beam search fills after EOS with `pad_token_id or eos_token_id`, i.e. EOS when pad is 0;
  # we pad with 0. Compare up to and including the first EOS.
  for row in padded:
    if 1 in row:
      row[list(row).index(1) + 1:] = 0
  return padded, out


def predict(model, params, tokens, **config):
  # generation.generate compiles once per (config, shape): tests sharing a config share the compile.
  return generation.generate(model, params, tokens, DecodingConfig(max_decode_length=MAX_DECODE, **config))


def test_greedy_equals_hf_generate_and_stops_rows_at_eos(models, inputs):
  model, params, hf_model = models
  ours = np.asarray(predict(model, params, inputs).sequences)
  theirs, _ = hf_generate(hf_model, inputs, do_sample=False, num_beams=1)
  np.testing.assert_array_equal(ours, theirs)
  pure = jax.jit(lambda p, t: generation.predict_batch(
      model, p, t, DecodingConfig(max_decode_length=MAX_DECODE)))(params, inputs)
  np.testing.assert_array_equal(np.asarray(pure.sequences), theirs)
  lengths = [list(row).index(1) + 1 if 1 in row else MAX_DECODE for row in ours]
  assert len(set(lengths)) > 1 and min(lengths) < MAX_DECODE  # rows stopped at their own EOS
  for row, length in zip(ours, lengths):
    assert (row[length:] == 0).all()


def test_cached_steps_equal_the_argmax_of_the_full_forward(models, inputs):
  model, params, _ = models
  ours = np.asarray(predict(model, params, inputs).sequences)
  decoder_inputs = np.concatenate([np.zeros((len(ours), 1), np.int32), ours[:, :-1]], axis=1)
  full = np.asarray(model.logits(params, inputs, decoder_inputs))
  for row, sequence in enumerate(ours):
    length = list(sequence).index(1) + 1 if 1 in sequence else MAX_DECODE
    np.testing.assert_array_equal(full[row, :length].argmax(-1), sequence[:length])


@pytest.mark.parametrize("length_penalty, early_stopping", [(1.0, False), (0.5, True),
                                                             (2.0, "never")])
def test_beam_search_equals_hf(models, inputs, length_penalty, early_stopping):
  model, params, hf_model = models
  out = predict(model, params, inputs, method="beam", num_beams=3, length_penalty=length_penalty,
                early_stopping=early_stopping)
  theirs, hf_out = hf_generate(hf_model, inputs, do_sample=False, num_beams=3,
                               length_penalty=length_penalty, early_stopping=early_stopping)
  np.testing.assert_array_equal(np.asarray(out.sequences), theirs)
  np.testing.assert_allclose(np.asarray(out.scores), hf_out.sequences_scores.numpy(), rtol=1e-4,
                             atol=1e-4)


def test_one_beam_and_top_k_one_equal_greedy(models, inputs):
  model, params, _ = models
  greedy = np.asarray(predict(model, params, inputs).sequences)
  beam = np.asarray(predict(model, params, inputs, method="beam", num_beams=1).sequences)
  top1 = np.asarray(predict(model, params, inputs, method="sample", top_k=1, temperature=2.0,
                            seed=5).sequences)
  np.testing.assert_array_equal(beam, greedy)
  np.testing.assert_array_equal(top1, greedy)


def hf_log_likelihoods(hf_model, encoder_tokens, targets):
  """Sum of log p(target token) incl. EOS, from HF's teacher-forced logits."""
  labels = torch.tensor(np.where(targets == 0, -100, targets), dtype=torch.long)
  with torch.no_grad():
    logits = hf_model(input_ids=torch.tensor(encoder_tokens, dtype=torch.long),
                      attention_mask=torch.tensor(encoder_tokens > 0, dtype=torch.long),
                      labels=labels).logits.double()
  log_probs = torch.log_softmax(logits, -1)
  picked = torch.gather(log_probs, -1, labels.clamp(min=0)[..., None])[..., 0]
  return (picked * (labels >= 0)).sum(-1).numpy()


def choice_fixture():
  rng = np.random.default_rng(1)
  encoder = np.zeros((3, 8), np.int32)
  choices = np.zeros((3, 3, 5), np.int32)
  for row, (length, choice_lengths) in enumerate([(8, [2, 4, 1]), (3, [5, 3, 0]), (5, [1, 1, 2])]):
    encoder[row, :length] = rng.integers(2, 128, length)
    for c, n in enumerate(choice_lengths):
      if n:  # n tokens, the last being EOS; n == 0 leaves an unused choice slot
        choices[row, c, :n] = list(rng.integers(2, 128, n - 1)) + [1]
  return encoder, choices


def test_score_batch_equals_hf_log_likelihood(models):
  model, params, hf_model = models
  encoder, choices = choice_fixture()
  targets = choices[:, 0]
  ours = np.asarray(model.score_batch(params, {"encoder_input_tokens": encoder,
                                               "decoder_target_tokens": targets}))
  assert ours.dtype == np.float32
  np.testing.assert_allclose(ours, hf_log_likelihoods(hf_model, encoder, targets), rtol=1e-4,
                             atol=1e-4)


def test_choice_scores_encode_once_and_equal_hf(models):
  model, params, hf_model = models
  encoder, choices = choice_fixture()
  ours = np.asarray(jax.jit(lambda p, e, c: scoring.choice_scores(model, p, e, c))(
      params, encoder, choices))
  for c in range(choices.shape[1]):
    expected = hf_log_likelihoods(hf_model, encoder, choices[:, c])
    np.testing.assert_allclose(ours[:, c], expected, rtol=1e-4, atol=1e-4)
  assert ours[1, 2] == 0.0  # the unused slot


def test_sharded_scoring_and_decoding_equal_unsharded(models, inputs):
  """Batch over `data` (4) x tensor parallelism over `model` (2) on 8 simulated devices."""
  model, params, _ = models
  mesh = partitioning.make_mesh(num_partitions=2)
  sharded_model = model.with_mesh(mesh)
  sharded_params = jax.device_put(params, sharded_model.param_shardings())
  encoder, choices = choice_fixture()
  unsharded = rank_classification.make_choice_scorer(model, params)(encoder, choices)
  sharded = rank_classification.make_choice_scorer(sharded_model, sharded_params, mesh)(encoder, choices)
  np.testing.assert_allclose(sharded, unsharded, rtol=1e-5, atol=1e-5)
  config = DecodingConfig(method="beam", num_beams=3, max_decode_length=MAX_DECODE)
  np.testing.assert_array_equal(
      generation.make_predictor(sharded_model, sharded_params, config, mesh)(inputs),
      np.asarray(generation.generate(model, params, inputs, config).sequences))
