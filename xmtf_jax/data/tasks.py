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
from xmtf_jax.data import bpe_vocabulary, truncation
from xmtf_jax.data.config import MT5_VOCABULARY_PATH, DataConfig
from xmtf_jax.data.jsonl_source import JsonlDataSource, RecordSchema
from xmtf_jax.errors import UserError


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


SENTENCEPIECE_FILES = ("spiece.model", "sentencepiece.model")


@functools.lru_cache(maxsize=None)
def _shared_vocabulary(path: str) -> seqio.Vocabulary:
  if bpe_vocabulary.is_tokenizer_file(path):
    return bpe_vocabulary.BpeVocabulary(path)
  return _SentencePieceVocabulary(path, extra_ids=0)


def vocabulary_file(path: str) -> str:
  """The vocabulary file a path names: the path itself, or for a folder (an HF folder) its
  SentencePiece model (spiece.model, sentencepiece.model) or else its tokenizer.json. Only a path
  that is neither a `.model` nor a `.json` file is looked into."""
  if path.endswith((".model", ".json")) or not paths.isdir(path):
    return path
  for name in SENTENCEPIECE_FILES + (bpe_vocabulary.TOKENIZER_FILE,):
    if paths.exists(paths.join(path, name)):
      return paths.join(path, name)
  raise UserError(f"{path} is a folder with no vocabulary in it: looked for "
                   f"{', '.join(SENTENCEPIECE_FILES + (bpe_vocabulary.TOKENIZER_FILE,))}")


def vocabulary(path: str) -> seqio.Vocabulary:
  """The vocabulary of a file: a SentencePiece model (mT5's kind; no extra ids, mT5's 100 sentinels
  are inside the model) or, for an HF `tokenizer.json` (BLOOM's kind), a `BpeVocabulary`. A folder
  gives its spiece.model, else its tokenizer.json (`vocabulary_file`).

  Loaded lazily on first use, so naming a gs:// model does not download anything at registration.
  Relative paths that do not exist from the working directory are taken from the repository root.
  One object per file (local paths made absolute): tasks naming it share its loaded model and are
  equal, as seqio requires of the tasks of a mixture.
  """
  return _shared_vocabulary(vocabulary_file(paths.abspath(paths.repo_path(path))))


def resolved(vocab: seqio.Vocabulary) -> seqio.Vocabulary:
  """The vocabulary a `RunVocabulary` stands for now (any other as it is)."""
  return vocab.resolve() if isinstance(vocab, RunVocabulary) else vocab


def path_of(vocab: seqio.Vocabulary) -> Optional[str]:
  """The file a vocabulary was loaded from (SentencePiece model or tokenizer.json), None for others:
  what a checkpoint records as its vocabulary path."""
  vocab = resolved(vocab)
  return (getattr(vocab, "sentencepiece_model_file", None)
          or getattr(vocab, "tokenizer_file", None))


class RunVocabulary(_SentencePieceVocabulary):
  """The vocabulary of whatever VOCABULARY_PATH the run registers its tasks with, looked up at each
  use (tokenizing, sizes, the path recorded in checkpoints), so a task defined at import, before gin
  is parsed, still follows `--gin.VOCABULARY_PATH`: `mixtures.register_for(name, config)` binds the
  RunVocabulary of `name`'s tasks to `config.vocabulary_path` (`configure_tasks`); unbound, it is
  mT5's. Equal to `vocabulary(that path)`: it mixes with xP3's tasks. Bound to a tokenizer.json it
  hands every call to that `BpeVocabulary`."""

  def __init__(self, path: Optional[str] = None):
    super().__init__("", extra_ids=0)
    self._bound_path = path

  def bind(self, path: str) -> None:
    self._bound_path = path

  def resolve(self) -> seqio.Vocabulary:
    return vocabulary(self._bound_path or MT5_VOCABULARY_PATH)

  def _model_context(self):
    return self.resolve()._model_context()  # the shared, cached model of that file

  @property
  def sentencepiece_model_file(self) -> Optional[str]:
    return getattr(self.resolve(), "sentencepiece_model_file", None)

  @property
  def tokenizer_file(self) -> Optional[str]:
    return getattr(self.resolve(), "tokenizer_file", None)

  @property
  def tokenizer(self):
    return self.resolve().tokenizer

  # Everything a vocabulary does, by the resolved one (SentencePiece or BPE).
  encode = property(lambda self: self.resolve().encode)
  decode = property(lambda self: self.resolve().decode)
  encode_tf = property(lambda self: self.resolve().encode_tf)
  decode_tf = property(lambda self: self.resolve().decode_tf)
  eos_id = property(lambda self: self.resolve().eos_id)
  pad_id = property(lambda self: self.resolve().pad_id)
  unk_id = property(lambda self: self.resolve().unk_id)
  bos_id = property(lambda self: self.resolve().bos_id)
  vocab_size = property(lambda self: self.resolve().vocab_size)
  _base_vocab_size = property(lambda self: self.resolve()._base_vocab_size)

  def __eq__(self, other) -> bool:
    other = other.resolve() if isinstance(other, RunVocabulary) else other
    return self.resolve() == other

  def __getstate__(self):  # what seqio's __eq__ compares (mixtures require equal vocabularies)
    return self.resolve().__getstate__()

  def __reduce__(self):  # pickled (gin copies, workers) as "the run's", with the path bound now
    return RunVocabulary, (self._bound_path,)


def run_vocabulary() -> RunVocabulary:
  """The run's vocabulary (gin VOCABULARY_PATH; mT5's until bound) for tasks of your own modules:
  `add_jsonl_task(..., vocab=run_vocabulary())` instead of naming a file."""
  return RunVocabulary()


def tasks_of(provider) -> list[seqio.Task]:
  """The tasks of a mixture, or [the task]."""
  return list(provider.tasks) if isinstance(provider, seqio.Mixture) else [provider]


def configure_tasks(name: str, config: DataConfig) -> None:
  """Hands `config` to the tasks of mixture or task `name`: their JSON-lines sources follow its
  strictness where they set none, their `run_vocabulary()` resolves to its vocabulary path. Then
  checks that a mixture's tasks share one vocabulary (`check_one_vocabulary`)."""
  provider = get_mixture_or_task(name)
  for task in tasks_of(provider):
    if isinstance(task.source, JsonlDataSource):
      task.source.configure(config)
    for feature in task.output_features.values():
      if isinstance(feature.vocabulary, RunVocabulary):
        feature.vocabulary.bind(config.vocabulary_path)
  check_one_vocabulary(name, tasks_of(provider))


def _vocabulary_key(vocab: seqio.Vocabulary) -> Optional[tuple[str, int]]:
  """(SentencePiece model or tokenizer file, extra ids) of a vocabulary, named, not loaded; None for
  other kinds."""
  path = path_of(vocab)
  return (path, getattr(vocab, "extra_ids", 0)) if path else None


def check_one_vocabulary(name: str, task_list: Sequence[seqio.Task]) -> None:
  """A UserError naming the tasks of mixture `name` and the vocabularies they use when these differ.

  Compares the model files' names without loading them: seqio would compare the loaded models
  (downloading a gs:// file first, mT5's by default) and then say only "same output features"."""
  by_vocabulary: dict[tuple[str, int], list[str]] = {}
  follows_run: set[tuple[str, int]] = set()
  for task in task_list:
    for feature in task.output_features.values():
      key = _vocabulary_key(feature.vocabulary)
      if key is None:
        return  # neither SentencePiece nor BPE: seqio's own comparison decides
      if isinstance(feature.vocabulary, RunVocabulary):
        follows_run.add(key)
      names = by_vocabulary.setdefault(key, [])
      if task.name not in names:
        names.append(task.name)
  if len(by_vocabulary) <= 1:
    return

  def described(key, names):
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    path, extra = key
    return (f"{shown} {'uses' if len(names) == 1 else 'use'} {path}" + (f" + {extra} extra ids" if extra else "")
            + (" (the run's VOCABULARY_PATH)" if key in follows_run else ""))

  uses = "; ".join(described(key, names) for key, names in by_vocabulary.items())
  fixed = [key[0] for key in by_vocabulary if key not in follows_run]
  hint = f" (here: --gin.VOCABULARY_PATH=\"'{fixed[0]}'\")" if follows_run and len(fixed) == 1 else ""
  raise UserError(
      f"the tasks of mixture {name!r} use different vocabularies: {uses}. All tasks of a mixture "
      f"must share one vocabulary: give your tasks the vocabulary of the tasks you mix them with; "
      f"tasks made with vocab=run_vocabulary() follow VOCABULARY_PATH{hint}.")


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
  DataConfig the task is registered for says (`mixtures.register_for`, gin DATA_STRICT; strict
  until then); True/False fixes it for this task.
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


def registered_names() -> set[str]:
  """Every seqio mixture and task name registered in this process."""
  return set(seqio.MixtureRegistry.names()) | set(seqio.TaskRegistry.names())


def get_mixture_or_task(name: str):
  """seqio's lookup; an unknown name is an error that lists close names and how names get there."""
  known = registered_names()
  if name not in known:
    close = difflib.get_close_matches(name, sorted(known), n=5)
    raise UserError(
        f"no seqio task or mixture named {name!r}" + (f"; did you mean {close}?" if close else ".")
        + " Tasks come from modules the command imports: the project's `mixtures` (demo, and the "
        "xP3 family once its data root is set: XP3_DATA_DIR), or yours (gin: `import my_module`).")
  return seqio.get_mixture_or_task(name)
