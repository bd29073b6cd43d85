"""README "Your own data in 5 steps", run as it is written: the test reads the section's blocks (data
lines, my_tasks.py, my.gin, the data-report and training commands), writes the files the text names
into an empty folder and runs the commands there with `bash`, changing nothing. The package is found
through PYTHONPATH, as `pip install -e .` would give it; `python` is this interpreter.

Also the traps that recipe fell into: a mixture of tasks with different vocabularies (reported by
name before any vocabulary is loaded; seqio compared loaded models, i.e. first downloaded mT5's from
gs:// with a minute of retries, then said only "same output features"); a UserError raised while
tf.data traces (a vocabulary on an unreachable bucket) shown as one paragraph.
"""
import json
import os
import re
import subprocess
import sys

import pytest

import mixtures
from xmtf_jax.data import tasks
from xmtf_jax.data.config import MT5_VOCABULARY_PATH, DataConfig
from xmtf_jax.errors import UserError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "## Your own data in 5 steps"


def recipe_section() -> str:
  with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as f:
    text = f.read()
  assert SECTION in text
  return text.split(SECTION, 1)[1].split("\n## ", 1)[0]


def recipe_blocks() -> list[tuple[str, str]]:
  """(language, text) of each fenced block of the section, the list item's indentation removed."""
  blocks = []
  for indent, language, body in re.findall(r"^( *)```(\w*)\n(.*?)^\1```$", recipe_section(),
                                           re.M | re.S):
    lines = body.splitlines()
    assert all(line.startswith(indent) or not line.strip() for line in lines)
    blocks.append((language, "\n".join(line[len(indent):] for line in lines) + "\n"))
  return blocks


def run_command(command: str, cwd) -> str:
  env = {**os.environ, "PYTHONPATH": REPO_ROOT, "JAX_PLATFORMS": "cpu",
         "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
  env.pop("XLA_FLAGS", None)  # a user's CPU: one device
  proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, text=True,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
  assert proc.returncode == 0, f"{command}\n{proc.stdout[-6000:]}"
  return proc.stdout


def test_the_readme_recipe_runs_as_written(tmp_path):
  section = recipe_section()
  blocks = recipe_blocks()
  assert [language for language, _ in blocks] == ["json", "python", "", "bash", "bash"]
  (_, data), (_, module), (_, gin_text), (_, report), (_, train) = blocks
  # The files, where the text says they go.
  for name in ("my_data/train.jsonl", "my_data/validation.jsonl", "my_tasks.py", "my.gin"):
    assert f"`{name}`" in section
  assert "both `my_data/train.jsonl` and\n   `my_data/validation.jsonl` hold these two lines" in section
  (tmp_path / "my_data").mkdir()
  assert [sorted(json.loads(line)) for line in data.splitlines()] == [["inputs", "targets"]] * 2
  (tmp_path / "my_data" / "train.jsonl").write_text(data)
  (tmp_path / "my_data" / "validation.jsonl").write_text(data)
  (tmp_path / "my_tasks.py").write_text(module)
  (tmp_path / "my.gin").write_text(gin_text)

  output = run_command(report, tmp_path)
  assert "Path not found" not in output  # gin's lookups of `include` outside the repository
  rows = {row["task"]: row for row in
          json.loads((tmp_path / "runs" / "data_report" / "report.json").read_text())["tasks"]}
  assert rows["my_qa"]["examples_read"] == 2 and "demo_en" in rows

  output = run_command(train, tmp_path)
  run_dir = tmp_path / "runs" / "my_qa"
  steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
  assert max(row.get("step", 0) for row in steps) == 3
  assert (run_dir / "checkpoint_3").is_dir()
  assert "training demo_plus_qa from step 0 to 3" in output


def _mixed_with_the_demo(name: str, folder) -> str:
  mixture = f"{name}_with_demo"
  path = str(folder / "train.jsonl")
  tasks.add_jsonl_task(name, {"train": [path]}, vocab=mixtures.run_vocabulary(), overwrite=True)
  tasks.add_mixture(mixture, [("demo", 0.9), (name, 0.1)], overwrite=True)
  return mixture


def test_a_mixture_of_different_vocabularies_is_reported_by_name(monkeypatch, tmp_path):
  def no_download(path):
    raise AssertionError(f"loaded {path}")
  monkeypatch.setattr(tasks.paths, "cached_local_copy", no_download)
  mixture = _mixed_with_the_demo("vocab_trap_qa", tmp_path)
  with pytest.raises(UserError) as raised:
    mixtures.register_for(mixture, DataConfig())  # VOCABULARY_PATH: mT5's (data_defaults.gin)
  message = str(raised.value)
  demo_vocabulary = os.path.join(REPO_ROOT, "data", "demo", "sentencepiece.model")
  assert f"the tasks of mixture '{mixture}' use different vocabularies" in message
  assert f"demo_ar, demo_bn, demo_en and 7 more use {demo_vocabulary};" in message
  assert f"vocab_trap_qa uses {MT5_VOCABULARY_PATH} (the run's VOCABULARY_PATH)" in message
  assert f"--gin.VOCABULARY_PATH=\"'{demo_vocabulary}'\"" in message

  mixtures.register_for(mixture, DataConfig(vocabulary_path="data/demo/sentencepiece.model"))
  assert tasks.get_mixture_or_task(mixture).output_features  # seqio agrees: one vocabulary


def test_one_vocabulary_given_two_ways_is_one():
  """The same file named relative to the repository and absolute is one vocabulary, not a mismatch."""
  vocab = tasks.vocabulary(os.path.join(REPO_ROOT, "data", "demo", "sentencepiece.model"))
  tasks.add_jsonl_task("vocab_same_a", {"train": ["x.jsonl"]}, vocab=vocab, overwrite=True)
  tasks.add_jsonl_task("vocab_same_b", {"train": ["x.jsonl"]},
                       vocab=tasks.RunVocabulary("data/demo/sentencepiece.model"), overwrite=True)
  tasks.add_mixture("vocab_same", [("vocab_same_a", 1.0), ("vocab_same_b", 1.0)], overwrite=True)
  tasks.check_one_vocabulary("vocab_same", tasks.tasks_of(tasks.get_mixture_or_task("vocab_same")))
  tasks.add_jsonl_task("vocab_same_c", {"train": ["x.jsonl"]},
                       vocab=tasks.vocabulary(MT5_VOCABULARY_PATH), overwrite=True)
  tasks.add_mixture("vocab_other", [("vocab_same_a", 1.0), ("vocab_same_c", 1.0)], overwrite=True)
  with pytest.raises(UserError, match="vocab_same_a uses .*; vocab_same_c uses gs://"):
    tasks.check_one_vocabulary("vocab_other",
                               tasks.tasks_of(tasks.get_mixture_or_task("vocab_other")))


def test_a_user_error_raised_while_tf_data_traces_is_one_paragraph():
  """A vocabulary is loaded when tf.data first traces `tokenize`: its UserError (an unreachable
  bucket) arrives wrapped in TensorFlow's StagingError, which the entry points showed as a traceback."""
  import tensorflow as tf
  from xmtf_jax.cli import errors

  def load(_):
    raise UserError("cannot reach the storage endpoint http://x:9 for gs://b/spiece.model")

  with pytest.raises(Exception) as raised:
    tf.data.Dataset.range(1).map(load)
  assert not isinstance(raised.value, UserError)  # what the entry point catches: TF's wrapper
  assert errors.user_message(raised.value) == (
      "cannot reach the storage endpoint http://x:9 for gs://b/spiece.model")
  assert errors.user_message(RuntimeError("a bug")) is None
