"""Entry points: --help for every command, user errors as one paragraph (no traceback wall)."""
import logging
import os
import subprocess
import sys

import gin
import pytest

from xmtf_jax.cli import data_report, demo, errors, evaluate, export_hf, infer, param_count, train
from xmtf_jax.data.jsonl_source import BadDataError, JsonlDataSource
from xmtf_jax.errors import MissingPathError, PathExistsError, UserError
from xmtf_jax.model.encoder_decoder import EncoderDecoderModel

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = {"train": (train, False), "evaluate": (evaluate, False), "infer": (infer, False),
            "data_report": (data_report, False), "demo": (demo, False),
            "export_hf": (export_hf, True), "param_count": (param_count, True)}


@pytest.fixture(autouse=True)
def fresh_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture(autouse=True)
def restore_logging():
  """Commands configure the root logger with a handler on the sys.stderr of the moment (capsys's
  here, closed after the test); later tests must not log into it."""
  root = logging.getLogger()
  handlers, level = list(root.handlers), root.level
  yield
  root.handlers[:] = handlers
  root.setLevel(level)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name, capsys):
  module, argparse_help = COMMANDS[name]
  try:
    code = errors.run(module.main, module.__doc__, ["--help"], main_has_help=argparse_help)
  except SystemExit as e:  # argparse's --help exits 0 itself
    code = e.code
  out = capsys.readouterr().out
  assert code == 0
  assert f"xmtf_jax.{name}" in out or "usage:" in out
  assert "--gin_file" in out or "--checkpoint_dir" in out or "--mesh" in out
  if name in ("train", "evaluate", "infer", "data_report"):
    assert "gin macros that matter" in out


def test_data_report_rejects_unknown_flags():
  with pytest.raises(UserError, match=r"unknown arguments: \['--max_examples=5'\]"):
    data_report.main(["--gin_file=gin/mixtures/demo.gin", "--max_examples=5"])


def test_only_user_errors_are_one_paragraph():
  assert errors.user_message(UserError("bad\n  thing   here")) == "bad thing here"
  assert errors.user_message(MissingPathError("no such file: x")) == "no such file: x"
  assert errors.user_message(BadDataError("a.jsonl, line 4: malformed JSON")) == "a.jsonl, line 4: malformed JSON"
  # Bugs keep their traceback: a shape or sharding ValueError from jax, orbax or our code included.
  assert errors.user_message(ValueError("shape bug")) is None
  assert errors.user_message(FileNotFoundError("/tmp/x")) is None
  assert errors.user_message(TypeError("a bug")) is None
  # The user's path errors are still what callers catch.
  assert isinstance(MissingPathError("x"), FileNotFoundError)
  assert isinstance(PathExistsError("x"), FileExistsError)
  assert isinstance(UserError("x"), ValueError)


def _run(main, argv, capsys):
  """(exit status, stderr) of `main` run as a command."""
  code = errors.run(main, main.__doc__ or "", argv)
  return code, capsys.readouterr().err


def _assert_one_paragraph(code, err, *phrases):
  assert code == errors.EXIT_USER_ERROR, err
  assert "Traceback" not in err
  lines = err.strip().splitlines()
  lines = lines[[i for i, line in enumerate(lines) if line.startswith("error: ")][0]:]  # after log lines
  assert lines[-1] == "(add --traceback to see where it was raised)"
  assert all(line.startswith("  ") and line.strip() for line in lines[1:-1]), err  # one paragraph
  assert len(lines) <= 6, err  # not a wall
  for phrase in phrases:
    assert phrase in " ".join(err.split()), err


def test_a_misspelt_macro_is_one_paragraph(capsys):
  code, err = _run(train.main, ["--gin_file=gin/runs/demo.gin", "--gin.TRAIN_STEP=10"], capsys)
  _assert_one_paragraph(code, err, "--gin.TRAIN_STEP: no gin file given defines the macro TRAIN_STEP",
                        "Did you mean TRAIN_STEPS?")


def test_a_missing_gin_file_is_one_paragraph(capsys):
  code, err = _run(train.main, ["--gin_file=gin/runs/dmeo.gin"], capsys)
  _assert_one_paragraph(code, err, "gin file not found: gin/runs/dmeo.gin")


def test_a_missing_included_gin_file_is_one_paragraph(tmp_path, capsys):
  (tmp_path / "my.gin").write_text("include 'gin/runs/dmeo.gin'\n")
  code, err = _run(train.main, [f"--gin_file={tmp_path / 'my.gin'}"], capsys)
  _assert_one_paragraph(code, err, "Unable to open file: gin/runs/dmeo.gin", "my.gin")


@pytest.mark.parametrize("text, phrases", [
    ("TRAIN_STEPS = 3 4\n", ("gin syntax error in", "bad.gin, line 2", "TRAIN_STEPS = 3 4")),
    ("TRAIN_STEPS = (3,\n", ("gin syntax error", "bad.gin", "not closed")),
])
def test_a_gin_syntax_error_is_one_paragraph(tmp_path, capsys, text, phrases):
  (tmp_path / "bad.gin").write_text("include 'gin/runs/demo.gin'\n" + text)
  code, err = _run(train.main, [f"--gin_file={tmp_path / 'bad.gin'}"], capsys)
  _assert_one_paragraph(code, err, *phrases)


def test_a_binding_that_is_not_a_literal_is_one_paragraph(capsys):
  code, err = _run(train.main, ["--gin_file=gin/runs/demo.gin", "--gin.MODEL_DIR=/tmp/run"], capsys)
  _assert_one_paragraph(code, err, "gin syntax error in the binding --gin.MODEL_DIR=/tmp/run",
                        "a value is a Python literal")


def test_gin_mistakes_found_at_finalize_or_call_are_one_paragraph(tmp_path, capsys):
  (tmp_path / "macro.gin").write_text("include 'gin/runs/demo.gin'\nTrainConfig.log_period = %NO_SUCH\n")
  code, err = _run(train.main, [f"--gin_file={tmp_path / 'macro.gin'}"], capsys)
  _assert_one_paragraph(code, err, "the macro %NO_SUCH is used but no gin file or --gin.NO_SUCH=... sets it")
  assert "TRAIN_STEPS" not in err  # not gin's dump of the whole configuration
  gin.clear_config()
  code, err = _run(infer.main, ["--gin_file=gin/infer/greedy.gin"], capsys)
  _assert_one_paragraph(code, err, "the macro MODEL_PATH is required: set it with --gin.MODEL_PATH=...")
  gin.clear_config()
  # No gin file: infer's gin.REQUIRED arguments are unbound, which gin itself raises (a RuntimeError)
  # when the command calls `infer()`.
  code, err = _run(infer.main, ["--gin.infer.output_file='/tmp/x'"], capsys)
  _assert_one_paragraph(code, err, "Required bindings for `infer` not provided in config: ['model_path']")


def test_a_bad_value_in_a_gin_config_class_is_one_paragraph(tmp_path, capsys):
  code, err = _run(train.main, ["--gin_file=gin/runs/demo.gin", f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
                                "--gin.TrainConfig.log_period=0"], capsys)
  _assert_one_paragraph(code, err, "TrainConfig.log_period=0 must be >= 1")
  assert "In call to configurable" not in err  # gin's note adds nothing to our message


def test_a_bad_data_line_raised_inside_tf_data_is_one_paragraph(tmp_path, capsys):
  path = tmp_path / "train.jsonl"
  path.write_text('{"inputs": "a", "targets": "b"}\n{"inputs": "a", "targets": \n')
  source = JsonlDataSource("cli_errors_bad_line", {"train": [str(path)]}, strict=True)

  def main(argv):
    list(source.get_dataset("train", shuffle=False).as_numpy_iterator())

  code, err = _run(main, [], capsys)
  _assert_one_paragraph(code, err, f"{path}, line 2: malformed JSON", "DATA_STRICT = False")


def test_a_bug_inside_the_train_step_keeps_its_traceback(tmp_path, monkeypatch, capsys):
  """A plain ValueError raised while the step runs (a shape or sharding bug in jax, orbax or our
  code) is not the user's mistake: the command re-raises it (traceback, exit status 1), no paragraph."""
  def forward(*args, **kwargs):
    raise ValueError("shape bug: [8, 16] vs [8, 32]")

  monkeypatch.setattr(EncoderDecoderModel, "forward", forward)
  with pytest.raises(ValueError, match=r"shape bug") as raised:
    _run(train.main, ["--gin_file=gin/runs/demo.gin", f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
                      "--gin.TRAIN_STEPS=1"], capsys)
  assert not isinstance(raised.value, UserError)
  assert "error:" not in capsys.readouterr().err


def _train(tmp_path, *extra):
  env = {**os.environ, "PYTHONPATH": REPO_ROOT, "JAX_PLATFORMS": "cpu", "XMTF_CPU_MALLOC": "0"}
  return subprocess.run([sys.executable, "-m", "xmtf_jax.train", "--gin_file=gin/runs/demo.gin",
                         f"--gin.MODEL_DIR='{tmp_path / 'run'}'", "--gin.MIXTURE_OR_TASK_NAME='dmeo'",
                         *extra], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_mistake_prints_one_paragraph_and_traceback_on_request(tmp_path):
  proc = _train(tmp_path)
  assert proc.returncode == 2, proc.stderr
  assert "Traceback" not in proc.stderr
  assert "error: no seqio task or mixture named 'dmeo'; did you mean ['demo'" in proc.stderr
  assert not (tmp_path / "run").exists()
  proc = _train(tmp_path, "--traceback")
  assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_a_gin_syntax_error_exits_2_with_one_paragraph(tmp_path):
  """The real command (issue 19: gin mistakes exited 1; a syntax error was a 38-line traceback)."""
  (tmp_path / "bad.gin").write_text("include 'gin/runs/demo.gin'\nBATCH_SIZE = = 8\n")
  proc = _train(tmp_path, f"--gin_file={tmp_path / 'bad.gin'}")
  _assert_one_paragraph(proc.returncode, proc.stderr,
                        f"error: gin syntax error in {tmp_path / 'bad.gin'}, line 2", "BATCH_SIZE = = 8")
