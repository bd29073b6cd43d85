"""Zero-shot evaluation of seqio tasks by rank classification, aggregated as the paper does.

    results = evaluate_tasks(scorer, task_names, batch_size=64)
    eval_results.write_results(output_dir, results)

A task qualifies when its examples carry `inputs` (text; `inputs_pretokenized` after seqio's tokenize
preprocessor), `answer_choices` (1-D strings) and either `label` (index of the correct choice) or a
`targets` text among the choices. Optional string features `dataset`, `language`, `template` group
the results (held-out tasks from `xmtf_jax.heldout_tasks` and the demo's held-out tasks carry them);
without them the task name stands in. Examples of all tasks are pooled and batched together, so many
small tasks cost no more compilations than one.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
import seqio

from xmtf_jax.data import tasks as data_tasks
from xmtf_jax.errors import UserError
from xmtf_jax.model.prompt_format import MT5, PromptFormat
from xmtf_jax.progress import Progress
from xmtf_jax.evaluation import results as eval_results
from xmtf_jax.evaluation import heldout_tasks, rank_classification


@dataclasses.dataclass
class TaskExamples:
  """One task's rank-classification records and what to call it in the results."""
  task: str
  dataset: str
  language: str
  template: str
  prompt_variant: str
  records: list[dict]
  encode: Callable[[str], Sequence[int]]
  not_applicable: int = 0


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def expand_task_names(names: Sequence[str]) -> list[str]:
  """Task names, with each mixture replaced by its tasks (in order, without duplicates)."""
  out: list[str] = []
  for name in names:
    provider = data_tasks.get_mixture_or_task(name)
    tasks = [t.name for t in provider.tasks] if isinstance(provider, seqio.Mixture) else [name]
    out.extend(t for t in tasks if t not in out)
  return out


def choose_split(task: seqio.Task, split: str | None) -> str:
  splits = list(task.splits)
  if split is not None:
    if split not in splits:
      raise UserError(f"task {task.name} has no split '{split}'; it has {splits}")
    return split
  if len(splits) == 1:
    return splits[0]
  for preferred in ("validation", "test"):
    if preferred in splits:
      return preferred
  raise UserError(f"task {task.name} has splits {splits}; choose one (split=...)")


def task_examples(task: seqio.Task, split: str, max_examples: int | None = None):
  """A task split's examples as numpy dicts, in file order (no shuffling, no cache)."""
  dataset = task.get_dataset(sequence_length=None, split=split, shuffle=False, use_cached=False)
  if max_examples is not None:
    dataset = dataset.take(max_examples)
  return dataset.as_numpy_iterator()


def text_records(task: seqio.Task, split: str, max_examples: int | None = None, *,
                 require_targets: bool = False) -> list[dict]:
  """`{"inputs", "targets" (when present), "example"}` per example of a split, in order: the texts
  from the `*_pretokenized` features (or text `inputs`/`targets`); generation and inference read these."""
  records = []
  for example in task_examples(task, split, max_examples):
    record = {}
    for key in ("inputs", "targets"):
      value = example.get(f"{key}_pretokenized", example.get(key))
      if isinstance(value, (bytes, str)):
        record[key] = _text(value)
      elif key == "inputs" or require_targets:
        raise UserError(f"task {task.name}: examples carry no {key} text ({key}_pretokenized); add "
                        "seqio.preprocessors.tokenize with copy_pretokenized=True")
    records.append(dict(record, example=example))
  if not records:
    raise UserError(f"task {task.name} split {split}: no examples; check the task's data files or "
                    "choose another split")
  return records


def load_task_examples(task_name: str, split: str | None = None,
                       max_examples: int | None = None, vocabulary=None) -> TaskExamples:
  """Reads a task's examples (no shuffling, file order) as rank-classification records, to be
  tokenized by `vocabulary` (the model's; default: the task's own). The records are text, so a task
  registered with another vocabulary (the demo's held-out tasks, SentencePiece) still scores a BLOOM
  model on its own tokens."""

  task = data_tasks.get_mixture_or_task(task_name)
  split = choose_split(task, split)
  info = heldout_tasks.TASK_INFO.get(task_name)
  records, meta = [], {}
  for index, example in enumerate(task_examples(task, split, max_examples)):
    if "answer_choices" not in example:
      raise UserError(f"task {task_name}: examples have no 'answer_choices' feature (features: "
                      f"{sorted(example)}), so they cannot be scored by rank classification")
    inputs = example.get("inputs_pretokenized", example.get("inputs"))
    if not isinstance(inputs, (bytes, str)):
      raise UserError(f"task {task_name}: needs the input text ('inputs_pretokenized' or a text "
                      "'inputs'); add seqio.preprocessors.tokenize with copy_pretokenized=True")
    choices = [_text(c) for c in example["answer_choices"]]
    if "label" in example:
      label = int(example["label"])
    else:
      target = _text(example.get("targets_pretokenized", example.get("targets", b"")))
      if target not in choices:
        raise UserError(f"task {task_name} example {index}: target {target!r} is not one of the "
                        f"answer choices {choices}")
      label = choices.index(target)
    source = _text(example["source"]) if "source" in example else f"{task_name}[{index}]"
    records.append(dict(inputs=_text(inputs), answer_choices=choices, label=label, source=source))
    for key in ("dataset", "language", "template"):
      if key in example and key not in meta:
        meta[key] = _text(example[key])
  if not records:
    raise UserError(f"task {task_name} split {split}: no examples; check the task's data files or "
                    "choose another split")
  vocabulary = vocabulary or task.output_features["targets"].vocabulary
  return TaskExamples(
      task=task_name,
      dataset=info.dataset if info else meta.get("dataset", task_name),
      language=info.language if info else meta.get("language", "-"),
      template=info.template if info else meta.get("template", task_name),
      prompt_variant=info.prompt_variant if info else "en",
      records=records, encode=vocabulary.encode,
      not_applicable=heldout_tasks.NOT_APPLICABLE.get(task_name, 0))


class RankClassificationSuite:
  """Tasks pooled for rank classification, read and tokenized once; `run(scorer, batch_size)` scores
  them all together (one set of length buckets) -> one PromptResult per task. The evaluate command
  runs it once; evaluation during training re-runs it with each step's parameters. `prompt_format`:
  the model family's (`prompt_format.prompt_format(model.config)`); `vocabulary`: the model's (None:
  each task's own)."""

  def __init__(self, task_names: Sequence[str], *, split: str | None = None,
               max_examples_per_task: int | None = None, max_input_length: int = 512,
               max_choice_length: int = 256, add_eos_to_inputs: bool = False,
               prompt_format: PromptFormat = MT5, vocabulary=None):
    self.max_input_length, self.max_choice_length = max_input_length, max_choice_length
    self.prompt_format = prompt_format
    self.tasks = [load_task_examples(name, split, max_examples_per_task, vocabulary)
                  for name in expand_task_names(task_names)]
    self.examples: list[rank_classification.TokenizedExample] = []
    for t_index, task in enumerate(self.tasks):
      self.examples += rank_classification.tokenize_examples(
          task.records, task.encode, max_input_length=max_input_length,
          max_choice_length=max_choice_length, add_eos_to_inputs=add_eos_to_inputs,
          keys=[(t_index, i) for i in range(len(task.records))], prompt_format=prompt_format)

  def describe(self) -> str:
    return (f"rank classification: {len(self.tasks)} tasks, {len(self.examples)} examples, "
            f"{sum(len(e.choice_tokens) for e in self.examples)} choices")

  def run(self, scorer: rank_classification.ChoiceScorer, batch_size: int,
          progress: Progress | None = None) -> list[eval_results.PromptResult]:
    scored = rank_classification.rank_classify(scorer, self.examples, batch_size,
                                               max_input_length=self.max_input_length,
                                               max_choice_length=self.max_choice_length,
                                               progress=progress, prompt_format=self.prompt_format)
    correct = np.zeros(len(self.tasks), np.int64)
    counts = np.zeros(len(self.tasks), np.int64)
    choices: list[set] = [set() for _ in self.tasks]
    for result in scored:
      t_index, _ = result.example.key
      counts[t_index] += 1
      correct[t_index] += result.correct
      choices[t_index].add(len(result.example.choice_tokens))
    results = []
    for t_index, task in enumerate(self.tasks):
      num_choices = choices[t_index].pop() if len(choices[t_index]) == 1 else None
      results.append(eval_results.PromptResult(
          task=task.task, dataset=task.dataset, language=task.language, template=task.template,
          prompt_variant=task.prompt_variant, num_examples=int(counts[t_index]),
          num_correct=int(correct[t_index]), num_choices=num_choices,
          not_applicable=task.not_applicable))
    return results


def evaluate_tasks(scorer: rank_classification.ChoiceScorer, task_names: Sequence[str], *,
                   batch_size: int, split: str | None = None, max_input_length: int = 512,
                   max_choice_length: int = 256, max_examples_per_task: int | None = None,
                   add_eos_to_inputs: bool = False,
                   print_fn: Callable[[str], None] | None = print,
                   prompt_format: PromptFormat = MT5, vocabulary=None) -> list[eval_results.PromptResult]:
  """Rank-classifies every example of every task, laid out by the model family's `prompt_format` and
  tokenized by `vocabulary` (the model's; None: each task's own); returns one PromptResult per task."""
  suite = RankClassificationSuite(task_names, split=split, max_examples_per_task=max_examples_per_task,
                                  max_input_length=max_input_length,
                                  max_choice_length=max_choice_length,
                                  add_eos_to_inputs=add_eos_to_inputs, prompt_format=prompt_format,
                                  vocabulary=vocabulary)
  if print_fn:
    print_fn(suite.describe())
  return suite.run(scorer, batch_size, Progress(len(suite.examples), print_fn))
