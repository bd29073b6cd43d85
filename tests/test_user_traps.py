"""Traps a user walking through the README fell into: each check fails on the code before its fix."""
import glob
import logging
import os
import re
import sys

import gin
import pytest

import mixtures  # noqa: F401  (registers the demo tasks)
from xmtf_jax.cli import configurables, gin_flags
from xmtf_jax.errors import UserError
from xmtf_jax.model.config import T5Config
from xmtf_jax.train import run_checks


@pytest.fixture(autouse=True)
def fresh_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_finetune_gin_keeps_the_model_files_vocab_size():
  """data_defaults.gin (included by finetune.gin) used to reset VOCAB_SIZE to mT5's 250112."""
  gin_flags.parse_gin(["--gin_file=gin/models/mt5_tiny.gin", "--gin_file=gin/runs/finetune.gin",
                       "--gin.MODEL_DIR='/tmp/x'", "--gin.MIXTURE_OR_TASK_NAME='demo'"])
  assert configurables.T5Config().vocab_size == 256


def test_vocabulary_larger_than_the_embedding_is_an_error():
  with pytest.raises(ValueError, match=r"has 2000 ids but the model's embedding only 1024.*VOCAB_SIZE=2048"):
    run_checks.task_features("demo", T5Config(vocab_size=1024), fresh_model=True)


def test_a_much_larger_fresh_embedding_is_reported(caplog):
  with caplog.at_level(logging.WARNING):
    features = run_checks.task_features("demo", T5Config(vocab_size=250112), fresh_model=True)
  assert "VOCAB_SIZE=250112" in caplog.text and "--gin.VOCAB_SIZE=2048" in caplog.text
  assert features.vocabulary_path.endswith("data/demo/sentencepiece.model")
  caplog.clear()
  with caplog.at_level(logging.WARNING):  # a pretrained model keeps its embedding: no warning
    run_checks.task_features("demo", T5Config(vocab_size=250112), fresh_model=False)
    run_checks.task_features("demo", T5Config(vocab_size=2048), fresh_model=True)
  assert "VOCAB_SIZE" not in caplog.text


def test_a_misspelt_macro_is_an_error_with_a_suggestion():
  with pytest.raises(UserError, match=r"--gin.TRAIN_STEP: no gin file given defines the macro "
                                       r"TRAIN_STEP.*Did you mean TRAIN_STEPS"):
    gin_flags.parse_gin(["--gin_file=gin/runs/demo.gin", "--gin.TRAIN_STEP=10"])


def test_known_macros_and_configurable_bindings_still_work():
  gin_flags.parse_gin(["--gin_file=gin/runs/demo.gin", "--gin.TRAIN_STEPS=7",
                       "--gin.TrainConfig.log_period=3"])
  config = configurables.TrainConfig()
  assert (config.train_steps, config.log_period) == (7, 3)


def test_a_mixture_typo_leaves_no_model_dir_behind(tmp_path):
  from xmtf_jax.cli import train
  model_dir = tmp_path / "run"
  with pytest.raises(ValueError, match=r"no seqio task or mixture named 'dmeo'; did you mean \['demo'"):
    train.main(["--gin_file=gin/runs/demo.gin", f"--gin.MODEL_DIR='{model_dir}'",
                "--gin.MIXTURE_OR_TASK_NAME='dmeo'"])
  assert not model_dir.exists()


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A command the docs tell users to run: `tool --flag` at the start of a line, code span or parenthesis.
_DOC_COMMAND = re.compile(r"(?:^|[`(])\s*([a-z][\w-]*) --[a-z]", re.MULTILINE)
_COMES_WITH_THE_VENV = {"python", "python3", "make", "pip"}


def test_every_tool_the_docs_run_is_pinned_and_installed():
  """README told users to run `tensorboard --logdir`, which requirements.txt did not install."""
  docs = [os.path.join(REPO_ROOT, "README.md")] + glob.glob(os.path.join(REPO_ROOT, "docs", "*.md"))
  tools = set()
  for path in docs:
    tools |= set(_DOC_COMMAND.findall(open(path, encoding="utf-8").read())) - _COMES_WITH_THE_VENV
  assert "tensorboard" in tools
  with open(os.path.join(REPO_ROOT, "requirements.txt")) as f:
    pinned = {line.split("==")[0].strip().lower() for line in f if "==" in line and not line.startswith("#")}
  bin_dir = os.path.dirname(sys.executable)
  for tool in sorted(tools):
    assert tool in pinned, f"the docs run `{tool}`, which requirements.txt does not pin"
    assert os.path.exists(os.path.join(bin_dir, tool)), f"`{tool}` is not installed in {bin_dir}"


def test_add_jsonl_task_takes_metric_fns_and_a_postprocess_fn(tmp_path):
  """add_jsonl_task had no way to give a task its metrics or postprocessing (seqio's Task has both)."""
  import seqio
  from tests import data_fixtures
  from xmtf_jax.data import tasks
  data_fixtures.write_jsonl(str(tmp_path / "dev.jsonl"), [{"inputs": "Is it?", "targets": " Yes "}])

  def exact_match(targets, predictions):
    return {"exact_match": 100.0 * sum(t == p for t, p in zip(targets, predictions)) / len(targets)}

  def mean_score(targets, scores):
    return {"mean_score": float(sum(scores)) / len(scores)}

  tasks.add_jsonl_task(
      "trap_metrics_task", {"validation": [str(tmp_path / "dev.jsonl")]},
      vocab=tasks.vocabulary(mixtures.demo.DEMO_VOCABULARY_PATH), metric_fns=[exact_match, mean_score],
      postprocess_fn=lambda text, example=None, is_target=False: text.strip().lower(), overwrite=True)
  task = seqio.get_mixture_or_task("trap_metrics_task")
  assert list(task.predict_metric_fns) == [exact_match]
  assert list(task.score_metric_fns) == [mean_score]
  assert task.postprocess_fn(" Yes ", example={}, is_target=True) == "yes"
  example = next(iter(task.get_dataset(None, split="validation", shuffle=False).as_numpy_iterator()))
  assert example["targets_pretokenized"] == b" Yes "


USER_TASKS = '''
import mixtures
mixtures.add_jsonl_task("trap_run_vocab", {"validation": [%r]}, vocab=mixtures.run_vocabulary(),
                        overwrite=True)
mixtures.add_mixture("trap_run_vocab_plus_demo", [("trap_run_vocab", 1.0), ("demo_en", 1.0)],
                     overwrite=True)
'''


def test_a_task_defined_at_import_follows_the_runs_vocabulary_path(tmp_path, monkeypatch,
                                                                    data_spm_path):
  """A user's module named its vocabulary file at import, before gin was parsed, so
  --gin.VOCABULARY_PATH did not reach its tasks: `mixtures.run_vocabulary()` is looked up at use."""
  import importlib
  import seqio
  from tests import data_fixtures
  from xmtf_jax.cli import runtime
  from xmtf_jax.data import tasks
  text = "Translate to English: Je t'aime."
  data_fixtures.write_jsonl(str(tmp_path / "dev.jsonl"), [{"inputs": text, "targets": "I love you."}])
  (tmp_path / "trap_user_tasks.py").write_text(USER_TASKS % str(tmp_path / "dev.jsonl"))
  monkeypatch.syspath_prepend(str(tmp_path))
  importlib.import_module("trap_user_tasks")  # what `import trap_user_tasks` in a gin file does

  demo_vocab, tiny_vocab = tasks.vocabulary(mixtures.demo.DEMO_VOCABULARY_PATH), tasks.vocabulary(data_spm_path)
  assert demo_vocab.encode(text) != tiny_vocab.encode(text)
  for vocab_path, expected in ((data_spm_path, tiny_vocab), ("data/demo/sentencepiece.model", demo_vocab)):
    gin.clear_config()
    gin_flags.parse_gin(["--gin_file=gin/runs/demo.gin", f"--gin.VOCABULARY_PATH='{vocab_path}'"])
    runtime.register_tasks("trap_run_vocab")
    task = seqio.get_mixture_or_task("trap_run_vocab")
    vocab = task.output_features["inputs"].vocabulary
    assert vocab == expected and vocab.vocab_size == expected.vocab_size
    assert vocab.sentencepiece_model_file == expected.sentencepiece_model_file
    example = next(iter(task.get_dataset(None, split="validation", shuffle=False).as_numpy_iterator()))
    assert list(example["inputs"]) == expected.encode(text), vocab_path
  # With the demo's vocabulary the task mixes with the demo's tasks (seqio: same vocabulary).
  mixture = seqio.get_mixture_or_task("trap_run_vocab_plus_demo")
  assert next(iter(mixture.get_dataset(None, split="validation", shuffle=False)))
