"""`make demo` (= `python -m xmtf_jax.demo`): the whole pipeline on the embedded default, on the CPU.

Runs each stage's command in order, printing it first, so the demo doubles as a worked example of the
command lines. Everything lands under runs/demo/ (git-ignored; `make clean-demo` removes it):

  train      the tiny mT5 on the bundled demo mixture (gin/runs/demo.gin) -> runs/demo/train/
  evaluate   zero-shot rank classification on the demo's held-out tasks (gin/eval/demo.gin)
             -> runs/demo/eval/ (results.json, results.md, one PNG per dataset)
  infer      greedy predictions for validation examples (gin/infer/greedy.gin)
             -> runs/demo/predictions.jsonl
  export     the last checkpoint as an HF MT5ForConditionalGeneration folder -> runs/demo/hf/
             (verified against transformers when the test extras are installed)

Running it again continues an interrupted training run, or (finished) says so and re-runs the later
stages. To add a stage, append a `Stage` to `stages()`: a name, the argv after `python`, and what
it produces.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
import time

from xmtf_jax.paths import REPO_ROOT

DEMO_DIR = os.path.join("runs", "demo")


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  args: tuple[str, ...]  # after `python`
  produces: str


def stages(demo_dir: str = DEMO_DIR) -> list[Stage]:
  train_dir = os.path.join(demo_dir, "train")
  eval_dir = os.path.join(demo_dir, "eval")
  predictions = os.path.join(demo_dir, "predictions.jsonl")
  hf_dir = os.path.join(demo_dir, "hf")
  return [
      Stage("train", ("-m", "xmtf_jax.train", "--gin_file=gin/runs/demo.gin",
                      f"--gin.MODEL_DIR='{train_dir}'"),
            f"{train_dir}/: checkpoints, metrics.jsonl, TensorBoard events (train/, eval/), "
            "loss_curve.png"),
      Stage("evaluate", ("-m", "xmtf_jax.evaluate", "--gin_file=gin/eval/demo.gin",
                         f"--gin.evaluate.model_path='{train_dir}'",
                         f"--gin.evaluate.output_dir='{eval_dir}'"),
            f"{eval_dir}/: results.json, results.md (accuracy per prompt, median over prompts per "
            "language, mean over languages), language_id_accuracy.png, number_compare_accuracy.png"),
      Stage("infer", ("-m", "xmtf_jax.infer", "--gin_file=gin/infer/greedy.gin",
                      f"--gin.MODEL_PATH='{train_dir}'", "--gin.infer.task='demo_es'",
                      "--gin.infer.split='validation'", "--gin.infer.max_examples=64",
                      "--gin.MAX_DECODE_LENGTH=16",
                      f"--gin.infer.output_file='{predictions}'"),
            f"{predictions}: inputs, prediction, targets per line"),
      Stage("export", ("-m", "xmtf_jax.export_hf", f"--checkpoint_dir={train_dir}",
                       f"--output_dir={hf_dir}", "--overwrite"),
            f"{hf_dir}/: config.json, model.safetensors, spiece.model + tokenizer files, "
            "generation_config.json, README.md (model card)"),
  ]


def shell_words(args) -> str:
  """The argv as a person would type it (gin strings in double quotes: --gin.X="'value'")."""
  def word(arg):
    if shlex.quote(arg) == arg:
      return arg
    if "'" in arg and not any(c in arg for c in '"$`\\!'):
      return f'"{arg}"'
    return shlex.quote(arg)
  return " ".join(word(a) for a in args)


def run_stage(stage: Stage) -> None:
  command = [sys.executable, *stage.args]
  print(f"\n=== demo stage '{stage.name}' ===\n$ python {shell_words(stage.args)}", flush=True)
  start = time.time()
  proc = subprocess.Popen(command, cwd=REPO_ROOT)  # local-only: the stages run in the repository
  try:
    code = proc.wait()
  except KeyboardInterrupt:
    # Ctrl-C reached the stage too: training finishes its step and saves before exiting.
    proc.wait()
    raise SystemExit(f"\ninterrupted during '{stage.name}'; run `make demo` again to continue "
                     "(or `make clean-demo` to start over)")
  if code != 0:
    raise SystemExit(f"demo stage '{stage.name}' failed (exit status {code}); its command is above")
  print(f"=== '{stage.name}' done in {time.time() - start:.0f}s: {stage.produces}", flush=True)


def main(argv=None) -> None:
  if argv:
    raise SystemExit(f"unknown arguments: {list(argv)} (the demo takes none; `make clean-demo` starts over)")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  all_stages = stages()
  start = time.time()
  for stage in all_stages:
    run_stage(stage)
  print(f"\ndemo finished in {time.time() - start:.0f}s; outputs under {DEMO_DIR}/:")
  for stage in all_stages:
    print(f"  {stage.name}: {stage.produces}")

