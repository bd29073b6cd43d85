"""`python -m xmtf_jax.evaluate`: zero-shot rank-classification evaluation, written for people.

    python -m xmtf_jax.evaluate --gin_file=gin/eval/heldout_en.gin \
      --gin.MODEL_PATH="'/models/mt0-small'" --gin.OUTPUT_DIR="'/tmp/eval'" \
      --gin.HELDOUT_DATA_DIR="'/data/heldout'" --gin.PROMPTSOURCE_PATH="'/src/promptsource'"

writes `results.json`, `results.md` and `{dataset}_accuracy.png` into OUTPUT_DIR. Evaluate any seqio
tasks with answer choices (e.g. the demo's held-out tasks) with `--gin.evaluate.tasks="['name']"`.

gin macros that matter: MODEL_PATH, OUTPUT_DIR, HELDOUT_DATA_DIR, PROMPTSOURCE_PATH (gin/eval/*.gin);
evaluate.tasks, evaluate.batch_size, evaluate.max_examples_per_task, evaluate.add_eos_to_inputs.
"""
from __future__ import annotations

import sys
import time
from typing import Sequence

import gin
import jax

from xmtf_jax.errors import UserError
import xmtf_jax.paths

from xmtf_jax.checkpoint.model_path import open_model_path
from xmtf_jax.cli import gin_flags, runtime
from xmtf_jax.evaluation import rank_classification
from xmtf_jax.evaluation import results as eval_results
from xmtf_jax.evaluation import tasks as eval_tasks
from xmtf_jax.evaluation.heldout_tasks import HeldoutSuite
from xmtf_jax.model.prompt_format import prompt_format
from xmtf_jax.train.vocabulary import load_vocabulary


@gin.configurable(denylist=["model", "params"])
def evaluate(*, model_path: str = gin.REQUIRED, output_dir: str = gin.REQUIRED,
             tasks: Sequence[str] = (), heldout: HeldoutSuite | None = None,
             split: str | None = None, batch_size: int = 32, max_input_length: int = 512,
             max_choice_length: int = 256, max_examples_per_task: int | None = None,
             vocabulary_path: str | None = None, plots: bool = True,
             add_eos_to_inputs: bool | None = None, model=None, params=None) -> dict:
  """Scores `tasks` and/or the held-out suite; writes results; returns the written paths.

  model_path: an HF folder (config.json + safetensors) or a training run's checkpoint directory.
  `model` and `params` (a task-level model of either family and its params) skip loading.
  batch_size counts examples (each with all its choices). max_input_length 512 is the paper's for
  mT0 (BLOOMZ was evaluated with 2048). Inputs and choices are laid out by the model family's
  `PromptFormat` (mT5: choice + EOS; BLOOM: left-padded input, " " + choice, no EOS).
  add_eos_to_inputs: None (default) follows the model's training (a checkpoint records it; HF
  folders: no EOS, the paper's protocol).
  """
  started = time.time()
  # The model path is opened (listed, classified) once; what it holds is read from that.
  opened = None
  if model is None or add_eos_to_inputs is None or heldout is not None:
    opened = open_model_path(model_path)
  if add_eos_to_inputs is None:
    add_eos_to_inputs = opened.inputs_end_with_eos
  if model is None:
    partitioning = runtime.partitioning_config()
    mesh = partitioning.make_mesh()
    model, params = runtime.load_model(opened, mesh, partitioning)
  else:
    mesh = model.mesh
  names = list(tasks)
  # The model's vocabulary tokenizes every task's text (a task registered with another one still
  # scores this model on its own tokens); a model handed in without a path keeps the tasks' own.
  vocabulary = load_vocabulary(opened, vocabulary_path) if opened or vocabulary_path else None
  if heldout is not None:
    names += heldout.register(vocabulary)
  if not names:
    raise UserError("nothing to evaluate: set evaluate.tasks and/or evaluate.heldout "
                    "(e.g. --gin_file=gin/eval/heldout_en.gin)")
  runtime.register_tasks(*tasks)
  scorer = rank_classification.make_choice_scorer(model, params, mesh)
  layout = prompt_format(model.config)
  # Every process scores the same batches (a collective computation); one reports and writes.
  main_process = jax.process_index() == 0
  results = eval_tasks.evaluate_tasks(scorer, names, batch_size=batch_size, split=split,
                                      max_input_length=max_input_length,
                                      max_choice_length=max_choice_length,
                                      max_examples_per_task=max_examples_per_task,
                                      add_eos_to_inputs=add_eos_to_inputs,
                                      print_fn=print if main_process else None,
                                      prompt_format=layout, vocabulary=vocabulary)
  metadata = dict(model_path=model_path, batch_size=batch_size, max_input_length=max_input_length,
                  protocol=rank_classification.describe_protocol(layout, add_eos_to_inputs),
                  seconds=round(time.time() - started, 1))
  if heldout is not None:
    metadata["prompt_variant"] = heldout.prompt_variant
  if not main_process:
    return {}
  paths = eval_results.write_results(output_dir, results, metadata, plots=plots)
  print(xmtf_jax.paths.read_text(paths["markdown"]).split("\n## ")[0])
  print(f"wrote {', '.join(sorted(paths.values()))}")
  return paths


def main(argv: Sequence[str] | None = None) -> None:
  gin_flags.parse_gin_only(sys.argv[1:] if argv is None else argv)
  evaluate()

