"""The one interface every input pipeline offers, and the pieces they share.

A batch source hands out this process's rows of every global batch as host-local numpy dicts
(features as seqio's `EncDecFeatureConverter` names them, or the decoder-only layout's:
data/decoder_only.py; int32, `shapes()` fixed), and knows its position and what it counted:

    source = source_factory.make_batch_source(config, "train")   # or single_pass=True
    batch = next(source)                  # {feature: np.ndarray [rows, length]}
    source.shapes()                       # {feature: (rows, length)}, without reading data
    state = source.get_state()            # JSON-able; what this process saves in a checkpoint
    source.set_state(states)              # the states *every* process saved, in process order
    source.stats()                        # {"split", "truncation": {task: totals},
                                          #  "bad_lines": {task: {reason: n}}}: this source's only
    source.close()

Implementations: `indexed_pipeline.IndexedBatches` (the default) and `host_batches.HostBatches`
(seqio's tf.data). `source_factory.make_batch_source` builds either from a `SourceConfig`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from xmtf_jax.errors import UserError
from xmtf_jax.data import decoder_only
from xmtf_jax.data import tasks as data_tasks

INDEXED = "indexed"
TF_DATA = "tf_data"
PIPELINES = (INDEXED, TF_DATA)

ENCODER_FEATURES = ("encoder_input_tokens",)
DECODER_FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")
PACKING_FEATURES = {"encoder_segment_ids": "inputs", "encoder_positions": "inputs",
                    "decoder_segment_ids": "targets", "decoder_positions": "targets"}


@runtime_checkable
class BatchSource(Protocol):
  """This process's batches with a restorable position and its own statistics (module docstring)."""

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]: ...

  def __next__(self) -> dict[str, np.ndarray]: ...

  def shapes(self) -> dict[str, tuple[int, int]]: ...

  def get_state(self) -> Any: ...

  def set_state(self, states_of_all_processes: Sequence[Any]) -> None: ...

  def stats(self) -> dict: ...

  def close(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class SourceConfig:
  """What a run asks of its batches (TrainConfig's fields; `make_batch_source` adds the split).

  pipeline: 'indexed' (data/indexed_pipeline.py) or 'tf_data' (data/pipeline.py + host_batches.py).
  batch_size: global rows per batch; each process gets batch_size / process_count of them.
  num_data_shards: ('tf_data' only) shards of the stream, default one per process.
  line_index_dir: ('indexed' only) where line offsets are cached.
  feature_layout: 'encoder_decoder' (mT5: seqio's EncDecFeatureConverter features) or
    'decoder_only' (BLOOM: inputs ++ " " targets ++ EOS in rows of inputs + targets positions,
    data/decoder_only.py); the model family decides.
  """
  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  batch_size: int
  use_packing: bool = False
  seed: int = 0
  pipeline: str = INDEXED
  num_data_shards: Optional[int] = None
  line_index_dir: Optional[str] = None
  feature_layout: str = decoder_only.ENCODER_DECODER


@dataclasses.dataclass(frozen=True)
class StreamSpec:
  """What determines a pipeline's stream of batches; saved with the position and compared on
  restore (`check_same_spec`). The pipelines add their own fields."""
  mixture_or_task_name: str
  task_feature_lengths: dict
  split: str
  global_batch_size: int
  use_packing: bool
  shuffle: bool
  seed: int


def batch_shapes(task_feature_lengths: Mapping[str, int], local_batch_size: int,
                 use_packing: bool, feature_layout: str = decoder_only.ENCODER_DECODER
                 ) -> dict[str, tuple[int, int]]:
  """Feature name -> (rows, length) of every batch, without reading any data (for jit/AOT).

  decoder_only: every feature (segment ids and positions too, packed or not) is
  [rows, inputs + targets]."""
  if feature_layout == decoder_only.DECODER_ONLY:
    length = decoder_only.row_length(task_feature_lengths)
    return {k: (local_batch_size, length) for k in decoder_only.FEATURES}
  check_layout(feature_layout)
  shapes = {k: (local_batch_size, task_feature_lengths["inputs"]) for k in ENCODER_FEATURES}
  shapes.update({k: (local_batch_size, task_feature_lengths["targets"]) for k in DECODER_FEATURES})
  if use_packing:
    shapes.update({k: (local_batch_size, task_feature_lengths[f]) for k, f in PACKING_FEATURES.items()})
  return shapes


def check_layout(feature_layout: str) -> None:
  if feature_layout not in decoder_only.LAYOUTS:
    raise UserError(f"feature_layout={feature_layout!r}: choose one of "
                     f"{', '.join(map(repr, decoder_only.LAYOUTS))}")


def zero_batch(shapes: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
  """An all-padding batch (loss weight 0), e.g. for a process whose data ran out before the others'."""
  return {k: np.zeros(shape, np.int32) for k, shape in shapes.items()}


def check_same_spec(saved: Mapping[str, Any], spec: StreamSpec, hint: str) -> None:
  """Refuses a saved position whose stream arguments differ from `spec`'s, naming each difference.

  A field the saved state lacks (written before the field existed) counts as its default.
  """
  diffs = {}
  for field in dataclasses.fields(spec):
    default = field.default if field.default is not dataclasses.MISSING else None
    was, now = saved.get(field.name, default), getattr(spec, field.name)
    if was != now:
      diffs[field.name] = (was, now)
  if diffs:
    detail = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in sorted(diffs.items()))
    raise UserError(f"cannot continue the saved input stream with different pipeline arguments "
                     f"({detail}). {hint}")


def process_index_and_count(index: Optional[int], count: Optional[int]) -> tuple[int, int]:
  """(index, count), each defaulting to jax.process_index() / jax.process_count()."""
  if index is None or count is None:
    import jax  # only here: the data modules do not otherwise need jax
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
  return int(index), int(count)


def has_split(mixture_or_task_name: str, split: str) -> bool:
  """Whether any task of the mixture (or the task) has `split` (e.g. for periodic validation)."""
  provider = data_tasks.get_mixture_or_task(mixture_or_task_name)
  return any(split in t.splits for t in data_tasks.tasks_of(provider))
