"""Rank-classification batching and the task-level pipeline, with a scorer whose scores are known.

The scorer here is a plain function of the token ids (not a model), so every score, prediction and
accuracy can be checked by hand; tests/test_scoring.py checks the model scorer against HF.
"""
import json
import os

import numpy as np
import pytest
import seqio

from xmtf_jax.evaluation import tasks as eval_tasks
from xmtf_jax.evaluation import heldout_tasks
from xmtf_jax.evaluation import rank_classification as rc

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "promptsource")


def toy_encode(text):
  """One id per character (ids 3..), like a byte vocabulary."""
  return [3 + (ord(ch) % 200) for ch in text]


def token_sum_scorer(inputs, choices):
  """score(choice) = -(number of choice tokens) + 0.001 * (sum of input ids): prefers the shortest
  choice, and the input term proves each choice is paired with its own input."""
  assert inputs.shape[0] == choices.shape[0]
  lengths = (choices != 0).sum(-1)
  return (-lengths + 0.001 * inputs.sum(-1)[:, None]).astype(np.float32)


def test_tokenize_appends_eos_to_choices_only_and_truncates_inputs():
  [example] = rc.tokenize_examples([{"inputs": "abcdef", "answer_choices": ["xy", "z"], "label": 1}],
                                   toy_encode, max_input_length=4, max_choice_length=2)
  assert example.input_tokens.tolist() == toy_encode("abcd")
  assert [c.tolist() for c in example.choice_tokens] == [toy_encode("x") + [1], toy_encode("z") + [1]]
  with pytest.raises(ValueError, match="label 2 is not an index"):
    rc.tokenize_examples([{"inputs": "a", "answer_choices": ["x", "y"], "label": 2}], toy_encode)


def test_batches_have_fixed_shapes_bucketed_lengths_and_every_example_once():
  records = [{"inputs": "q" * n, "answer_choices": ["a" * (n % 5 + 1), "bb", "c"][: 2 + n % 2],
              "label": 0} for n in range(1, 40)]
  examples = rc.tokenize_examples(records, toy_encode)
  batches = list(rc.make_batches(examples, batch_size=8))
  seen = sorted(int(i) for b in batches for i in b.example_indices if i >= 0)
  assert seen == list(range(len(examples)))
  for batch in batches:
    assert batch.input_tokens.shape[0] == 8 and batch.choice_target_tokens.shape[:2] == (8, 3)
    in_len, t_len = batch.input_tokens.shape[1], batch.choice_target_tokens.shape[2]
    assert in_len & (in_len - 1) == 0 and t_len & (t_len - 1) == 0  # powers of two
  shapes = {(b.input_tokens.shape, b.choice_target_tokens.shape) for b in batches}
  assert len(shapes) <= 4


def test_rank_classify_scores_and_predictions_by_hand():
  records = [
      {"inputs": "ab", "answer_choices": ["long one", "s"], "label": 1},     # shortest = 1: correct
      {"inputs": "c", "answer_choices": ["xx", "y", "zzz"], "label": 0},    # predicts 1: wrong
      {"inputs": "", "answer_choices": ["tie", "tie"], "label": 0},         # tie → first: correct
  ]
  examples = rc.tokenize_examples(records, toy_encode)
  results = rc.rank_classify(token_sum_scorer, examples, batch_size=2)
  # Choice lengths include EOS: "s" → 2 tokens, "long one" → 9.
  np.testing.assert_allclose(results[0].scores, [-9 + 0.001 * sum(toy_encode("ab")),
                                                 -2 + 0.001 * sum(toy_encode("ab"))], rtol=1e-6)
  assert [r.prediction for r in results] == [1, 1, 0]
  assert [r.correct for r in results] == [True, False, True]
  assert len(results[1].scores) == 3 and len(results[0].scores) == 2


def test_evaluate_tasks_end_to_end_on_registered_heldout_tasks(tmp_path):
  rows = [{"premise": "The cat sleeps.", "hypothesis": "An animal rests.", "label": 0},
          {"premise": "It rains.", "hypothesis": "The street is dry.", "label": 2},
          {"premise": "Tom left.", "hypothesis": "Tom was tired.", "label": 1},
          {"premise": "A.", "hypothesis": "B.", "label": 0}]
  os.makedirs(tmp_path / "xnli" / "en")
  with open(tmp_path / "xnli" / "en" / "validation.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  names = heldout_tasks.register_heldout_tasks(
      data_dir=str(tmp_path), templates_root=FIXTURES, vocabulary=seqio.ByteVocabulary(),
      datasets=["xnli"], languages={"xnli": ["en"]}, prefix="rc_test")
  assert names == ["rc_test_xnli_en_toy_arrow", "rc_test_xnli_en_toy_support"]
  results = eval_tasks.evaluate_tasks(token_sum_scorer, names, batch_size=3, print_fn=None)
  by_template = {r.template: r for r in results}
  # "toy arrow": choices entailed / undetermined / contradicted → the shortest, "entailed", is
  # predicted: correct for labels 0 (rows 0 and 3). "toy support": Yes / Perhaps / No → "No"
  # (2 bytes + EOS beats "Yes") is predicted: correct for label 2 (row 1).
  assert (by_template["toy arrow"].num_correct, by_template["toy arrow"].num_examples) == (2, 4)
  assert (by_template["toy support"].num_correct, by_template["toy support"].num_examples) == (1, 4)
  assert {r.dataset for r in results} == {"xnli"} and {r.language for r in results} == {"en"}
  assert {r.num_choices for r in results} == {3}


def test_tasks_without_answer_choices_are_refused():
  seqio.TaskRegistry.remove("rc_test_plain")
  seqio.TaskRegistry.add(
      "rc_test_plain",
      source=seqio.FunctionDataSource(
          lambda split, shuffle_files, seed=None: __import__("tensorflow").data.Dataset.from_tensor_slices(
              {"inputs": ["a"], "targets": ["b"]}), splits=["validation"]),
      preprocessors=[seqio.preprocessors.tokenize],
      output_features={"inputs": seqio.Feature(seqio.ByteVocabulary()),
                       "targets": seqio.Feature(seqio.ByteVocabulary())})
  with pytest.raises(ValueError, match="rc_test_plain: examples have no 'answer_choices'"):
    eval_tasks.evaluate_tasks(token_sum_scorer, ["rc_test_plain"], batch_size=2, print_fn=None)
