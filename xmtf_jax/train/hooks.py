"""Periodic evaluation during training: the hook interface and the validation-loss hook.

An eval hook is a callable `(step: int, params) -> Mapping[str, float]`, run on every process every
EVAL_PERIOD steps (and after the last step) with the current float32 parameters (global arrays on the
training mesh). The metrics it returns are logged to metrics.jsonl (`{"kind": "eval", "name": ...}`),
TensorBoard (`MODEL_DIR/eval`) and the progress log. Hooks must not keep references to `params`
(the next train step donates them).

Hooks are built once per run by factories `factory(context: EvalContext) -> hook`, listed in gin:

    TrainConfig.eval_hook_factories = [@my_module.rank_classification_hook]
    my_module.rank_classification_hook.datasets = ['xcopa']

The factory's name (its `__name__`, or a `name` attribute of the hook) names the metrics.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np

from xmtf_jax.data import batch_source, source_factory
from xmtf_jax.model import family
from xmtf_jax.train import losses
from xmtf_jax.train import trainer

EvalHook = Callable[[int, Any], Mapping[str, float]]


@dataclasses.dataclass(frozen=True)
class EvalContext:
  """What a hook factory may need: the model (with its mesh and rules), where the run writes, the
  vocabulary, and the run's data settings."""
  model: Any  # the family's task-level model (model/family.py)
  model_dir: str
  vocabulary_path: Optional[str]
  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  batch_size: int
  use_packing: bool
  num_data_shards: int
  input_pipeline: str = batch_source.INDEXED
  line_index_dir: Optional[str] = None

  def source_config(self) -> batch_source.SourceConfig:
    """The run's batches as the batch-source factory takes them (validation reads them unshuffled)."""
    return batch_source.SourceConfig(
        self.mixture_or_task_name, dict(self.task_feature_lengths), self.batch_size,
        use_packing=self.use_packing, pipeline=self.input_pipeline,
        num_data_shards=self.num_data_shards if self.input_pipeline == batch_source.TF_DATA else None,
        line_index_dir=self.line_index_dir, feature_layout=family.feature_layout(self.model.config))


def hook_name(hook: Callable, factory: Optional[Callable] = None) -> str:
  return (getattr(hook, "name", None) or getattr(factory, "__name__", None)
          or type(hook).__name__)


class ValidationLoss:
  """Teacher-forced loss and token accuracy on a held-out split (per real target token, no dropout).

  Reads `num_batches` batches of the split in a fixed order (all of it when None) each time, from
  one single-pass batch source of the run's pipeline, built once and rewound at each evaluation.
  Its statistics are its own (`self.source.stats()`): they never mix with the training source's.
  """
  name = "validation"

  def __init__(self, context: EvalContext, split: str = "validation", num_batches: Optional[int] = 10,
               loss_config: Optional[losses.LossConfig] = None):
    self.context = context
    self.split = split
    self.num_batches = num_batches
    self._eval_step = trainer.make_eval_step(context.model, loss_config or losses.LossConfig())
    self.source = source_factory.make_batch_source(context.source_config(), split, single_pass=True)
    # At the start every process's position is its own initial one: its state stands for all.
    self._start = [self.source.get_state()] * jax.process_count()

  def __call__(self, step: int, params: Any) -> dict[str, float]:
    c = self.context
    sums = trainer.EvalSums()
    done = 0
    while self.num_batches is None or done < self.num_batches:
      try:
        batch, have_data = next(self.source), True
      except StopIteration:
        batch, have_data = batch_source.zero_batch(self.source.shapes()), False
      # Every process must run the same number of (collective) eval steps: stop when all ran out.
      if not _any_process(have_data):
        break
      sums.add(self._eval_step(params, c.model.shard_batch(batch)))
      done += 1
    self.source.set_state(self._start)  # rewound (and its reading ahead stopped) for next time
    metrics = sums.metrics()
    metrics["num_batches"] = done
    return metrics


def _any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def validation_loss_factory(split: str, num_batches: Optional[int], loss_config: losses.LossConfig
                            ) -> Optional[Callable[[EvalContext], EvalHook]]:
  """The built-in validation hook's factory, or None when the mixture has no such split."""
  def factory(context: EvalContext) -> Optional[EvalHook]:
    if not batch_source.has_split(context.mixture_or_task_name, split):
      logging.warning("no task of %r has a %r split: no validation loss during training",
                      context.mixture_or_task_name, split)
      return None
    return ValidationLoss(context, split, num_batches, loss_config)
  factory.__name__ = "validation"
  return factory
