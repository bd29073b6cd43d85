"""Train the tiny demo model a few steps with the zero-shot hook, then evaluate its checkpoint with
`xmtf_jax.evaluate`: the hook's numbers at the last step equal the stand-alone evaluation's. Then
`xmtf_jax.infer` decodes a task with the checkpoint (its vocabulary comes from the metadata)."""
import json
import os
import subprocess
import sys

import gin

from xmtf_jax.cli import evaluate as evaluate_lib
from xmtf_jax.cli import infer as infer_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ["demo_heldout_number_compare_en_more", "demo_heldout_number_compare_es_more",
         "demo_heldout_language_id_ru_identify"]


def test_hook_during_training_equals_evaluation_of_the_checkpoint(tmp_path):
  model_dir = tmp_path / "run"
  env = dict(os.environ, PYTHONPATH=REPO_ROOT, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one CPU device is enough (and faster) for this run
  subprocess.run(
      [sys.executable, "-m", "xmtf_jax.train", "--gin_file=gin/runs/demo.gin",
       "--gin_file=gin/eval/during_training.gin", f"--gin.MODEL_DIR='{model_dir}'",
       "--gin.TRAIN_STEPS=4", "--gin.EVAL_PERIOD=2", "--gin.CHECKPOINT_PERIOD=4", "--gin.BATCH_SIZE=8",
       "--gin.EVAL_BATCHES=0", f"--gin.ZERO_SHOT_TASKS={TASKS}",
       "--gin.zero_shot_eval_hook.max_examples_per_task=8", "--gin.TrainConfig.compilation_cache_dir=None"],
      cwd=REPO_ROOT, env=env, check=True, capture_output=True, timeout=600)
  with open(model_dir / "metrics.jsonl") as f:
    evals = [r for r in map(json.loads, f) if r.get("kind") == "eval" and r.get("name") == "zero_shot"]
  assert [r["step"] for r in evals] == [2, 4]
  last = evals[-1]
  assert {"number_compare/median_accuracy", "language_id/median_accuracy"} <= set(last)

  gin.clear_config()
  try:
    evaluate_lib.main([f"--gin.evaluate.model_path='{model_dir}'",
                       f"--gin.evaluate.output_dir='{tmp_path / 'eval'}'", f"--gin.evaluate.tasks={TASKS}",
                       "--gin.evaluate.batch_size=8", "--gin.evaluate.max_examples_per_task=8",
                       "--gin.evaluate.plots=False"])
  finally:
    gin.clear_config()
  document = json.loads((tmp_path / "eval" / "results.json").read_text())
  for row in document["prompts"]:
    assert last[f"{row['task']}/accuracy"] == row["accuracy"], row["task"]
  assert last["number_compare/median_accuracy"] == document["datasets"]["number_compare"]["mean_of_medians"]

  gin.clear_config()
  try:
    infer_lib.main(["--gin_file=gin/infer/greedy.gin", f"--gin.MODEL_PATH='{model_dir}'",
                    "--gin.infer.task='demo_en'", "--gin.infer.max_examples=3",
                    "--gin.MAX_DECODE_LENGTH=4", f"--gin.infer.output_file='{tmp_path / 'p.jsonl'}'"])
  finally:
    gin.clear_config()
  rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
  assert len(rows) == 3 and all(set(r) == {"inputs", "prediction", "targets"} for r in rows)
