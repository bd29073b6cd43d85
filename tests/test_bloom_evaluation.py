"""The held-out evaluation command and evaluation during training, given a BLOOM model object: the
same code as for mT5, laid out by BLOOM's PromptFormat, and the accuracies HF's log-likelihoods give.

Tiny random BLOOM over the demo's SentencePiece ids (2000 < its vocabulary of 2048); its ids 2 and 3
(<unk>, a byte piece) never occur in text, so BLOOM's EOS 2 and <pad> 3 keep their meaning.
"""
import json
import os

import gin
import numpy as np
import pytest
import torch

from test_bloom_inference import build_random_hf_bloom, ours_from_hf
from xmtf_jax.cli import evaluate as evaluate_lib
from xmtf_jax.evaluation.during_training import TrainingEvaluator
from xmtf_jax.inference.generation import DecodingConfig
from xmtf_jax.train.vocabulary import load_vocabulary

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_VOCAB = os.path.join(REPO_ROOT, "data", "demo", "sentencepiece.model")
TASKS = {"demo_heldout_language_id_en_identify": "en/xp3_language_id_en_validation_identify.jsonl",
         "demo_heldout_number_compare_es_more": "es/xp3_number_compare_es_validation_more.jsonl"}
EXAMPLES = 6


@pytest.fixture(autouse=True)
def fresh_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def hf_choice_log_likelihood(hf_model, input_ids, choice_ids):
  """BLOOMZ's protocol with HF, one unpadded row: input ++ " " + choice, no EOS, summed log-probs."""
  tokens = torch.tensor([input_ids + choice_ids])
  with torch.no_grad():
    logits = hf_model(input_ids=tokens).logits.double()[0, len(input_ids) - 1:-1]
  return torch.log_softmax(logits, -1).gather(-1, torch.tensor(choice_ids)[:, None]).sum().item()


def test_evaluate_and_the_training_hook_score_bloom_as_hf_does(tmp_path):
  hf_model = build_random_hf_bloom(seed=5, vocab_size=2048)
  model, params = ours_from_hf(hf_model)
  paths = evaluate_lib.evaluate(model_path="(in memory)", output_dir=str(tmp_path / "eval"),
                                tasks=list(TASKS), batch_size=4, max_examples_per_task=EXAMPLES,
                                add_eos_to_inputs=False, model=model, params=params)
  document = json.loads(open(paths["json"]).read())
  assert os.path.exists(paths["markdown"]) and os.path.exists(paths["plot_language_id"])
  assert document["metadata"]["protocol"].startswith("rank classification: sum of ' ' + choice "
                                                     "log-probs without EOS")
  vocabulary = load_vocabulary(None, DEMO_VOCAB)
  for row in document["prompts"]:
    with open(os.path.join(REPO_ROOT, "data", "demo_heldout", TASKS[row["task"]])) as f:
      records = [json.loads(line) for line in f][:EXAMPLES]
    correct = 0
    for record in records:
      input_ids = list(vocabulary.encode(record["inputs"]))[-512:]
      scores = [hf_choice_log_likelihood(hf_model, input_ids, list(vocabulary.encode(" " + c)))
                for c in record["answer_choices"]]
      correct += record["answer_choices"][int(np.argmax(scores))] == record["targets"]
    assert (row["num_correct"], row["num_examples"]) == (correct, EXAMPLES), row["task"]

  evaluator = TrainingEvaluator(model, None, rank_classification_tasks=list(TASKS),
                                generation_tasks=["demo_en"], max_examples_per_task=EXAMPLES,
                                batch_size=4, decoding=DecodingConfig(max_decode_length=4))
  metrics = evaluator(None, params)
  for row in document["prompts"]:
    assert metrics[f"{row['task']}/accuracy"] == row["accuracy"], row["task"]
  generation_metrics = [k for k in metrics if k.startswith("demo_en/")]
  assert generation_metrics and all(np.isfinite(metrics[k]) for k in generation_metrics)
