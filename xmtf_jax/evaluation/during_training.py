"""Evaluation during training: chosen tasks scored every EVAL_PERIOD steps.

The trainer's eval hooks are callables `(step, params) -> {name: float}` built by factories listed in
gin (see xmtf_jax/eval_hooks.py); the trainer logs what they return to TensorBoard and metrics.jsonl,
prefixed by the hook's name. This module's factory:

    TrainConfig.eval_hook_factories = [@zero_shot_eval_hook]
    zero_shot_eval_hook.rank_classification_tasks = ['demo_heldout']
    zero_shot_eval_hook.generation_tasks = ['demo_en']

or directly, outside training:

    evaluator = TrainingEvaluator(model, mesh, rank_classification_tasks=["demo_heldout"])
    metrics = evaluator(step, params)   # {"<dataset>/median_accuracy": ..., "<task>/accuracy": ...}

Rank-classification tasks (examples with `answer_choices`) report accuracy per task, and per dataset
the mean over languages of the median over prompts (the paper's number). Generation tasks are decoded
(greedy by default) and scored with the task's seqio `metric_fns`, or BLEU and ROUGE
(`xmtf_jax.metrics`) when it has none. Examples are read and tokenized once, at construction; every
call reuses the compiled functions (params are an argument).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence


from xmtf_jax.data import tasks as data_tasks
from xmtf_jax.evaluation import results as eval_results
from xmtf_jax.evaluation import tasks as eval_tasks
from xmtf_jax.inference import generation
from xmtf_jax.evaluation import heldout_tasks
from xmtf_jax.evaluation import metrics
from xmtf_jax.model import scoring
from xmtf_jax.model.prompt_format import prompt_format
from xmtf_jax.parallel.batch_function import BatchFunction
from xmtf_jax.train.vocabulary import load_vocabulary


class TrainingEvaluator:
  """An eval hook `(step, params) -> {name: float}`; see the module docstring."""
  name = "zero_shot"

  def __init__(self, model, mesh=None, *, rank_classification_tasks: Sequence[str] = (),
               generation_tasks: Sequence[str] = (), split: str | None = None,
               max_examples_per_task: int | None = 256, batch_size: int = 32,
               max_input_length: int = 512, max_choice_length: int = 256,
               decoding: generation.DecodingConfig | None = None,
               default_metric_fns: Sequence[Callable] = (metrics.bleu, metrics.rouge),
               vocabulary=None):
    self.model, self.mesh, self.batch_size = model, mesh, batch_size
    # The run's vocabulary tokenizes every task's text (None: each task's own).
    self.vocabulary = vocabulary
    self.max_input_length, self.max_choice_length = max_input_length, max_choice_length
    self.decoding = decoding or generation.DecodingConfig()
    # Rank classification: all tasks pooled, tokenized once (the evaluate command's suite), laid out
    # as the model's family is evaluated.
    self._rank = eval_tasks.RankClassificationSuite(
        rank_classification_tasks, split=split, max_examples_per_task=max_examples_per_task,
        max_input_length=max_input_length, max_choice_length=max_choice_length,
        prompt_format=prompt_format(model.config), vocabulary=vocabulary)
    self._scorer = BatchFunction(
        lambda p, e, c: scoring.choice_scores(model, p, e, c), mesh) if self._rank.examples else None
    # Generation: inputs and targets text, the task's metric functions.
    self._generation_tasks = []
    for name in eval_tasks.expand_task_names(generation_tasks):
      task = data_tasks.get_mixture_or_task(name)
      records = eval_tasks.text_records(task, eval_tasks.choose_split(task, split), max_examples_per_task,
                                        require_targets=True)
      fns = list(task.predict_metric_fns) or list(default_metric_fns)
      self._generation_tasks.append((name, task, records, fns))
    self._predictor = None
    if self._generation_tasks:
      self._predictor = BatchFunction(
          lambda p, tokens: generation.predict_batch(model, p, tokens, self.decoding).sequences, mesh)

  def __call__(self, step: int | None, params: Any) -> dict[str, float]:
    results: dict[str, float] = {}
    if self._scorer is not None:
      results.update(self._rank_classification(params))
    for name, task, records, fns in self._generation_tasks:
      results.update(self._generation(params, name, task, records, fns))
    del step  # the trainer logs the results with the step (and the time taken)
    return results

  def _rank_classification(self, params) -> dict[str, float]:
    prompt_results = self._rank.run(lambda e, c: self._scorer(params, e, c), self.batch_size)
    out = {f"{r.task}/accuracy": r.accuracy for r in prompt_results}
    for dataset, summary in eval_results.aggregate(prompt_results).items():
      out[f"{dataset}/median_accuracy"] = summary["mean_of_medians"]
      out[f"{dataset}/mean_accuracy"] = summary["mean_of_means"]
    return out

  def _generation(self, params, name, task, records, fns) -> dict[str, float]:
    vocabulary = self.vocabulary or task.output_features["targets"].vocabulary
    predictions = generation.predict_texts(
        self.model, params, vocabulary, [r["inputs"] for r in records], self.decoding,
        batch_size=self.batch_size, max_input_length=self.max_input_length,
        predictor=lambda tokens, rng=None: self._predictor(params, tokens))
    targets = [r["targets"] for r in records]
    if task.postprocess_fn is not None:
      predictions = [task.postprocess_fn(p, example=r["example"], is_target=False)
                     for p, r in zip(predictions, records)]
      targets = [task.postprocess_fn(t, example=r["example"], is_target=True)
                 for t, r in zip(targets, records)]
    out = {}
    for fn in fns:
      for key, value in fn(targets, predictions).items():
        out[f"{name}/{key}"] = float(value)
    return out


def zero_shot_eval_hook(context, *, rank_classification_tasks: Sequence[str] = (),
                        generation_tasks: Sequence[str] = (),
                        heldout: heldout_tasks.HeldoutSuite | None = None, split: str | None = None,
                        max_examples_per_task: int | None = 256, batch_size: int | None = None,
                        max_input_length: int = 512,
                        decoding: generation.DecodingConfig | None = None) -> TrainingEvaluator | None:
  """Eval-hook factory for the trainer (`context`: its `eval_hooks.EvalContext`); None when no task
  is chosen. `heldout` adds the held-out suite built from raw files (registered with the run's
  vocabulary). batch_size defaults to the training batch size."""
  rank_classification_tasks = list(rank_classification_tasks)
  vocabulary = load_vocabulary(None, context.vocabulary_path) if context.vocabulary_path else None
  if heldout is not None:
    rank_classification_tasks += heldout.register(load_vocabulary(None, context.vocabulary_path))
  if not rank_classification_tasks and not generation_tasks:
    logging.warning("zero_shot_eval_hook: no tasks chosen; set zero_shot_eval_hook."
                    "rank_classification_tasks and/or .generation_tasks")
    return None
  return TrainingEvaluator(
      context.model, context.model.mesh, rank_classification_tasks=rank_classification_tasks,
      generation_tasks=generation_tasks, split=split, max_examples_per_task=max_examples_per_task,
      batch_size=batch_size or context.batch_size, max_input_length=max_input_length,
      decoding=decoding, vocabulary=vocabulary)
