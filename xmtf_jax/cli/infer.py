"""`python -m xmtf_jax.infer`: generate predictions for a jsonl file or a seqio task split.

    python -m xmtf_jax.infer --gin_file=gin/infer/greedy.gin \
      --gin.MODEL_PATH="'/models/mt0-small'" --gin.infer.input_file="'prompts.jsonl'" \
      --gin.infer.output_file="'predictions.jsonl'"

Input lines are JSON objects with an `inputs` text (and optionally `targets`); a seqio task is read
with `--gin.infer.task="'name'" --gin.infer.split="'validation'"`. Each output line holds `inputs`,
`prediction` and, when known, `targets`, in input order.

gin macros that matter: MODEL_PATH, BATCH_SIZE, MAX_DECODE_LENGTH (gin/infer/*.gin); infer.input_file,
infer.output_file, infer.task, infer.split, infer.add_eos, DecodingConfig.* (method, num_beams, ...).
"""
from __future__ import annotations

import json
import sys
import time
from typing import Sequence

import gin
import jax

from xmtf_jax import paths
from xmtf_jax.checkpoint.model_path import open_model_path
from xmtf_jax.cli import gin_flags, runtime
from xmtf_jax.data import records as records_lib
from xmtf_jax.data import tasks as data_tasks
from xmtf_jax.errors import UserError
from xmtf_jax.evaluation import tasks as eval_tasks
from xmtf_jax.inference import generation
from xmtf_jax.train.vocabulary import load_vocabulary


def read_inputs(path: str) -> list[dict]:
  """Records with an `inputs` text from a .jsonl (or .tsv/.csv/.parquet) file; errors name the line."""
  records = []
  for line_number, record in records_lib.read_records(path):
    if not isinstance(record.get("inputs"), str):
      raise records_lib.RecordsError(f"{path}:{line_number}: expected an object with an 'inputs' text "
                                     "field")
    records.append(record)
  return records


def read_task(task_name: str, split: str, max_examples: int | None) -> list[dict]:
  """Records (`inputs`, `targets` texts) of a seqio task split, in order."""
  runtime.register_tasks(task_name)
  task = data_tasks.get_mixture_or_task(task_name)
  return eval_tasks.text_records(task, split, max_examples)


@gin.configurable
def infer(*, model_path: str = gin.REQUIRED, output_file: str = gin.REQUIRED,
          input_file: str | None = None, task: str | None = None, split: str = "validation",
          max_examples: int | None = None, decoding: generation.DecodingConfig | None = None,
          batch_size: int = 32, max_input_length: int = 1024, add_eos: bool | None = None,
          vocabulary_path: str | None = None) -> str:
  """Writes predictions for `input_file` (jsonl) or `task`/`split` to `output_file`.

  add_eos: append EOS to each input; None (default) does what the model was trained with (a training
  checkpoint records it; HF folders: no EOS, as mT0 was trained and evaluated). Prompts are laid out
  by the model family's `PromptFormat` (a decoder-only model: left-padded, cut keeping their end);
  each prediction is the generated continuation up to EOS.
  """
  if (input_file is None) == (task is None):
    raise UserError("set exactly one of infer.input_file and infer.task (gin: --gin.infer.input_file="
                    "\"'in.jsonl'\" or --gin.infer.task=\"'name'\")")
  decoding = decoding or generation.DecodingConfig()
  records = read_inputs(input_file) if input_file else read_task(task, split, max_examples)
  partitioning = runtime.partitioning_config()
  mesh = partitioning.make_mesh()
  opened = open_model_path(model_path)  # listed and classified once
  model, params = runtime.load_model(opened, mesh, partitioning)
  vocabulary = load_vocabulary(opened, vocabulary_path)
  if add_eos is None:
    add_eos = opened.inputs_end_with_eos
  started = time.time()
  main_process = jax.process_index() == 0  # all processes decode (collectively); one writes
  predictions = generation.predict_texts(
      model, params, vocabulary, [r["inputs"] for r in records], decoding, batch_size=batch_size,
      max_input_length=max_input_length, add_eos=add_eos, mesh=mesh,
      print_fn=print if main_process else None)
  if not main_process:
    return output_file
  paths.makedirs(paths.dirname(paths.abspath(output_file)))
  with paths.open(output_file, "w") as f:  # on a bucket: one upload when the file closes
    for record, prediction in zip(records, predictions):
      row = {"inputs": record["inputs"], "prediction": prediction}
      if "targets" in record:
        row["targets"] = record["targets"]
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  seconds = time.time() - started
  print(f"wrote {len(records)} predictions to {output_file} ({len(records) / max(seconds, 1e-9):.1f} "
        f"examples/s, {decoding.method})")
  with_targets = [(r["targets"], p) for r, p in zip(records, predictions) if "targets" in r]
  if with_targets:
    exact = sum(t.strip() == p.strip() for t, p in with_targets)
    print(f"exact match with targets: {exact}/{len(with_targets)} "
          f"({100 * exact / len(with_targets):.1f}%)")
  return output_file


def main(argv: Sequence[str] | None = None) -> None:
  gin_flags.parse_gin_only(sys.argv[1:] if argv is None else argv)
  infer()

