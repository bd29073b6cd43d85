"""Entry points: --help for every command, user errors as one paragraph (no traceback wall)."""
import os
import subprocess
import sys

import gin
import pytest

from xmtf_jax.cli import data_report, demo, errors, evaluate, export_hf, infer, param_count, train

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = {"train": (train, False), "evaluate": (evaluate, False), "infer": (infer, False),
            "data_report": (data_report, False), "demo": (demo, False),
            "export_hf": (export_hf, True), "param_count": (param_count, True)}


@pytest.fixture(autouse=True)
def fresh_gin():
  gin.clear_config()
  yield
  gin.clear_config()


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
  with pytest.raises(SystemExit, match=r"unknown arguments: \['--max_examples=5'\]"):
    data_report.main(["--gin_file=gin/mixtures/demo.gin", "--max_examples=5"])


def test_user_errors_are_one_paragraph():
  assert errors.user_message(ValueError("bad\n  thing   here")) == "bad thing here"
  assert errors.user_message(FileNotFoundError("no such file: x")) == "no such file: x"
  assert errors.user_message(TypeError("a bug")) is None  # bugs keep their traceback


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
