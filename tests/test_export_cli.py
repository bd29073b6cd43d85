"""`python -m xmtf_jax.export_hf` as a user sees it: what it prints, and the model card's title."""
import os
import re
import subprocess
import sys

import pytest

import mixtures  # noqa: F401  (the demo mixture tiny_trained_run trains on)

from xmtf_jax.cli import export_hf

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a user's own script does before calling the command: INFO logging on (a notebook, a wrapper).
LOGGING_ON = ("import logging, runpy; logging.basicConfig(level=logging.INFO); "
              "runpy.run_module('xmtf_jax.export_hf', run_name='__main__')")


@pytest.mark.parametrize("launch", [["-m", "xmtf_jax.export_hf"], ["-c", LOGGING_ON]],
                         ids=["python -m", "logging already at INFO"])
def test_export_prints_its_own_progress_and_no_library_chatter(launch, tiny_trained_run, tmp_path):
  """It printed 264 orbax/absl INFO lines out of 272 (logging already on), or with `python -m` none
  of its own INFO lines (orbax's import left the root logger at WARNING)."""
  run, _ = tiny_trained_run
  out = tmp_path / "hf"
  proc = subprocess.run(
      [sys.executable, *launch, f"--checkpoint_dir={run}", f"--output_dir={out}", "--noverify"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = (proc.stdout + proc.stderr).splitlines()
  chatter = [line for line in lines if re.search(r"INFO.*(absl|orbax)|(absl|orbax).*INFO", line)]
  assert chatter == [], "\n".join(chatter[:10])
  # orbax looks for _CHECKPOINT_METADATA in the params/ item (it lies one folder up) and warned each
  # time; TensorFlow's C++ start-up lines (issue 19, item 13).
  noise = [line for line in lines if re.search(r"Metadata file does not exist|absl::InitializeLog|"
                                                 r"cudart_stub|failed call to cuInit", line)]
  assert noise == [], "\n".join(noise)
  assert len(lines) < 30, "\n".join(lines)
  assert any(re.search(r"wrote model\.safetensors \(1/1\): \d+ tensors", line) for line in lines), lines
  assert any(line.startswith("exported ") and str(out) in line for line in proc.stdout.splitlines())


def card_title(folder) -> str:
  """The first `# ` heading of the folder's README.md (the model card)."""
  with open(os.path.join(folder, "README.md")) as f:
    return next(line[2:].strip() for line in f if line.startswith("# "))


def test_card_title_is_the_model_name_or_what_the_run_recorded_never_the_folder(tiny_trained_run,
                                                                                  tmp_path):
  """The title was the output folder's name (`# hf`, `# out`) unless --model_name was given."""
  run, _ = tiny_trained_run
  out = tmp_path / "out_folder_xyz"
  assert export_hf.main([f"--checkpoint_dir={run}", f"--output_dir={out}", "--noverify"]) == 0
  assert card_title(out) == "mT0-style model trained on demo"  # no INITIAL_CHECKPOINT_PATH: from scratch
  assert export_hf.main([f"--checkpoint_dir={run}", f"--output_dir={out}", "--noverify", "--overwrite",
                         "--model_name=My mT0"]) == 0
  assert card_title(out) == "My mT0"
  assert export_hf.main([f"--checkpoint_dir={run}", f"--output_dir={out}", "--noverify", "--overwrite",
                         "--base_model=/models/mt5-small/", "--mixture=xp3"]) == 0
  assert card_title(out) == "mT0-style model: mt5-small finetuned on xp3"


def test_model_name_is_documented_in_help(capsys):
  with pytest.raises(SystemExit):
    export_hf.main(["--help"])
  assert re.search(r"--model_name MODEL_NAME\s+the card's title", capsys.readouterr().out)
