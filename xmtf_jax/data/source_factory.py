"""`make_batch_source`: the one way training, validation, the plan and the data report get batches.

It picks the pipeline a `SourceConfig` names and refuses settings that pipeline would ignore: the
indexed pipeline's global batches never depend on the number of hosts (no `num_data_shards`) and it
has no shuffle buffers (every line of an epoch is equally likely anywhere: no
`DataConfig.shuffle_buffer_size`).
"""
from __future__ import annotations

import logging
from typing import Optional

from xmtf_jax.errors import UserError
from xmtf_jax.data import batch_source, host_batches, indexed_pipeline, mixture_shares
from xmtf_jax.data import tasks as data_tasks
from xmtf_jax.data.batch_source import INDEXED, PIPELINES, TF_DATA, BatchSource, SourceConfig
from xmtf_jax.data.config import DataConfig
from xmtf_jax.data.jsonl_source import JsonlDataSource

log = logging.getLogger(__name__)


def check_settings(config: SourceConfig) -> None:
  """A ValueError naming the setting when the chosen pipeline would silently ignore it."""
  if config.pipeline not in PIPELINES:
    raise UserError(f"TrainConfig.input_pipeline={config.pipeline!r}: choose one of "
                     f"{', '.join(map(repr, PIPELINES))}")
  batch_source.check_layout(config.feature_layout)
  if config.pipeline != INDEXED:
    return
  if config.num_data_shards is not None:
    raise UserError(
        f"TrainConfig.num_data_shards={config.num_data_shards} is a setting of the tf.data input "
        "pipeline; the indexed pipeline (TrainConfig.input_pipeline = 'indexed', the default) ignores "
        "it: its global batches never depend on the number of hosts. Remove the setting, or choose "
        "TrainConfig.input_pipeline = 'tf_data'.")
  default = DataConfig().shuffle_buffer_size
  provider = data_tasks.get_mixture_or_task(config.mixture_or_task_name)
  for task in data_tasks.tasks_of(provider):
    registered = task.source.config if isinstance(task.source, JsonlDataSource) else None
    if registered is not None and registered.shuffle_buffer_size != default:
      raise UserError(
          f"DataConfig.shuffle_buffer_size={registered.shuffle_buffer_size} is a setting of the "
          "tf.data input pipeline; the indexed pipeline (TrainConfig.input_pipeline = 'indexed', "
          "the default) ignores it: it has no shuffle buffers (every line of an epoch is equally "
          f"likely anywhere). Remove the setting (default {default}), or choose "
          "TrainConfig.input_pipeline = 'tf_data'.")


def make_batch_source(config: SourceConfig, split: str, *, single_pass: bool = False,
                      process_index: Optional[int] = None,
                      process_count: Optional[int] = None) -> BatchSource:
  """This process's batches of `split` (default jax.process_index() of jax.process_count()).

  single_pass=False: shuffled, repeated for ever, from `config.seed` (training); logs the mixing
  rates of `config.mixture_or_task_name` (`mixture_shares.describe`).
  single_pass=True: every task's split read once in a fixed order; the last batch is padded with
  all-zero rows (loss weight 0) and the source then stops (validation, the data report).
  """
  check_settings(config)
  index, count = batch_source.process_index_and_count(process_index, process_count)
  if not single_pass:  # training: the rates of the mixture trained, not of a sub-mixture
    provider = data_tasks.get_mixture_or_task(config.mixture_or_task_name)
    log.info("%s", mixture_shares.describe(config.mixture_or_task_name,
                                           mixture_shares.task_shares(provider),
                                           mixture_shares.task_languages(provider)))
  if config.pipeline == TF_DATA:
    return host_batches.make_host_batches(
        config.mixture_or_task_name, config.task_feature_lengths, split, config.batch_size,
        use_packing=config.use_packing, shuffle=not single_pass,
        seed=0 if single_pass else config.seed, repeat=not single_pass,
        num_data_shards=config.num_data_shards, process_index=index, process_count=count,
        feature_layout=config.feature_layout)
  return indexed_pipeline.make_indexed_batches(
      config.mixture_or_task_name, config.task_feature_lengths, split, config.batch_size,
      use_packing=config.use_packing, seed=0 if single_pass else config.seed,
      shuffle=not single_pass, single_pass=single_pass, process_index=index, process_count=count,
      index_dir=config.line_index_dir, feature_layout=config.feature_layout)
