"""The batch-source seam and run state with an owner.

A training run with validation during training reports truncation of its training examples only;
both input pipelines offer the same interface (next, shapes, get_state/set_state, stats, close);
settings a pipeline would ignore are errors; the indexed pipeline's single pass reads every example
of a split once; two configurations registered one after the other in one process do not leak.
"""
import json
import os

import numpy as np
import pytest

import mixtures
from tests import data_fixtures
from xmtf_jax.model.config import T5Config
from xmtf_jax.parallel import partitioning
from xmtf_jax.train import checkpoints, losses, optim, reporting
from xmtf_jax.train import loop as training

# The shapes of tests/test_training.py's in-process runs (same compiled programs).
TINY = T5Config(vocab_size=2048, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_encoder_layers=1,
                num_decoder_layers=1, dropout_rate=0.0)
LENGTHS = {"inputs": 32, "targets": 16}


def consumed_examples(model_dir, step):
  """Examples the training source had handed out after `step` batches: the sum over the packed rows
  of the position saved with checkpoint `step` (examples consumed per row)."""
  path = os.path.join(checkpoints.step_directory(model_dir, step), "input_position",
                      "process_00000_of_00001.json")
  with open(path) as f:
    state = json.load(f)
  return sum(value * count for value, count in state["positions"])


def test_training_truncation_counts_training_examples_only(tmp_path):
  """Validation reads the whole demo_en validation split (126 examples) every 2 steps; the "data"
  lines of metrics.jsonl must count the training examples consumed, nothing more."""
  model_dir = str(tmp_path / "run")
  config = training.TrainConfig(
      model_dir=model_dir, mixture_or_task_name="demo_en", task_feature_lengths=LENGTHS,
      train_steps=4, batch_size=8, use_packing=True, checkpoint_period=1, keep_checkpoints=None,
      async_checkpointing=False, eval_period=2, eval_batches=None, log_period=1)
  training.train(config, TINY, partitioning.PartitioningConfig(), optim.OptimizerConfig(),
                 losses.LossConfig())
  evals = reporting.read_metrics(model_dir, "eval")
  assert [e["step"] for e in evals] == [2, 4] and all(e["num_batches"] > 0 for e in evals)
  data = reporting.read_metrics(model_dir, "data")
  assert [d["step"] for d in data] == [2, 3, 4]
  for line in data:
    assert set(line["truncation"]) == {"demo_en"}
    counted = line["truncation"]["demo_en"]["examples"]
    assert counted == consumed_examples(model_dir, line["step"]), line
