"""Rank classification as the paper evaluates: score every answer choice, predict the best one.

Protocol (t-zero's evaluation, used for mT0): the encoder input is the prompt's tokens without EOS,
truncated to 512 tokens; each answer choice is tokenized as is (no space prepended) with EOS
appended; its score is the sum of the log-probabilities of all its tokens including EOS, in float32,
without length normalisation; the highest score wins (ties: the first choice).

Batching: examples are sorted by length and grouped into batches of `batch_size` examples, each with
all of its choices. Lengths are padded up to buckets (powers of two) so a whole evaluation compiles
only a handful of shapes, and the batch is padded with empty rows so its size never changes. A
`ChoiceScorer` (see `make_choice_scorer`) encodes each input once and decodes all
its choices against that encoding.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from jax.sharding import Mesh

from xmtf_jax import progress as progress_lib
from xmtf_jax.errors import UserError
from xmtf_jax.model import scoring
from xmtf_jax.parallel.batch_function import BatchFunction, bucket_length

# (encoder_input_tokens [B, L_in], choice_target_tokens [B, C, L_t]) -> scores [B, C] float32.
ChoiceScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]

EOS_ID = 1


@dataclasses.dataclass(frozen=True)
class TokenizedExample:
  """One example: input token ids (no EOS) and each choice's ids (EOS appended)."""
  input_tokens: np.ndarray
  choice_tokens: tuple[np.ndarray, ...]
  label: int
  key: object = None  # the caller's handle (e.g. (task, index)); carried through untouched


def tokenize_examples(records: Iterable[Mapping], encode: Callable[[str], Sequence[int]], *,
                      max_input_length: int = 512, max_choice_length: int = 256,
                      add_eos_to_inputs: bool = False, keys: Iterable | None = None
                      ) -> list[TokenizedExample]:
  """Tokenizes rank-classification records (`inputs`, `answer_choices`, `label`).

  `encode` maps text to ids without EOS (e.g. a seqio vocabulary's `encode`). Inputs are cut to
  `max_input_length` keeping the beginning (then EOS appended within the limit if
  `add_eos_to_inputs`, for models trained that way; the paper's protocol feeds no EOS); a choice
  longer than `max_choice_length` keeps its first max_choice_length - 1 tokens and EOS.
  """
  examples = []
  keys = iter(keys) if keys is not None else None
  choice_cache: dict[str, np.ndarray] = {}  # answer choices repeat a lot ("Yes", "No", ...)
  for record in records:
    choices = list(record["answer_choices"])
    label = int(record["label"])
    if not choices or not 0 <= label < len(choices):
      raise UserError(f"example {record.get('source', '')}: label {label} is not an index into the "
                      f"answer choices {choices}")
    ids = list(encode(record["inputs"]))
    ids = ids[:max_input_length - 1] + [EOS_ID] if add_eos_to_inputs else ids[:max_input_length]
    input_ids = np.asarray(ids, np.int32)
    choice_ids = []
    for choice in choices:
      if choice not in choice_cache:
        ids = list(encode(choice))[:max_choice_length - 1] + [EOS_ID]
        choice_cache[choice] = np.asarray(ids, np.int32)
      choice_ids.append(choice_cache[choice])
    examples.append(TokenizedExample(input_ids, tuple(choice_ids), label,
                                     next(keys) if keys is not None else len(examples)))
  return examples


@dataclasses.dataclass(frozen=True)
class ChoiceBatch:
  encoder_input_tokens: np.ndarray   # [B, L_in] int32, 0-padded
  choice_target_tokens: np.ndarray   # [B, C, L_t] int32, EOS-terminated, 0-padded
  example_indices: np.ndarray        # [B] index into the example list, -1 for padding rows


def make_batches(examples: Sequence[TokenizedExample], batch_size: int, *, max_input_length: int = 512,
                 max_choice_length: int = 256) -> Iterator[ChoiceBatch]:
  """Groups examples into fixed-size batches of similar length (see the module docstring)."""
  if batch_size <= 0:
    raise UserError(f"batch_size must be positive, got {batch_size}")
  num_choices = max((len(e.choice_tokens) for e in examples), default=1)
  order = sorted(range(len(examples)), key=lambda i: (len(examples[i].input_tokens),
                                                      max(len(c) for c in examples[i].choice_tokens)))
  for start in range(0, len(order), batch_size):
    members = order[start:start + batch_size]
    input_length = bucket_length(max(len(examples[i].input_tokens) for i in members), 8,
                                 bucket_length(max_input_length))
    choice_length = bucket_length(max(len(c) for i in members for c in examples[i].choice_tokens),
                                  4, bucket_length(max_choice_length))
    inputs = np.zeros((batch_size, input_length), np.int32)
    choices = np.zeros((batch_size, num_choices, choice_length), np.int32)
    indices = np.full((batch_size,), -1, np.int64)
    for row, i in enumerate(members):
      example = examples[i]
      inputs[row, :len(example.input_tokens)] = example.input_tokens
      for c, tokens in enumerate(example.choice_tokens):
        choices[row, c, :len(tokens)] = tokens
      indices[row] = i
    yield ChoiceBatch(inputs, choices, indices)


@dataclasses.dataclass(frozen=True)
class ScoredExample:
  example: TokenizedExample
  scores: np.ndarray   # [num choices] float32
  prediction: int

  @property
  def correct(self) -> bool:
    return self.prediction == self.example.label


def rank_classify(scorer: ChoiceScorer, examples: Sequence[TokenizedExample], batch_size: int, *,
                  max_input_length: int = 512, max_choice_length: int = 256,
                  progress: progress_lib.Progress | None = None) -> list[ScoredExample]:
  """Scores every choice of every example; returns results in the order of `examples`."""
  results: list[ScoredExample | None] = [None] * len(examples)
  for batch in make_batches(examples, batch_size, max_input_length=max_input_length,
                            max_choice_length=max_choice_length):
    scores = np.asarray(scorer(batch.encoder_input_tokens, batch.choice_target_tokens), np.float32)
    for row, index in enumerate(batch.example_indices):
      if index < 0:
        continue
      example = examples[index]
      example_scores = scores[row, :len(example.choice_tokens)]
      # argmax picks the first of tied choices, as the paper's evaluation does.
      results[index] = ScoredExample(example, example_scores, int(np.argmax(example_scores)))
    if progress:
      progress.update(int((batch.example_indices >= 0).sum()))
  return results  # type: ignore[return-value]


def make_choice_scorer(model, params: Any, mesh: Mesh | None = None) -> ChoiceScorer:
  """A numpy-in, numpy-out `ChoiceScorer` over `scoring.choice_scores` for these params: one
  compilation per batch shape, rows over the mesh's `data` axis (see `BatchFunction`)."""
  return functools.partial(BatchFunction(functools.partial(scoring.choice_scores, model), mesh), params)
