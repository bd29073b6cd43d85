"""End-to-end training runs of the tiny model on the bundled demo data (task `demo_en`).

Runs go through `python -m xmtf_jax.train` in subprocesses where the behaviour needs one (signals,
several processes): a run stopped by SIGTERM and one killed by SIGKILL after a completed checkpoint
resume to the same per-step losses as an uninterrupted run; a run saved by two processes with 4
devices each and continued by one with 8 matches one process with 8 devices. A
non-finite loss stops the run keeping the last good checkpoint; a damaged latest checkpoint is
skipped for the one before it.
"""
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

import mixtures  # noqa: F401  (registers the demo tasks)

from xmtf_jax.train import checkpoints
from xmtf_jax.train import losses
from xmtf_jax.train import optim
from xmtf_jax.train import pretrained
from xmtf_jax.parallel import partitioning
from xmtf_jax.train import reporting
from xmtf_jax.train import loop as training
from xmtf_jax.model.config import T5Config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_STEPS = 12

# The tiny model with one layer per side (faster to compile), dropout on (its masks must resume too),
# 8 devices as data 4 x model 2; the indexed input pipeline (its global batches do not depend on the
# number of processes).
RUN_GIN = [
    "--gin_file=gin/models/mt5_tiny.gin", "--gin_file=gin/runs/finetune.gin",
    "--gin_file=gin/mixtures/demo.gin", "--gin_file=gin/partitioning/model_parallel_2.gin",
    "--gin.MIXTURE_OR_TASK_NAME='demo_en'", f"--gin.TRAIN_STEPS={TRAIN_STEPS}",
    "--gin.BATCH_SIZE=16", "--gin.CHECKPOINT_PERIOD=4", "--gin.EVAL_BATCHES=0",
    "--gin.LOG_PERIOD=4", "--gin.DROPOUT_RATE=0.1", "--gin.LOSS_NORMALIZATION='per_target_token'",
    "--gin.T5Config.num_encoder_layers=1",
    "--gin.T5Config.num_decoder_layers=1",
]


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
  """Runs of the same program share compiled executables (as restarts of a real run would)."""
  return str(tmp_path_factory.mktemp("jax_cache"))


def run_train(model_dir, cache, extra=(), devices=8, process=None, check=True, wait=True, base=RUN_GIN):
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
         "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": cache,
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "PYTHONPATH": REPO_ROOT}
  command = [sys.executable, "-m", "xmtf_jax.train", *base, f"--gin.MODEL_DIR='{model_dir}'",
             *extra]
  if process is not None:
    address, index, count = process
    command += [f"--coordinator_address={address}", f"--num_processes={count}",
                f"--process_id={index}"]
  proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  if not wait:
    return proc
  output, _ = proc.communicate(timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f"exit {proc.returncode}:\n{output[-5000:]}")
  return proc.returncode, output


def train_losses(model_dir):
  return {r["step"]: r["loss"] for r in reporting.read_metrics(model_dir, "train")}


def signal_gin(tmp_path, signals, wait_for_checkpoint=None):
  """A gin file adding the test hook that sends `signals` ({step: name}) to the run itself."""
  path = tmp_path / "signals.gin"
  path.write_text("import tests.train_hooks\n"
                  "TrainConfig.eval_hook_factories = [@signal_self]\n"
                  "EVAL_PERIOD = 1\n"
                  f"signal_self.signals = {signals!r}\n"
                  f"signal_self.wait_for_checkpoint = {wait_for_checkpoint!r}\n")
  return f"--gin_file={path}"


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, compilation_cache):
  model_dir = str(tmp_path_factory.mktemp("reference"))
  _, output = run_train(model_dir, compilation_cache)
  return model_dir, output


def test_uninterrupted_run_writes_everything(reference_run):
  model_dir, output = reference_run
  losses_by_step = train_losses(model_dir)
  assert sorted(losses_by_step) == list(range(1, TRAIN_STEPS + 1))
  assert losses_by_step[TRAIN_STEPS] < losses_by_step[1]
  assert checkpoints.list_steps(model_dir) == [4, 8, 12]  # KEEP_CHECKPOINTS = 3
  metadata = checkpoints.read_metadata(model_dir)
  assert metadata["step"] == TRAIN_STEPS and metadata["t5_config"]["num_encoder_layers"] == 1
  assert metadata["t5_config"]["family"] == "mt5"
  assert metadata["vocabulary_path"].endswith("data/demo/sentencepiece.model")
  assert metadata["add_eos_to_inputs"] is False  # the demo task's inputs (ADD_EOS_TO_INPUTS)
  assert "LOSS_NORMALIZATION = 'per_target_token'" in metadata["gin_config"]
  assert "LossConfig.normalization = %LOSS_NORMALIZATION" in metadata["gin_config"]
  position = os.path.join(checkpoints.step_directory(model_dir, 12), "input_position",
                          "process_00000_of_00001.json")
  with open(position) as f:
    state = json.load(f)  # the indexed pipeline: examples consumed by each of the 16 packed rows
  consumed = [n for value, count in state["positions"] for n in [value] * count]
  assert state["pipeline"] == "indexed" and len(consumed) == 16, state
  assert all(n >= 12 for n in consumed)  # each row took at least one example per step
  assert len(json.dumps(state)) < 800  # a few integers per row, whatever the step
  assert os.path.exists(os.path.join(model_dir, "config.gin"))
  assert os.path.getsize(os.path.join(model_dir, reporting.LOSS_CURVE_FILE)) > 1000
  assert any(name.startswith("events.out.tfevents")
             for name in os.listdir(os.path.join(model_dir, "train")))
  assert "step  4/12  loss " in output and "MFU n/a  ETA " in output
  assert f"finished at step {TRAIN_STEPS}" in output


def test_sigterm_and_sigkill_then_resume_give_the_same_losses(reference_run, compilation_cache,
                                                              tmp_path):
  reference = train_losses(reference_run[0])
  model_dir = str(tmp_path / "run")
  # LOG_PERIOD 1: TensorBoard gets every step, so re-done steps would show there twice.
  hooks = [signal_gin(tmp_path, {2: "SIGKILL", 5: "SIGTERM", 10: "SIGKILL"}, {10: 8}),
           "--gin.LOG_PERIOD=1"]

  # SIGKILL at step 2, before any checkpoint: the rerun starts from scratch, and metrics.jsonl keeps
  # nothing of the killed run.
  code, output = run_train(model_dir, compilation_cache, hooks, check=False)
  assert code == -signal.SIGKILL and not checkpoints.list_steps(model_dir), output[-3000:]
  assert [r["step"] for r in reporting.read_metrics(model_dir, "train")] == [1, 2]

  # SIGTERM after step 5: the run finishes step 6, saves it and exits 0.
  code, output = run_train(model_dir, compilation_cache, hooks)
  assert "SIGTERM received" in output and "stopped at step 6" in output, output[-3000:]
  assert checkpoints.list_steps(model_dir)[-1] == 6
  assert [r["step"] for r in reporting.read_metrics(model_dir, "train")] == list(range(1, 7))

  # Resumed at 6; killed with SIGKILL at step 10, after checkpoint 8 was committed.
  code, output = run_train(model_dir, compilation_cache, hooks, check=False)
  assert code == -signal.SIGKILL, output[-3000:]
  assert "resumed from" in output and checkpoints.list_steps(model_dir)[-1] == 8

  # Resumed at 8 (steps 9-10 of the killed run are dropped from metrics.jsonl) to the end.
  run_train(model_dir, compilation_cache, hooks)
  resumed = train_losses(model_dir)
  steps = [r["step"] for r in reporting.read_metrics(model_dir, "train")]
  assert steps == list(range(1, TRAIN_STEPS + 1))  # each once, in order
  # TensorBoard too: the killed runs' steps (2; 9 and 10) are hidden, the re-done ones shown once.
  accumulator = event_accumulator.EventAccumulator(os.path.join(model_dir, "train"))
  board = [(e.step, e.value) for e in accumulator.Reload().Scalars("loss")]
  assert [s for s, _ in board] == sorted({s for s, _ in board}) and {10, 12} <= {s for s, _ in board}
  np.testing.assert_allclose([v for _, v in board], [resumed[s] for s, _ in board], rtol=1e-6)
  assert sorted(resumed) == sorted(reference)
  np.testing.assert_allclose([resumed[s] for s in sorted(resumed)],
                             [reference[s] for s in sorted(reference)], rtol=1e-6, atol=1e-7)


def test_damaged_latest_checkpoint_resumes_from_the_previous_one(reference_run, compilation_cache,
                                                                 tmp_path):
  """A file missing inside the latest checkpoint's params/: the rerun says in one line which step it
  skipped and why, resumes from the step before (params and data position of that step), keeps the
  damaged folder under another name and saves that step again; the losses are the reference's."""
  model_dir = str(tmp_path / "run")
  shutil.copytree(reference_run[0], model_dir)
  data_dir = os.path.join(checkpoints.step_directory(model_dir, TRAIN_STEPS), "params", "d")
  removed = os.listdir(data_dir)
  for name in removed:
    os.remove(os.path.join(data_dir, name))
  assert removed

  _, output = run_train(model_dir, compilation_cache, ["--gin.TRAIN_STEPS=14"])
  lines = [l for l in output.splitlines() if "could not be restored" in l]
  assert len(lines) == 1, output[-5000:]
  assert f"checkpoint_{TRAIN_STEPS} could not be restored (params: NOT_FOUND" in lines[0]
  assert "params/d/" in lines[0] and "; resuming from checkpoint_8 " in lines[0], lines[0]
  assert "resumed from " + checkpoints.step_directory(model_dir, 8) in output
  kept = [n for n in os.listdir(model_dir) if n.startswith(f"checkpoint_{TRAIN_STEPS}.damaged-")]
  assert len(kept) == 1 and kept[0] in lines[0]
  assert not os.listdir(os.path.join(model_dir, kept[0], "params", "d"))  # left as it was found
  assert checkpoints.list_steps(model_dir) == [8, TRAIN_STEPS, 14]  # step 12 saved again
  reference = train_losses(reference_run[0])
  resumed = train_losses(model_dir)
  assert [r["step"] for r in reporting.read_metrics(model_dir, "train")] == list(range(1, 15))
  np.testing.assert_allclose([resumed[s] for s in sorted(reference)],
                             [reference[s] for s in sorted(reference)], rtol=1e-6, atol=1e-7)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_processes(model_dir, cache, count, extra=()):
  if count == 1:
    return run_train(model_dir, cache, extra)
  address = f"127.0.0.1:{_free_port()}"
  procs = [run_train(model_dir, cache, extra, devices=8 // count, process=(address, i, count),
                     wait=False) for i in range(count)]
  for proc in procs:
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-5000:]


def test_resume_on_another_number_of_processes(reference_run, compilation_cache, tmp_path):
  """Saved by 2 processes, continued by 1: the per-step losses of the 1-process reference run (so 2
  processes x 4 devices = 1 x 8, and the data position moves between counts; 1 -> 2 is checked
  batch for batch in test_indexed_pipeline.py)."""
  model_dir = str(tmp_path / "run")
  for count, steps in [(2, 8), (1, TRAIN_STEPS)]:
    run_processes(model_dir, compilation_cache, count, [f"--gin.TRAIN_STEPS={steps}"])
    position_dir = os.path.join(checkpoints.step_directory(model_dir, steps), "input_position")
    assert len([n for n in os.listdir(position_dir) if n.startswith("process_")]) == count
  assert checkpoints.list_steps(model_dir) == [4, 8, 12]  # orbax committed each one once
  reference = train_losses(reference_run[0])
  resumed = train_losses(model_dir)
  assert sorted(resumed) == sorted(reference)
  np.testing.assert_allclose([resumed[s] for s in sorted(resumed)],
                             [reference[s] for s in sorted(reference)], rtol=1e-5, atol=1e-6)


def _tiny_train_config(model_dir, **changes):
  settings = dict(model_dir=model_dir, mixture_or_task_name="demo_en",
                  task_feature_lengths={"inputs": 32, "targets": 16}, train_steps=6, batch_size=8,
                  use_packing=True, checkpoint_period=1, eval_batches=0, log_period=1)
  settings.update(changes)
  return training.TrainConfig(**settings)


TINY = T5Config(vocab_size=2048, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_encoder_layers=1,
                num_decoder_layers=1, dropout_rate=0.0)


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
  model_dir = str(tmp_path / "nan")
  # A huge step blows the parameters up after the first update: step 2's loss is not finite.
  with pytest.raises(training.NonFiniteLossError, match=r"step 2: non-finite loss=") as error:
    training.train(_tiny_train_config(model_dir), TINY, partitioning.PartitioningConfig(),
                   optim.OptimizerConfig(learning_rate=1e15), losses.LossConfig())
  assert "checkpoint_1" in str(error.value)
  assert checkpoints.list_steps(model_dir) == [1]
  assert [r["step"] for r in reporting.read_metrics(model_dir, "train")] == [1]
  _, params = pretrained.load_params(model_dir)
  import jax
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_finished_run_says_so(reference_run, caplog):
  model_dir = str(reference_run[0])
  copy = model_dir + "_copy"
  shutil.copytree(model_dir, copy)
  config = _tiny_train_config(copy, train_steps=TRAIN_STEPS, batch_size=16, use_packing=True,
                              num_data_shards=2)
  model_config = T5Config(vocab_size=2048, d_model=64, d_kv=16, d_ff=128, num_heads=4,
                          num_encoder_layers=1, num_decoder_layers=1)
  with caplog.at_level("INFO"):
    result = training.train(config, model_config, partitioning.PartitioningConfig(num_partitions=2))
  assert result.status == "already_done" and result.step == TRAIN_STEPS
  assert "nothing to train" in caplog.text


def test_validation_loss_hook_matches_a_hand_computation():
  import jax
  from xmtf_jax.train import hooks as eval_hooks
  from xmtf_jax.data import batch_source, source_factory
  from xmtf_jax.model.encoder_decoder import EncoderDecoderModel
  mesh = partitioning.make_mesh(1)
  model = EncoderDecoderModel(TINY, mesh)
  params = model.init_params(jax.random.key(0, impl="rbg"))
  lengths = {"inputs": 32, "targets": 16}
  context = eval_hooks.EvalContext(model=model, model_dir="", vocabulary_path=None,
                                   mixture_or_task_name="demo_en", task_feature_lengths=lengths,
                                   batch_size=8, use_packing=False, num_data_shards=1)
  hook = eval_hooks.validation_loss_factory("validation", 2, losses.LossConfig())(context)
  metrics = hook(0, params)
  assert hook(1, params) == metrics  # the next evaluation reads the same batches again
  # By hand: the same two batches (the run's pipeline, one pass), log-softmax of the model's logits
  # at the real target tokens.
  batches = source_factory.make_batch_source(
      batch_source.SourceConfig("demo_en", lengths, 8), "validation", single_pass=True)
  total, count, correct = 0.0, 0.0, 0.0
  for _ in range(2):
    batch = next(batches)
    logits = np.asarray(model.logits(params, batch["encoder_input_tokens"],
                                     batch["decoder_input_tokens"]), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    target_logp = np.take_along_axis(logp, batch["decoder_target_tokens"][..., None], -1)[..., 0]
    weights = batch["decoder_loss_weights"]
    total -= (target_logp * weights).sum()
    count += weights.sum()
    correct += ((logits.argmax(-1) == batch["decoder_target_tokens"]) * weights).sum()
  assert metrics["num_batches"] == 2 and metrics["num_target_tokens"] == count
  assert metrics["loss"] == pytest.approx(total / count, rel=1e-5)
  assert metrics["accuracy"] == pytest.approx(correct / count)


def test_initial_parameters_from_an_hf_folder_or_a_checkpoint(hf_mt5_dir, tmp_path):
  import jax
  from xmtf_jax import hf
  from xmtf_jax.model.encoder_decoder import EncoderDecoderModel
  folder, _ = hf_mt5_dir
  config = hf.read_hf_config(folder)
  model = EncoderDecoderModel(config, partitioning.make_mesh(2))
  expected = jax.device_get(hf.load_hf_folder(folder)[1])
  from_hf = training.initial_params(_tiny_train_config("unused", initial_checkpoint_path=folder), model)
  assert from_hf["decoder"]["logits_dense"]["kernel"].sharding == \
      model.param_shardings()["decoder"]["logits_dense"]["kernel"]
  for a, b in zip(jax.tree.leaves(jax.device_get(from_hf)), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)
  # One of our checkpoints as the starting point (its optimizer state and step are not used).
  checkpointer = checkpoints.Checkpointer(str(tmp_path / "run"), save_period=7)
  checkpointer.save(7, from_hf, {"count": jax.numpy.zeros(())}, {"t5_config": config.to_dict()}, [])
  checkpointer.close()
  from_ours = training.initial_params(
      _tiny_train_config("unused", initial_checkpoint_path=str(tmp_path / "run")), model)
  for a, b in zip(jax.tree.leaves(jax.device_get(from_ours)), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)
  # A model size that does not match the folder is refused, naming the differing fields.
  other = EncoderDecoderModel(config.replace(d_ff=64), partitioning.make_mesh(2))
  with pytest.raises(ValueError, match="d_ff: 48 there vs 64 in gin"):
    training.initial_params(_tiny_train_config("unused", initial_checkpoint_path=folder), other)


def input_pipeline_first_batch():
  from xmtf_jax.data import pipeline
  it = pipeline.make_batch_iterator("demo_en", {"inputs": 64, "targets": 16}, "train", 8, shuffle=False,
                                    seed=0, shard_index=0, num_shards=1, repeat=False)
  yield next(it)


def test_truncation_is_reported_in_the_log_and_metrics(tmp_path, caplog):
  # earlier tests in this process read demo_en at other lengths: the run counts afresh
  list(input_pipeline_first_batch())
  model_dir = str(tmp_path / "cut")
  config = _tiny_train_config(model_dir, task_feature_lengths={"inputs": 2, "targets": 16},
                              train_steps=3, use_packing=False, checkpoint_period=3)
  with caplog.at_level(logging.WARNING):
    training.train(config, TINY, partitioning.PartitioningConfig(), optim.OptimizerConfig(),
                   losses.LossConfig())
  assert "truncation in demo_en" in caplog.text and "inputs 100% cut at 2 tokens" in caplog.text
  data = reporting.read_metrics(model_dir, "data")
  assert data and data[0]["truncation"]["demo_en"]["inputs_truncated_share"] == 1.0
  assert data[0]["truncation"]["demo_en"]["targets_truncated_share"] == 0.0
