"""Rank classification and generation with a real (tiny, random) BLOOM, against HF transformers.

Our params come from the HF model's in-memory state dict through `hf.bloom_mapping`. The reference
numbers are HF's: log-likelihood sums from `BloomForCausalLM` logits of a left-padded batch with its
attention_mask (t-zero's `DecoderModel` protocol, as BLOOMZ was evaluated), and `generate` on
left-padded prompts. EOS's embedding row (the head is tied) is shifted so that generations end at
different lengths and EOS handling is exercised.
"""
import jax
import numpy as np
import pytest
import torch

from xmtf_jax.evaluation import rank_classification as rc
from xmtf_jax.hf import bloom_mapping
from xmtf_jax.hf import reader as hf_reader
from xmtf_jax.inference import generation
from xmtf_jax.inference.generation import DecodingConfig
from xmtf_jax.model import layer_stacking, scoring
from xmtf_jax.model.decoder_only import DecoderOnlyModel
from xmtf_jax.model.prompt_format import BLOOM, prompt_format
from xmtf_jax.parallel import partitioning

EOS, PAD = 2, 3
MAX_DECODE = 8


def build_random_hf_bloom(seed: int, vocab_size: int = 300):
  from transformers import BloomConfig as HFBloomConfig, BloomForCausalLM
  torch.manual_seed(seed)
  config = HFBloomConfig(vocab_size=vocab_size, hidden_size=64, n_layer=2, n_head=8,
                         hidden_dropout=0.0, attention_dropout=0.0, bos_token_id=1, eos_token_id=EOS,
                         pad_token_id=PAD)
  model = BloomForCausalLM(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layernorm" in name or "ln_f" in name:
        p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
      elif p.ndim == 2:
        p.copy_(torch.randn_like(p) * (0.5 if "word_embeddings" in name else p.shape[-1] ** -0.5))
      else:
        p.copy_(0.1 * torch.randn_like(p))
  return model


def ours_from_hf(hf_model):
  config = bloom_mapping.bloom_config_from_hf(hf_model.config.to_dict())
  state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
  return DecoderOnlyModel(config), jax.tree.map(jax.numpy.asarray,
                                                hf_reader.params_from_hf(state, config))


def left_pad(rows, length=None):
  length = length or max(len(r) for r in rows)
  out = np.full((len(rows), length), PAD, np.int32)
  for i, r in enumerate(rows):
    out[i, length - len(r):] = r
  return out


@pytest.fixture(scope="module")
def prompts():
  rng = np.random.default_rng(0)
  return left_pad([list(rng.integers(4, 300, n)) for n in (8, 3, 6, 1, 5)])


@pytest.fixture(scope="module")
def models(prompts):
  hf_model = build_random_hf_bloom(seed=21)
  # EOS's row (the head is tied) is pointed at the final hidden states of two positions of the greedy
  # continuations (minus their mean), so rows now stop after 1 and 4 tokens or run to the limit.
  continuations, _ = hf_generate(hf_model, prompts, do_sample=False)
  tokens = np.concatenate([prompts, continuations], axis=1)
  with torch.no_grad():
    hidden = hf_model(input_ids=torch.tensor(tokens, dtype=torch.long),
                      attention_mask=torch.tensor(tokens != PAD, dtype=torch.long),
                      output_hidden_states=True).hidden_states[-1]
    mean = hidden[torch.tensor(tokens != PAD)].mean(0)
    unit = lambda v: (v - mean) / (v - mean).norm()  # noqa: E731
    at = prompts.shape[1] - 1
    hf_model.transformer.word_embeddings.weight[EOS] += 5.0 * (unit(hidden[0, at + 3])
                                                               + unit(hidden[2, at + 5]))
  model, params = ours_from_hf(hf_model)
  return model, params, hf_model


# ---- rank classification --------------------------------------------------------------------------

def hf_choice_scores(hf_model, inputs, choices):
  """[B, C] sums of log p(choice token) from HF logits of concat(left-padded input, right-padded
  choice) with the concatenated attention masks: t-zero's DecoderModel, float64 log_softmax."""
  b, c, length = choices.shape
  tokens = np.concatenate([np.repeat(inputs, c, axis=0), choices.reshape(b * c, length)], axis=1)
  mask = tokens != PAD
  with torch.no_grad():
    logits = hf_model(input_ids=torch.tensor(tokens, dtype=torch.long),
                      attention_mask=torch.tensor(mask, dtype=torch.long)).logits.double()
  log_probs = torch.log_softmax(logits[:, inputs.shape[1] - 1:-1], -1)
  targets = torch.tensor(choices.reshape(b * c, length), dtype=torch.long)
  picked = torch.gather(log_probs, -1, targets[..., None])[..., 0]
  return (picked * torch.tensor(mask[:, inputs.shape[1]:])).sum(-1).numpy().reshape(b, c)


def choice_fixture():
  rng = np.random.default_rng(1)
  inputs = left_pad([list(rng.integers(4, 300, n)) for n in (8, 3, 5)], 8)
  choices = np.full((3, 3, 4), PAD, np.int32)
  for row, lengths in enumerate([(2, 4, 1), (4, 3, 0), (1, 1, 2)]):
    for c, n in enumerate(lengths):  # n == 0 leaves an unused choice slot
      choices[row, c, :n] = rng.integers(4, 300, n)
  return inputs, choices


def test_choice_scores_equal_hf_log_likelihood_sums(models):
  model, params, hf_model = models
  inputs, choices = choice_fixture()
  ours = np.asarray(jax.jit(lambda p, i, c: scoring.choice_scores(model, p, i, c))(
      params, inputs, choices))
  assert ours.dtype == np.float32
  np.testing.assert_allclose(ours, hf_choice_scores(hf_model, inputs, choices), rtol=1e-4, atol=1e-4)
  assert ours[1, 2] == 0.0  # the unused slot


def test_bloom_layout_of_inputs_and_choices():
  encode = lambda text: [4 + (ord(ch) % 200) for ch in text]  # noqa: E731
  [example] = rc.tokenize_examples([{"inputs": "abcdef", "answer_choices": ["xyz", "w"], "label": 0}],
                                   encode, max_input_length=4, max_choice_length=3,
                                   prompt_format=BLOOM)
  assert example.input_tokens.tolist() == encode("cdef")  # the end kept
  assert [c.tolist() for c in example.choice_tokens] == [encode(" xy"), encode(" w")]  # no EOS
  [batch] = rc.make_batches([example], 2, prompt_format=BLOOM)
  assert batch.input_tokens.tolist() == [[PAD] * 4 + encode("cdef"), [PAD] * 8]
  assert batch.choice_target_tokens[0].tolist() == [encode(" xy") + [PAD], encode(" w") + [PAD] * 2]
  assert BLOOM.input_ids([5, 6, 7, 8, 9], 4, add_eos=True) == [7, 8, 9, EOS]
  assert BLOOM.generated_ids([9, 8, EOS, PAD, PAD]) == [9, 8]
  assert rc.describe_protocol(BLOOM, False) == (
      "rank classification: sum of ' ' + choice log-probs without EOS, no length normalisation, "
      "left-padded inputs without EOS")


def test_rank_classify_predicts_the_choice_hf_scores_highest(models):
  model, params, hf_model = models
  assert prompt_format(model.config) is BLOOM
  encode = lambda text: [4 + (ord(ch) % 290) for ch in text]  # noqa: E731
  records = [{"inputs": "Is the sky blue?", "answer_choices": ["yes", "no"], "label": 0},
             {"inputs": "Pick one:", "answer_choices": ["red", "green", "a blue one"], "label": 2},
             {"inputs": "2+2=", "answer_choices": ["4", "five"], "label": 1},
             {"inputs": "Name a fruit", "answer_choices": ["apple", "pear"], "label": 0}]
  examples = rc.tokenize_examples(records, encode, prompt_format=BLOOM)
  results = rc.rank_classify(rc.make_choice_scorer(model, params), examples, batch_size=2,
                             prompt_format=BLOOM)
  for record, result in zip(records, results):
    tokens = [encode(" " + c) for c in record["answer_choices"]]
    choices = np.full((1, len(tokens), max(map(len, tokens))), PAD, np.int32)
    for c, t in enumerate(tokens):
      choices[0, c, :len(t)] = t
    expected = hf_choice_scores(hf_model, left_pad([encode(record["inputs"])]), choices)[0]
    np.testing.assert_allclose(result.scores, expected, rtol=1e-4, atol=1e-4)
    assert result.prediction == int(np.argmax(expected))
  assert sum(r.correct for r in results) == sum(
      r.prediction == rec["label"] for r, rec in zip(results, records))


def test_score_batch_sums_the_target_positions_of_a_training_row(models):
  model, params, hf_model = models
  rng = np.random.default_rng(3)
  inputs, targets = list(rng.integers(4, 300, 5)), list(rng.integers(4, 300, 3)) + [EOS]
  row = inputs + targets
  batch = {"decoder_input_tokens": np.asarray([row[:-1] + [PAD] * 2], np.int32),
           "decoder_target_tokens": np.asarray([row[1:] + [PAD] * 2], np.int32),
           "decoder_loss_weights": np.asarray([[0] * 4 + [1] * 4 + [0] * 2], np.int32),
           "decoder_segment_ids": np.asarray([[1] * 8 + [0] * 2], np.int32)}
  ours = np.asarray(jax.jit(lambda p, b: scoring.score_batch(model, p, b))(params, batch))
  choices = np.asarray([[targets]], np.int32)
  expected = hf_choice_scores(hf_model, np.asarray([inputs], np.int32), choices)[0]
  np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="decoder_loss_weights"):
    scoring.score_batch(model, params, {k: v for k, v in batch.items() if k != "decoder_loss_weights"})


# ---- generation -----------------------------------------------------------------------------------

def hf_generate(hf_model, tokens, **kwargs):
  with torch.no_grad():
    out = hf_model.generate(input_ids=torch.tensor(tokens, dtype=torch.long),
                            attention_mask=torch.tensor(tokens != PAD, dtype=torch.long),
                            max_new_tokens=MAX_DECODE, min_new_tokens=0, pad_token_id=PAD,
                            eos_token_id=EOS, return_dict_in_generate=True, output_scores=True,
                            **kwargs)
  generated = out.sequences.numpy()[:, tokens.shape[1]:]  # the continuation only
  padded = np.full((tokens.shape[0], MAX_DECODE), PAD, np.int64)
  padded[:, :generated.shape[1]] = generated
  return padded, out


def predict(model, params, tokens, **config):
  return generation.generate(model, params, tokens, DecodingConfig(max_decode_length=MAX_DECODE,
                                                                   **config))


def test_greedy_equals_hf_generate_on_left_padded_prompts(models, prompts):
  model, params, hf_model = models
  ours = np.asarray(predict(model, params, prompts).sequences)
  theirs, _ = hf_generate(hf_model, prompts, do_sample=False, num_beams=1)
  np.testing.assert_array_equal(ours, theirs)
  lengths = [list(row).index(EOS) + 1 if EOS in row else MAX_DECODE for row in ours]
  assert len(set(lengths)) > 1 and min(lengths) < MAX_DECODE  # rows stopped at their own EOS
  for row, length in zip(ours, lengths):
    assert (row[length:] == PAD).all()


@pytest.mark.parametrize("length_penalty, early_stopping", [(1.0, False), (0.5, True)])
def test_beam_search_equals_hf_generate(models, prompts, length_penalty, early_stopping):
  model, params, hf_model = models
  out = predict(model, params, prompts, method="beam", num_beams=3, length_penalty=length_penalty,
                early_stopping=early_stopping)
  theirs, hf_out = hf_generate(hf_model, prompts, do_sample=False, num_beams=3,
                               length_penalty=length_penalty, early_stopping=early_stopping)
  np.testing.assert_array_equal(np.asarray(out.sequences), theirs)
  np.testing.assert_allclose(np.asarray(out.scores), hf_out.sequences_scores.numpy(), rtol=1e-4,
                             atol=1e-4)


def test_sampling_is_reproducible_with_its_seed(models, prompts):
  model, params, _ = models
  first = np.asarray(predict(model, params, prompts, method="sample", temperature=3.0, seed=7).sequences)
  again = np.asarray(predict(model, params, prompts, method="sample", temperature=3.0, seed=7).sequences)
  other = np.asarray(predict(model, params, prompts, method="sample", temperature=3.0, seed=8).sequences)
  np.testing.assert_array_equal(first, again)
  assert (first != other).any()
  top1 = np.asarray(predict(model, params, prompts, method="sample", top_k=1, seed=7).sequences)
  np.testing.assert_array_equal(top1, np.asarray(predict(model, params, prompts).sequences))


def test_predict_texts_left_pads_keeps_the_prompt_end_and_decodes_to_eos(models):
  model, params, hf_model = models

  class CharVocabulary:
    def encode(self, text):
      return [4 + (ord(ch) % 290) for ch in text]

    def decode(self, ids):
      return "".join(chr(i) for i in ids)

  texts = ["a longer prompt than allowed", "hi", "mid length"]
  config = DecodingConfig(max_decode_length=MAX_DECODE)
  predictions = generation.predict_texts(model, params, CharVocabulary(), texts, config, batch_size=2,
                                         max_input_length=8)
  for text, prediction in zip(texts, predictions):
    ids = CharVocabulary().encode(text)[-8:]  # no EOS appended, the end kept
    theirs, _ = hf_generate(hf_model, left_pad([ids]), do_sample=False)
    expected = list(theirs[0])
    expected = expected[:expected.index(EOS)] if EOS in expected else expected
    assert prediction == "".join(chr(i) for i in expected if i != PAD)


def test_sharded_scoring_and_decoding_equal_unsharded(models, prompts):
  """Rows over `data` (4) x tensor parallelism over `model` (2) on 8 simulated devices."""
  model, params, _ = models
  mesh = partitioning.make_mesh(num_partitions=2)
  sharded_model = model.with_mesh(mesh)
  sharded_params = jax.device_put(params, sharded_model.param_shardings())
  inputs, choices = choice_fixture()
  np.testing.assert_allclose(rc.make_choice_scorer(sharded_model, sharded_params, mesh)(inputs, choices),
                             rc.make_choice_scorer(model, params)(inputs, choices), rtol=1e-5, atol=1e-5)
  config = DecodingConfig(method="beam", num_beams=3, max_decode_length=MAX_DECODE)
  np.testing.assert_array_equal(
      generation.make_predictor(sharded_model, sharded_params, config, mesh)(prompts),
      np.asarray(generation.generate(model, params, prompts, config).sequences))


def test_a_scanned_model_decodes_and_scores_as_the_per_layer_one(models, prompts):
  model, params, _ = models
  scanned = DecoderOnlyModel(model.config.replace(scan_layers=True))
  stacked = layer_stacking.stack_layers(params, scanned.config)
  inputs, choices = choice_fixture()
  np.testing.assert_allclose(rc.make_choice_scorer(scanned, stacked)(inputs, choices),
                             rc.make_choice_scorer(model, params)(inputs, choices), rtol=1e-5, atol=1e-5)
  config = DecodingConfig(method="beam", num_beams=3, max_decode_length=MAX_DECODE)
  np.testing.assert_array_equal(np.asarray(generation.generate(scanned, stacked, prompts, config).sequences),
                                np.asarray(generation.generate(model, params, prompts, config).sequences))
