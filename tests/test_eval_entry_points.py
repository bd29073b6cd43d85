"""`python -m xmtf_jax.evaluate` and `python -m xmtf_jax.infer` end to end, on a random HF model
folder with the demo's SentencePiece vocabulary, checked against HF transformers on the same weights.
"""
import json
import os
import shutil

import gin
import numpy as np
import pytest
import torch

from xmtf_jax.cli import evaluate as evaluate_lib
from xmtf_jax.cli import infer as infer_lib
from xmtf_jax.errors import UserError
from xmtf_jax.train import pretrained
from xmtf_jax.train.vocabulary import load_vocabulary

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_VOCAB = os.path.join(REPO_ROOT, "data", "demo", "sentencepiece.model")
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "promptsource")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  from conftest import build_random_hf_mt5
  hf_model = build_random_hf_mt5(seed=3, vocab_size=2048)
  folder = tmp_path_factory.mktemp("hf_demo_vocab")
  hf_model.save_pretrained(folder)
  shutil.copy(DEMO_VOCAB, folder / "spiece.model")
  return str(folder), hf_model


@pytest.fixture(autouse=True)
def fresh_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def hf_choice_log_likelihood(hf_model, vocabulary, inputs, choice):
  """The paper's protocol computed with HF: input without EOS, choice + EOS, summed log-probs."""
  input_ids = torch.tensor([vocabulary.encode(inputs)[:512]])
  labels = torch.tensor([vocabulary.encode(choice) + [1]])
  with torch.no_grad():
    logits = hf_model(input_ids=input_ids, labels=labels).logits.double()
  return torch.log_softmax(logits, -1)[0].gather(-1, labels[0][:, None]).sum().item()


def test_evaluate_demo_heldout_tasks_matches_hf_rank_classification(model_dir, tmp_path):
  folder, hf_model = model_dir
  tasks = ["demo_heldout_language_id_en_identify", "demo_heldout_number_compare_es_more"]
  output_dir = tmp_path / "eval"
  evaluate_lib.main([
      f"--gin.evaluate.model_path='{folder}'", f"--gin.evaluate.output_dir='{output_dir}'",
      f"--gin.evaluate.tasks={tasks}", "--gin.evaluate.batch_size=4",
      "--gin.evaluate.max_examples_per_task=6"])
  document = json.loads((output_dir / "results.json").read_text())
  vocabulary = load_vocabulary(folder)
  for row in document["prompts"]:
    task_file = {"demo_heldout_language_id_en_identify": "en/xp3_language_id_en_validation_identify.jsonl",
                 "demo_heldout_number_compare_es_more": "es/xp3_number_compare_es_validation_more.jsonl"}[row["task"]]
    with open(os.path.join(REPO_ROOT, "data", "demo_heldout", task_file)) as f:
      records = [json.loads(line) for line in f][:6]
    correct = 0
    for record in records:
      scores = [hf_choice_log_likelihood(hf_model, vocabulary, record["inputs"], c)
                for c in record["answer_choices"]]
      correct += record["answer_choices"][int(np.argmax(scores))] == record["targets"]
    assert (row["num_correct"], row["num_examples"]) == (correct, 6), row["task"]
  assert set(document["datasets"]) == {"language_id", "number_compare"}
  assert (output_dir / "results.md").exists() and (output_dir / "language_id_accuracy.png").exists()


def test_evaluate_heldout_suite_from_gin_file(model_dir, tmp_path):
  folder, _ = model_dir
  data_dir = tmp_path / "heldout"
  os.makedirs(data_dir / "xwinograd" / "en")
  rows = [{"sentence": "Ann gave Bea a book because _ was kind.", "option1": "Ann", "option2": "Bea",
           "answer": "1"},
          {"sentence": "The cup fell off the table because _ was tilted.", "option1": "the cup",
           "option2": "the table", "answer": "2"}]
  with open(data_dir / "xwinograd" / "en" / "test.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  output_dir = tmp_path / "out"
  evaluate_lib.main([
      "--gin_file=gin/eval/heldout_en.gin", f"--gin.MODEL_PATH='{folder}'",
      f"--gin.OUTPUT_DIR='{output_dir}'", f"--gin.HELDOUT_DATA_DIR='{data_dir}'",
      f"--gin.PROMPTSOURCE_PATH='{FIXTURES}'", "--gin.HeldoutSuite.prompts='all'",
      "--gin.HeldoutSuite.datasets=['xwinograd']", "--gin.HeldoutSuite.languages={'xwinograd': ['en']}",
      "--gin.BATCH_SIZE=8"])
  document = json.loads((output_dir / "results.json").read_text())
  assert sorted(r["template"] for r in document["prompts"]) == ["toy right or wrong", "toy who"]
  assert all(r["num_examples"] == 2 for r in document["prompts"])
  summary = document["datasets"]["xwinograd"]
  assert summary["languages"]["en"]["num_prompts"] == 2
  assert document["metadata"]["prompt_variant"] == "en"


def test_infer_jsonl_matches_hf_greedy_generate(model_dir, tmp_path):
  folder, hf_model = model_dir
  inputs = ["Translate to French: Monday", "Which number is larger: \"two\" or \"seven\"?",
            "Identify the language of this text: lunes"]
  input_file = tmp_path / "in.jsonl"
  input_file.write_text("".join(json.dumps({"inputs": t, "targets": "x"}) + "\n" for t in inputs))
  output_file = tmp_path / "out" / "predictions.jsonl"
  infer_lib.main(["--gin_file=gin/infer/greedy.gin", f"--gin.MODEL_PATH='{folder}'",
                  f"--gin.infer.input_file='{input_file}'", f"--gin.infer.output_file='{output_file}'",
                  "--gin.MAX_DECODE_LENGTH=6", "--gin.BATCH_SIZE=2"])
  rows = [json.loads(line) for line in output_file.read_text().splitlines()]
  vocabulary = load_vocabulary(folder)
  assert [r["inputs"] for r in rows] == inputs and all(r["targets"] == "x" for r in rows)
  for row in rows:
    # an HF folder: inputs without EOS, as mT0 was trained and as training/evaluation feed them
    ids = torch.tensor([vocabulary.encode(row["inputs"])])
    with torch.no_grad():
      out = hf_model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, num_beams=1,
                              use_cache=False)[0, 1:].tolist()
    if 1 in out:
      out = out[:out.index(1)]
    assert row["prediction"] == vocabulary.decode([t for t in out if t != 0])


@pytest.mark.parametrize("recorded, expected", [(True, True), (False, False), (None, False)])
def test_inference_follows_the_eos_setting_the_checkpoint_recorded(tmp_path, recorded, expected):
  step_dir = tmp_path / "run" / "checkpoint_3"
  (step_dir / "params").mkdir(parents=True)
  (step_dir / "metadata").mkdir()
  metadata = {"step": 3} if recorded is None else {"step": 3, "add_eos_to_inputs": recorded}
  (step_dir / "metadata" / "metadata").write_text(json.dumps(metadata))
  assert pretrained.inputs_end_with_eos(str(tmp_path / "run")) is expected
  assert pretrained.inputs_end_with_eos(str(step_dir)) is expected


def test_hf_folders_get_inputs_without_eos(model_dir):
  assert pretrained.inputs_end_with_eos(model_dir[0]) is False


def test_infer_reports_bad_input_lines(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"inputs": "ok"}\n{"text": "no inputs"}\n')
  with pytest.raises(UserError, match=r"bad.jsonl:2: expected an object with an 'inputs'"):
    infer_lib.read_inputs(str(bad))
