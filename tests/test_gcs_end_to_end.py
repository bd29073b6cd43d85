"""Every user path on gs://, end to end, against a local GCS emulator (tests/gcs_emulator.py).

COMMANDS is the script docs/gcs.md shows (a test checks that it does, word for word): train with
MODEL_DIR, INITIAL_CHECKPOINT_PATH (an HF folder), XP3_DATA_DIR, the vocabulary and the compilation
cache in the bucket; evaluate, infer and export with their inputs and outputs there too. The test runs
it as written, with a SIGTERM in the middle of training (a test hook) and a resume, then runs the same
training with the bucket replaced by a local folder: the per-step losses are equal, the exported
folder (downloaded) gives the checkpoint's logits in transformers, and the working directory of the
commands stays empty (no `gs:` folder, no stray file).
"""
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

from tests import data_fixtures
from xmtf_jax import paths
from xmtf_jax.train import checkpoints, reporting

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLACEHOLDER = "gs://BUCKET"

# The commands of docs/gcs.md ("One command with every path on gs://"); BUCKET is the bucket's name.
COMMANDS = """\
python -m xmtf_jax.train \\
  --gin_file=gin/models/mt5_tiny.gin --gin_file=gin/runs/finetune.gin --gin_file=gin/mixtures/xp3.gin \\
  --gin.MODEL_DIR="'gs://BUCKET/runs/mt0-tiny'" \\
  --gin.INITIAL_CHECKPOINT_PATH="'gs://BUCKET/models/mt5-tiny'" \\
  --gin.XP3_DATA_DIR="'gs://BUCKET/xP3'" \\
  --gin.VOCABULARY_PATH="'gs://BUCKET/models/mt5-tiny/spiece.model'" --gin.VOCAB_SIZE=512 \\
  --gin.TrainConfig.compilation_cache_dir="'gs://BUCKET/jax-cache'" \\
  --gin.TRAIN_STEPS=6 --gin.CHECKPOINT_PERIOD=2 --gin.LOG_PERIOD=2 --gin.EVAL_BATCHES=0 \\
  --gin.BATCH_SIZE=8 --gin.TASK_FEATURE_LENGTHS="{'inputs': 32, 'targets': 16}"

python -m xmtf_jax.evaluate --gin_file=gin/eval/heldout_en.gin \\
  --gin.MODEL_PATH="'gs://BUCKET/runs/mt0-tiny'" --gin.OUTPUT_DIR="'gs://BUCKET/eval/mt0-tiny'" \\
  --gin.HELDOUT_DATA_DIR="'gs://BUCKET/heldout'" --gin.PROMPTSOURCE_PATH="'gs://BUCKET/promptsource'" \\
  --gin.HeldoutSuite.prompts="'all'" --gin.HeldoutSuite.datasets="['xwinograd']" \\
  --gin.HeldoutSuite.languages="{'xwinograd': ['en']}" --gin.BATCH_SIZE=8

python -m xmtf_jax.infer --gin_file=gin/infer/greedy.gin \\
  --gin.MODEL_PATH="'gs://BUCKET/runs/mt0-tiny'" \\
  --gin.infer.input_file="'gs://BUCKET/inputs.jsonl'" \\
  --gin.infer.output_file="'gs://BUCKET/predictions/mt0-tiny.jsonl'" \\
  --gin.MAX_DECODE_LENGTH=6 --gin.BATCH_SIZE=2

python -m xmtf_jax.export_hf --checkpoint_dir=gs://BUCKET/runs/mt0-tiny \\
  --output_dir=gs://BUCKET/hf/mt0-tiny
"""

TRAIN_STEPS = 6
# The tiny HF folder matches gin/models/mt5_tiny.gin (INITIAL_CHECKPOINT_PATH must have its shapes).
TINY_MT5 = dict(vocab_size=512, d_model=64, d_kv=16, d_ff=128, num_heads=4, num_layers=2,
                num_decoder_layers=2, relative_attention_num_buckets=32,
                relative_attention_max_distance=128)
XWINOGRAD = [{"sentence": "Ann gave Bea a book because _ was kind.", "option1": "Ann",
              "option2": "Bea", "answer": "1"},
             {"sentence": "The cup fell off the table because _ was tilted.", "option1": "the cup",
              "option2": "the table", "answer": "2"}]


def commands(root: str) -> list[list[str]]:
  """COMMANDS with gs://BUCKET replaced by `root`, each as an argv."""
  text = COMMANDS.replace(PLACEHOLDER, root).replace("\\\n", " ")
  return [shlex.split(line) for line in text.splitlines() if line.strip()]


def run(argv, cwd, extra=(), check=True):
  env = {**os.environ, "PYTHONPATH": REPO_ROOT, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  assert argv[0] == "python"
  proc = subprocess.run([sys.executable, *argv[1:], *extra], cwd=cwd, env=env, text=True,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f"{' '.join(argv[:3])}: exit {proc.returncode}\n{proc.stdout[-6000:]}")
  return proc.stdout


def make_inputs(root: str, tmp_path) -> None:
  """What a user brings, under `root` (a local folder or the bucket): an HF mT5 folder with its
  SentencePiece model, an xP3-layout dataset, held-out data, promptsource templates, infer inputs."""
  from conftest import build_random_hf_mt5
  local = tmp_path / "inputs"
  if not local.exists():
    model = build_random_hf_mt5(seed=5, **TINY_MT5)
    model.save_pretrained(local / "models" / "mt5-tiny")
    data_fixtures.train_tiny_spm(str(local / "models" / "mt5-tiny" / "spiece.model"))
    data_fixtures.make_xp3(str(local / "xP3"))
    data_fixtures.write_jsonl(str(local / "heldout" / "xwinograd" / "en" / "test.jsonl"), XWINOGRAD)
    data_fixtures.write_jsonl(str(local / "inputs.jsonl"),
                              [{"inputs": "Translate to French: the cat sleeps"},
                               {"inputs": "把这句话翻译成英文：猫在垫子上睡觉"}])
  for name in ("models", "xP3", "heldout", "inputs.jsonl"):
    paths.upload(str(local / name), paths.join(root, name))
  paths.upload(os.path.join(REPO_ROOT, "tests", "fixtures", "promptsource"),
               paths.join(root, "promptsource"))


def signal_gin(tmp_path) -> str:
  path = tmp_path / "sigterm.gin"
  path.write_text("import tests.train_hooks\n"
                  "TrainConfig.eval_hook_factories = [@signal_self]\n"
                  "EVAL_PERIOD = 1\n"
                  "signal_self.signals = {3: 'SIGTERM'}\n")
  return f"--gin_file={path}"


def test_docs_show_the_tested_commands():
  with open(os.path.join(REPO_ROOT, "docs", "gcs.md"), encoding="utf-8") as f:
    assert COMMANDS in f.read()


def test_the_paths_layer_on_the_emulator(gcs_bucket, tmp_path):
  root = f"{gcs_bucket}/layer"
  target = paths.join(root, "a", "x.txt")
  paths.write_text(target, "one\n")
  paths.append_text(target, "two\n")
  assert paths.read_text(target) == "one\ntwo\n" and paths.read_range(target, 4, 7) == b"two"
  assert paths.isdir(paths.join(root, "a")) and paths.isfile(target) and paths.getsize(target) == 8
  with paths.open(paths.join(root, "b", "y.jsonl"), "w") as f:
    f.write("{}\n")
  assert paths.listdir(root) == paths.subfolders(root) == ["a", "b"]
  assert paths.glob(f"{root}/*/*.jsonl") == [f"{root}/b/y.jsonl"]
  paths.rename(paths.join(root, "a"), paths.join(root, "c"))
  assert paths.listdir(root) == ["b", "c"] and paths.read_text(f"{root}/c/x.txt") == "one\ntwo\n"
  paths.copy_to_local(root, str(tmp_path / "copy"))
  assert sorted(os.listdir(tmp_path / "copy")) == ["b", "c"]
  paths.rmtree(root)
  assert not paths.exists(root) and not paths.exists(target)
  with pytest.raises(ValueError, match="not supported on buckets"):
    paths.open(target, "a")


def test_every_path_on_gcs_end_to_end(gcs_bucket, tmp_path):
  train, evaluate, infer, export = commands(gcs_bucket)
  workdir = tmp_path / "workdir"  # the commands' working directory: must stay empty
  workdir.mkdir()
  make_inputs(gcs_bucket, tmp_path)
  model_dir = f"{gcs_bucket}/runs/mt0-tiny"

  # Train; SIGTERM after step 3: the run saves step 4 and exits; the same command resumes it.
  output = run(train, workdir, [signal_gin(tmp_path)])
  assert "SIGTERM received" in output and "stopped at step 4" in output, output[-3000:]
  assert checkpoints.list_steps(model_dir) == [2, 4]
  output = run(train, workdir)
  assert "resumed from" in output and f"finished at step {TRAIN_STEPS}" in output, output[-3000:]
  assert checkpoints.list_steps(model_dir) == [2, 4, 6]
  metadata = checkpoints.read_metadata(model_dir)
  assert metadata["vocabulary_path"] == f"{gcs_bucket}/models/mt5-tiny/spiece.model"
  for name in ("config.gin", "metrics.jsonl", reporting.LOSS_CURVE_FILE):
    assert paths.getsize(paths.join(model_dir, name)) > 100, name
  assert any(n.startswith("events.out.tfevents") for n in paths.listdir(paths.join(model_dir, "train")))
  assert paths.listdir(f"{gcs_bucket}/jax-cache")  # the compilation cache lives in the bucket too
  assert paths.exists(f"{gcs_bucket}/xP3/counts.json")  # line counts cached next to the data

  # The same training with every path on local disk: the same losses, step by step.
  local_root = str(tmp_path / "local")
  make_inputs(local_root, tmp_path)
  run(commands(local_root)[0], workdir)
  on_gcs = {r["step"]: r["loss"] for r in reporting.read_metrics(model_dir, "train")}
  local = {r["step"]: r["loss"] for r in reporting.read_metrics(f"{local_root}/runs/mt0-tiny", "train")}
  assert sorted(on_gcs) == sorted(local) == list(range(1, TRAIN_STEPS + 1))
  np.testing.assert_allclose([on_gcs[s] for s in sorted(on_gcs)], [local[s] for s in sorted(local)],
                             rtol=1e-6, atol=1e-7)

  # Evaluate, infer and export with inputs and outputs in the bucket.
  run(evaluate, workdir)
  results = json.loads(paths.read_text(f"{gcs_bucket}/eval/mt0-tiny/results.json"))
  assert sorted(r["num_examples"] for r in results["prompts"]) == [2, 2]
  assert paths.exists(f"{gcs_bucket}/eval/mt0-tiny/xwinograd_accuracy.png")
  run(infer, workdir)
  predictions = paths.read_text(f"{gcs_bucket}/predictions/mt0-tiny.jsonl").splitlines()
  assert [json.loads(p)["inputs"] for p in predictions] == [
      "Translate to French: the cat sleeps", "把这句话翻译成英文：猫在垫子上睡觉"]
  run(export, workdir)
  exported = f"{gcs_bucket}/hf/mt0-tiny"
  assert {"config.json", "model.safetensors", "spiece.model", "README.md"} <= set(paths.listdir(exported))

  # The downloaded folder in transformers gives the logits of the checkpoint read from the bucket.
  import torch
  from transformers import MT5ForConditionalGeneration
  from xmtf_jax.train import pretrained
  download = tmp_path / "download"
  paths.copy_to_local(exported, str(download))
  hf_model = MT5ForConditionalGeneration.from_pretrained(download).eval()
  model, params = pretrained.load_pretrained(model_dir, dropout_rate=0.0)
  inputs = np.array([[5, 17, 33, 260, 1], [9, 8, 7, 6, 1]], np.int32)
  decoder_inputs = np.array([[0, 4, 40, 400], [0, 11, 12, 13]], np.int32)
  ours = np.asarray(model.logits(params, inputs, decoder_inputs), np.float32)
  with torch.no_grad():
    theirs = hf_model(input_ids=torch.tensor(inputs, dtype=torch.long),
                      decoder_input_ids=torch.tensor(decoder_inputs, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4)

  # Nothing was written where the commands ran.
  assert os.listdir(workdir) == []
