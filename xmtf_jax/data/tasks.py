"""Building blocks for prompted text-to-text seqio tasks read from JSON-lines files, and the one lookup.

Copy `add_jsonl_task` calls to define your own tasks (see README "Your own data"): a task is a
`JsonlDataSource` (checked records) → tokenize → count truncation → EOS on targets.
`get_mixture_or_task(name)` is seqio's lookup with an error that lists close names.
"""
from __future__ import annotations

import difflib
import functools
from typing import Callable, Mapping, Optional, Sequence

import seqio

from xmtf_jax import paths
from xmtf_jax.data import truncation
from xmtf_jax.data.jsonl_source import JsonlDataSource, RecordSchema


@functools.lru_cache(maxsize=None)
class _SentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """seqio's vocabulary, loading a remote model file through xmtf_jax.paths (a cached local copy):
  seqio reads it with tf.io.gfile, which cannot reach a GCS emulator. The recorded path (what
  `sentencepiece_model_file` gives, e.g. in checkpoints) stays the URL."""

  def _model_context(self):
    if self._model or not paths.is_remote(self._sentencepiece_model_file):
      return super()._model_context()
    url = self._sentencepiece_model_file
    self._sentencepiece_model_file = paths.cached_local_copy(url)
    try:
      return super()._model_context()
    finally:
      self._sentencepiece_model_file = url


def vocabulary(path: str) -> seqio.SentencePieceVocabulary:
  """A SentencePiece vocabulary with no extra ids (mT5's 100 sentinels are inside the model).

  Loaded lazily on first use, so naming a gs:// model does not download anything at registration.
  Relative paths that do not exist from the working directory are taken from the repository root.
  """
  return _SentencePieceVocabulary(paths.repo_path(path), extra_ids=0)


def output_features(vocab: seqio.Vocabulary, add_eos_to_inputs: bool = False) -> dict:
  return {
      "inputs": seqio.Feature(vocab, add_eos=add_eos_to_inputs, required=True),
      "targets": seqio.Feature(vocab, add_eos=True, required=True),
  }


def preprocessors(task_name: str) -> list:
  return [
      seqio.preprocessors.tokenize,
      functools.partial(truncation.count_truncation, task_name=task_name),
      seqio.preprocessors.append_eos_after_trim,
  ]


def add_jsonl_task(name: str, files: Mapping[str, Sequence[str]], *, vocab: seqio.Vocabulary,
                   add_eos_to_inputs: bool = False, strict: Optional[bool] = None,
                   schema: RecordSchema = RecordSchema(),
                   count_fn: Optional[Callable[[Sequence[str]], int]] = None,
                   metric_fns: Sequence[Callable] = (), postprocess_fn: Optional[Callable] = None,
                   shuffle_buffer_size: int = 1_000, overwrite: bool = False) -> seqio.Task:
  """Registers a seqio Task reading `{split: [.jsonl paths or globs]}` with `inputs`/`targets` records.

  strict None (default): bad lines and missing files are errors or are skipped and counted as the
  run's DATA_STRICT says (`mixtures.DataConfig.strict`); True/False fixes it for this task.
  metric_fns, postprocess_fn: seqio's, used when the task is decoded during training
  (`zero_shot_eval_hook.generation_tasks`; a task without metric_fns gets BLEU and ROUGE):
  `fn(targets, predictions) -> {name: value}` (seqio files those taking `scores` under
  `score_metric_fns`); `postprocess_fn(text, example=, is_target=)` runs on both texts first.
  """
  if overwrite and name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  source = JsonlDataSource(name, files, schema=schema, strict=strict, count_fn=count_fn)
  return seqio.TaskRegistry.add(
      name, source=source, output_features=output_features(vocab, add_eos_to_inputs),
      preprocessors=preprocessors(name), postprocess_fn=postprocess_fn,
      metric_fns=list(metric_fns), shuffle_buffer_size=shuffle_buffer_size)


def add_mixture(name: str, tasks_and_rates, *, overwrite: bool = False) -> seqio.Mixture:
  """Registers a seqio Mixture of `[(task name, rate or rate function of the Task)]`."""
  if overwrite and name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, list(tasks_and_rates))


def get_mixture_or_task(name: str):
  """seqio's lookup; an unknown name is an error that lists close names and how names get there."""
  known = set(seqio.MixtureRegistry.names()) | set(seqio.TaskRegistry.names())
  if name not in known:
    close = difflib.get_close_matches(name, sorted(known), n=5)
    raise ValueError(
        f"no seqio task or mixture named {name!r}" + (f"; did you mean {close}?" if close else ".")
        + " Tasks come from modules the command imports: the project's `mixtures` (demo, and the "
        "xP3 family once its data root is set: XP3_DATA_DIR), or yours (gin: `import my_module`).")
  return seqio.get_mixture_or_task(name)
