"""A tiny BLOOM through the whole system, as one test: trained on the bundled demo mixture with the
BLOOMZ recipe's loss (targets only, per-sequence normalisation) and AdamW, stopped by SIGTERM and
resumed to the same losses bit for bit, its loss checked against a hand computation, evaluated by
rank classification and exported to a folder transformers' `BloomForCausalLM` loads with equal logits.
"""
import json
import os

import jax
import numpy as np
import torch

import mixtures  # noqa: F401  (registers demo_bloom)

from tests.test_training import run_train, signal_gin, train_losses
from xmtf_jax.cli import evaluate as evaluate_lib
from xmtf_jax.cli import export_hf as export_lib
from xmtf_jax.data import batch_source, source_factory
from xmtf_jax.data.bpe_vocabulary import BpeVocabulary
from xmtf_jax.model.bloom_config import BloomConfig
from xmtf_jax.train import checkpoints, losses, optim, pretrained, step_assembly

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(REPO_ROOT, "data", "demo_bpe", "tokenizer.json")
TRAIN_STEPS = 8
LENGTHS = {"inputs": 40, "targets": 24}

# gin/runs/bloomz_demo.gin made short, on 8 devices as data 4 x model 2, dropout on (its masks must
# resume too).
BLOOM_GIN = [
    "--gin_file=gin/runs/bloomz_demo.gin", "--gin_file=gin/partitioning/model_parallel_2.gin",
    f"--gin.TRAIN_STEPS={TRAIN_STEPS}", "--gin.BATCH_SIZE=16", "--gin.CHECKPOINT_PERIOD=4",
    "--gin.KEEP_CHECKPOINTS=3", "--gin.EVAL_BATCHES=0", "--gin.LOG_PERIOD=4",
    "--gin.TrainConfig.compilation_cache_dir=None",
]


def one_step_state(model_dir, step):
  """Params of `step` of the run, as our model and float32 numpy."""
  model, params = pretrained.load_pretrained(checkpoints.step_directory(model_dir, step), dropout_rate=0.0)
  return model, params


def hand_loss(logits: np.ndarray, batch: dict) -> float:
  """BLOOMZ's --norm-target-loss by hand: per packed example, the mean cross-entropy of its target
  tokens (EOS included, input positions excluded); the mean of those over the examples."""
  logits = logits.astype(np.float64)
  log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  per_example = []
  for row in range(logits.shape[0]):
    for segment in set(batch["decoder_segment_ids"][row].tolist()) - {0}:
      at = (batch["decoder_segment_ids"][row] == segment) & (batch["decoder_loss_weights"][row] > 0)
      targets = batch["decoder_target_tokens"][row][at]
      per_example.append(-np.mean(log_probs[row][at, targets]))
  return float(np.mean(per_example))


def test_tiny_bloom_trains_resumes_evaluates_and_exports(tmp_path):
  cache = str(tmp_path / "jax_cache")

  # 1. Uninterrupted: the loss falls.
  reference_dir = str(tmp_path / "reference")
  run_train(reference_dir, cache, base=BLOOM_GIN)
  reference = train_losses(reference_dir)
  assert sorted(reference) == list(range(1, TRAIN_STEPS + 1))
  assert reference[TRAIN_STEPS] < reference[1] - 0.5, reference
  metadata = checkpoints.read_metadata(reference_dir)
  assert metadata["t5_config"]["family"] == "bloom"
  assert metadata["vocabulary_path"] == TOKENIZER

  # 2. SIGTERM after step 2: the run saves step 3 and exits 0; the rerun resumes there and
  # reproduces the uninterrupted losses exactly (data position, dropout masks, AdamW state).
  resumed_dir = str(tmp_path / "resumed")
  hooks = [signal_gin(tmp_path, {2: "SIGTERM"}), "--gin.LOG_PERIOD=1"]
  _, output = run_train(resumed_dir, cache, hooks, base=BLOOM_GIN)
  assert "SIGTERM received" in output and "stopped at step 3" in output, output[-3000:]
  _, output = run_train(resumed_dir, cache, ["--gin.LOG_PERIOD=1"], base=BLOOM_GIN)
  assert "resumed from" in output, output[-3000:]
  assert train_losses(resumed_dir) == reference

  # 3. The batches: input positions carry no weight, every example's targets (EOS included) do; the
  # train step's loss equals the hand computation on a real batch of the run.
  source = source_factory.make_batch_source(batch_source.SourceConfig(
      "demo_bloom", LENGTHS, 4, use_packing=True, feature_layout="decoder_only"), "train")
  batch = next(source)
  source.close()
  vocabulary = BpeVocabulary(TOKENIZER)
  for row in range(4):
    segments = batch["decoder_segment_ids"][row]
    for segment in set(segments.tolist()) - {0}:
      at = segments == segment
      weights = batch["decoder_loss_weights"][row][at]
      targets = batch["decoder_target_tokens"][row][at]
      first_target = int(np.argmax(weights > 0))
      assert weights[first_target:].all() and not weights[:first_target].any()
      assert targets[-1] == vocabulary.eos_id  # the last target is EOS, and it has weight
  model, params = one_step_state(reference_dir, TRAIN_STEPS)
  assembly = step_assembly.assemble_step(
      model.config.replace(attention_dropout_rate=0.0), optimizer_config=optim.OptimizerConfig(name="adamw"),
      loss_config=losses.LossConfig("average_per_sequence", z_loss=0.0), devices=jax.devices()[:1])
  _, metrics = assembly.train_step(assembly.init_state(params), model.shard_batch(batch))  # loss before the update
  logits = np.asarray(model.logits(params, batch["decoder_input_tokens"], batch["decoder_segment_ids"]))
  np.testing.assert_allclose(float(metrics["loss"]), hand_loss(logits, batch), rtol=1e-5)

  # 4. Export: transformers loads the folder (model and tokenizer) with our logits.
  export_dir = tmp_path / "hf"
  assert export_lib.main([f"--checkpoint_dir={reference_dir}", f"--output_dir={export_dir}"]) == 0
  from transformers import AutoModelForCausalLM, AutoTokenizer
  hf_model = AutoModelForCausalLM.from_pretrained(export_dir).eval()
  hf_tokenizer = AutoTokenizer.from_pretrained(export_dir)
  text = "Translate to English: le chat"
  ids = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
  assert ids == vocabulary.encode(text)
  with torch.no_grad():
    hf_logits = hf_model(torch.tensor([ids])).logits.numpy()
  ours = np.asarray(model.logits(params, np.asarray([ids], np.int32)))
  np.testing.assert_allclose(ours, hf_logits, atol=1e-4, rtol=1e-4)
  assert isinstance(model.config, BloomConfig)

  # 5. Zero-shot rank classification of the checkpoint as BLOOMZ was evaluated (the demo's held-out
  # task is registered with the demo's SentencePiece: the model's own BPE must tokenize it): the
  # number correct equals HF's under t-zero's protocol (input without specials, " " + choice without
  # EOS, summed log-probabilities).
  eval_dir = tmp_path / "eval"
  task = "demo_heldout_language_id_en_identify"
  evaluate_lib.main([
      f"--gin.evaluate.model_path='{reference_dir}'", f"--gin.evaluate.output_dir='{eval_dir}'",
      f"--gin.evaluate.tasks=['{task}']", "--gin.evaluate.batch_size=4",
      "--gin.evaluate.max_examples_per_task=6"])
  row, = json.loads((eval_dir / "results.json").read_text())["prompts"]
  with open(os.path.join(REPO_ROOT, "data", "demo_heldout", "en",
                         "xp3_language_id_en_validation_identify.jsonl")) as f:
    records = [json.loads(line) for line in f][:6]
  correct = 0
  for record in records:
    scores = []
    for choice in record["answer_choices"]:
      prompt, answer = vocabulary.encode(record["inputs"]), vocabulary.encode(" " + choice)
      with torch.no_grad():
        log_probs = torch.log_softmax(hf_model(torch.tensor([prompt + answer])).logits.double(), -1)[0]
      scores.append(sum(log_probs[len(prompt) - 1 + i, t].item() for i, t in enumerate(answer)))
    correct += record["answer_choices"][int(np.argmax(scores))] == record["targets"]
  assert (row["num_correct"], row["num_examples"]) == (correct, 6)
