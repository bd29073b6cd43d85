"""The decoder-only example layout (data/decoder_only.py) for the tf.data pipeline.

Each task's examples come from its own seqio pipeline; the layout takes the text seqio's tokenize
step was given (`inputs_pretokenized`, `targets_pretokenized`), tokenizes inputs and " " + targets
with the task's vocabulary, appends EOS, trims and counts truncation in the task's counter (the
task's own `count_truncation` step is not counted: it saw the targets without the space). The tasks
are then mixed as seqio mixes them (the mixture's sample function and rates; one pass concatenates
them), and the rows are padded, or packed with seqio's packer as the encoder-decoder features are.
"""
from __future__ import annotations

from typing import Mapping, Optional

import seqio
import tensorflow as tf

from xmtf_jax.data import decoder_only, stats
from xmtf_jax.data import tasks as data_tasks
from xmtf_jax.errors import UserError

TEXT_FEATURES = ("inputs_pretokenized", "targets_pretokenized")
TOKEN_FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")


def vocabulary_of(task: seqio.Task) -> seqio.Vocabulary:
  """The task's `targets` vocabulary (what a RunVocabulary stands for), which the layout uses."""
  return data_tasks.resolved(task.output_features["targets"].vocabulary)


def task_examples(ds: tf.data.Dataset, task: seqio.Task, task_feature_lengths: Mapping[str, int],
                  counter: Optional[tf.Variable]) -> tf.data.Dataset:
  """Per example the unpadded decoder_input_tokens, decoder_target_tokens, decoder_loss_weights."""
  missing = set(TEXT_FEATURES) - set(ds.element_spec)
  if missing:
    raise UserError(
        f"task {task.name!r}: its preprocessors keep no {' and '.join(sorted(missing))} (the text "
        "seqio's tokenize copies), which the decoder-only layout tokenizes itself. Tokenize with "
        "seqio.preprocessors.tokenize (copy_pretokenized=True, the default).")
  vocab = vocabulary_of(task)
  limit_in, limit_out = int(task_feature_lengths["inputs"]), int(task_feature_lengths["targets"])
  eos = tf.constant([vocab.eos_id], tf.int32)

  def layout(ex):
    inputs = tf.cast(vocab.encode_tf(ex["inputs_pretokenized"]), tf.int32)
    targets = tf.cast(vocab.encode_tf(tf.strings.join([" ", ex["targets_pretokenized"]])), tf.int32)
    n_in = tf.size(inputs, out_type=tf.int64)
    n_out = tf.size(targets, out_type=tf.int64) + 1
    cut_in, cut_out = tf.maximum(n_in - limit_in, 0), tf.maximum(n_out - limit_out, 0)
    inputs = inputs[:limit_in]
    s = tf.concat([inputs, targets[:limit_out - 1], eos], 0)
    n = tf.size(s) - 1
    weights = tf.cast(tf.range(n) >= tf.size(inputs) - 1, tf.int32)
    out = {"decoder_input_tokens": s[:-1], "decoder_target_tokens": s[1:],
           "decoder_loss_weights": weights}
    if counter is None:
      return out
    counts = tf.stack([tf.constant(1, tf.int64), n_in, tf.cast(cut_in > 0, tf.int64), cut_in,
                       n_out, tf.cast(cut_out > 0, tf.int64), cut_out])
    with tf.control_dependencies([counter.assign_add(counts)]):
      return {k: tf.identity(v) for k, v in out.items()}

  return ds.map(layout, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def mixed_examples(provider, task_feature_lengths: Mapping[str, int], split: str, *,
                   shuffle: bool, seed: Optional[int], shard_info: Optional[seqio.ShardInfo],
                   repeat: bool) -> tf.data.Dataset:
  """The layout's examples of a task or a mixture (seqio's mixing; one pass: task after task)."""
  sink = stats.current()
  lengths = dict(task_feature_lengths)
  num_epochs = None if repeat else 1
  if isinstance(provider, seqio.Mixture):
    provider._check_compatible_features()  # noqa: SLF001  (as seqio's Mixture.get_dataset)
  tasks = [t for t in data_tasks.tasks_of(provider) if split in t.splits]
  if not tasks:
    raise UserError(f"no task of {provider.name!r} has a {split!r} split")
  parts = []
  for task in tasks:
    # bad lines count into this source's stats; the task's own truncation counts do not
    with stats.collecting(sink.sharing_bad_lines() if sink is not None else None):
      if isinstance(provider, seqio.Mixture):
        ds = provider.get_task_dataset(task, set(TEXT_FEATURES), lengths, split, use_cached=False,
                                       shuffle=shuffle, seed=seed, shard_info=shard_info,
                                       num_epochs=num_epochs)
      else:
        ds = task.get_dataset(sequence_length=lengths, split=split, use_cached=False,
                              shuffle=shuffle, seed=seed, shard_info=shard_info,
                              num_epochs=num_epochs)
    counter = sink.truncation_counter(task.name).variable if sink is not None else None
    parts.append(task_examples(ds, task, lengths, counter))
  if len(parts) == 1:
    return parts[0]
  if not repeat:
    ds = parts[0]
    for part in parts[1:]:
      ds = ds.concatenate(part)
    return ds
  sample_seed = seed if seed is not None else (None if shuffle else 42)  # as seqio's Mixture
  return provider._sample_fn(parts, provider._get_all_mixing_rates(tasks), sample_seed)  # noqa: SLF001


def features(ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int], pad_id: int,
             pack: bool) -> tf.data.Dataset:
  """Rows of L = inputs + targets positions (decoder_only.FEATURES), padded with `pad_id`."""
  length = decoder_only.row_length(task_feature_lengths)
  if pack:
    # seqio's packer takes zeros for padding: shift every value by one while packing
    ds = ds.map(lambda ex: {k: ex[k] + 1 for k in TOKEN_FEATURES})
    ds = seqio.utils.trim_and_pack_dataset(ds, {k: length for k in TOKEN_FEATURES})

    def unshift(ex):
      segments = ex["decoder_target_tokens_segment_ids"]
      real = segments > 0
      out = {k: tf.where(real, ex[k] - 1, pad_id if k != "decoder_loss_weights" else 0)
             for k in TOKEN_FEATURES}
      out["decoder_segment_ids"] = segments
      out["decoder_positions"] = ex["decoder_target_tokens_positions"]
      return out

    return ds.map(unshift, num_parallel_calls=tf.data.AUTOTUNE)

  def pad(ex):
    n = tf.size(ex["decoder_target_tokens"])
    padding = [[0, length - n]]
    out = {k: tf.pad(ex[k], padding, constant_values=pad_id if k != "decoder_loss_weights" else 0)
           for k in TOKEN_FEATURES}
    out["decoder_segment_ids"] = tf.pad(tf.ones([n], tf.int32), padding)
    out["decoder_positions"] = tf.pad(tf.range(n, dtype=tf.int32), padding)
    return {k: tf.ensure_shape(v, [length]) for k, v in out.items()}

  return ds.map(pad, num_parallel_calls=tf.data.AUTOTUNE)


def dataset(provider, task_feature_lengths: Mapping[str, int], split: str, *, shuffle: bool,
            seed: Optional[int], shard_info: Optional[seqio.ShardInfo], repeat: bool,
            pack: bool) -> tf.data.Dataset:
  """Unbatched decoder-only rows of a task or mixture (what pipeline.make_dataset batches)."""
  task = data_tasks.tasks_of(provider)[0]
  pad_id = int(vocabulary_of(task).pad_id)
  ds = mixed_examples(provider, task_feature_lengths, split, shuffle=shuffle, seed=seed,
                      shard_info=shard_info, repeat=repeat)
  return features(ds, task_feature_lengths, pad_id, pack)
