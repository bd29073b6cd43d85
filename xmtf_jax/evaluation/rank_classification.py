"""Rank classification as the paper evaluates: score every answer choice, predict the best one.

Protocol (t-zero's evaluation): each choice's score is the sum of the log-probabilities of its
tokens, in float32, without length normalisation; the highest score wins (ties: the first choice).
How inputs and choices become tokens is the model family's `PromptFormat`
(`xmtf_jax.model.prompt_format`, `prompt_format(model.config)`):
  mT5 (mT0): the encoder input without EOS, truncated to 512 tokens keeping its beginning,
    right-padded; each choice tokenized as is (no space prepended) with EOS appended (EOS scored).
  BLOOM (BLOOMZ): the input without special tokens, truncated keeping its end and left-padded with
    <pad>; each choice is " " + choice without EOS, right-padded; the model reads concat(input, choice).

Batching: examples are sorted by length and grouped into batches of `batch_size` examples, each with
all of its choices. Lengths are padded up to buckets (powers of two) so a whole evaluation compiles
only a handful of shapes, and the batch is padded with empty rows so its size never changes. A
`ChoiceScorer` (see `make_choice_scorer`) scores all choices of a batch in one call.
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
from xmtf_jax.model.prompt_format import MT5, PromptFormat
from xmtf_jax.parallel.batch_function import BatchFunction, bucket_length

# (input_tokens [B, L_in], choice_target_tokens [B, C, L_t]) -> scores [B, C] float32.
ChoiceScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]

EOS_ID = MT5.eos_id


@dataclasses.dataclass(frozen=True)
class TokenizedExample:
  """One example: input token ids and each choice's ids, as the family's PromptFormat lays them out."""
  input_tokens: np.ndarray
  choice_tokens: tuple[np.ndarray, ...]
  label: int
  key: object = None  # the caller's handle (e.g. (task, index)); carried through untouched


def tokenize_examples(records: Iterable[Mapping], encode: Callable[[str], Sequence[int]], *,
                      max_input_length: int = 512, max_choice_length: int = 256,
                      add_eos_to_inputs: bool = False, keys: Iterable | None = None,
                      prompt_format: PromptFormat = MT5) -> list[TokenizedExample]:
  """Tokenizes rank-classification records (`inputs`, `answer_choices`, `label`).

  `encode` maps text to ids without special tokens (e.g. a seqio vocabulary's `encode`). Inputs are
  cut to `max_input_length` (keeping the beginning, or the end for a left-padding format; EOS appended
  within the limit if `add_eos_to_inputs`, for models trained that way; the paper's protocol feeds no
  EOS); a choice is `prompt_format.choice_ids` (mT5: the choice plus EOS, cut to keep its first
  max_choice_length - 1 tokens and EOS; BLOOM: " " + choice, no EOS).
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
    ids = prompt_format.input_ids(encode(record["inputs"]), max_input_length, add_eos_to_inputs)
    input_ids = np.asarray(ids, np.int32)
    choice_ids = []
    for choice in choices:
      if choice not in choice_cache:
        ids = prompt_format.choice_ids(encode, choice, max_choice_length)
        choice_cache[choice] = np.asarray(ids, np.int32)
      choice_ids.append(choice_cache[choice])
    examples.append(TokenizedExample(input_ids, tuple(choice_ids), label,
                                     next(keys) if keys is not None else len(examples)))
  return examples


@dataclasses.dataclass(frozen=True)
class ChoiceBatch:
  input_tokens: np.ndarray           # [B, L_in] int32, padded with the format's pad id on its side
  choice_target_tokens: np.ndarray   # [B, C, L_t] int32, right-padded with the format's pad id
  example_indices: np.ndarray        # [B] index into the example list, -1 for padding rows


def make_batches(examples: Sequence[TokenizedExample], batch_size: int, *, max_input_length: int = 512,
                 max_choice_length: int = 256, prompt_format: PromptFormat = MT5
                 ) -> Iterator[ChoiceBatch]:
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
    inputs = prompt_format.pad_inputs([examples[i].input_tokens for i in members], input_length,
                                      batch_size)
    choices = np.full((batch_size, num_choices, choice_length), prompt_format.pad_id, np.int32)
    indices = np.full((batch_size,), -1, np.int64)
    for row, i in enumerate(members):
      example = examples[i]
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
                  progress: progress_lib.Progress | None = None,
                  prompt_format: PromptFormat = MT5) -> list[ScoredExample]:
  """Scores every choice of every example (tokenized with the same `prompt_format`); returns
  results in the order of `examples`."""
  results: list[ScoredExample | None] = [None] * len(examples)
  for batch in make_batches(examples, batch_size, max_input_length=max_input_length,
                            max_choice_length=max_choice_length, prompt_format=prompt_format):
    scores = np.asarray(scorer(batch.input_tokens, batch.choice_target_tokens), np.float32)
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


def describe_protocol(prompt_format: PromptFormat, add_eos_to_inputs: bool) -> str:
  """One line naming the protocol (results metadata)."""
  prefix = f"{prompt_format.choice_prefix!r} + " if prompt_format.choice_prefix else ""
  side = "left-padded " if prompt_format.left_pad_inputs else ""
  return (f"rank classification: sum of {prefix}choice log-probs "
          f"{'incl.' if prompt_format.choice_eos else 'without'} EOS, no length normalisation, "
          f"{side}inputs {'with' if add_eos_to_inputs else 'without'} EOS")


def make_choice_scorer(model, params: Any, mesh: Mesh | None = None) -> ChoiceScorer:
  """A numpy-in, numpy-out `ChoiceScorer` over `scoring.choice_scores` for these params: one
  compilation per batch shape, rows over the mesh's `data` axis (see `BatchFunction`)."""
  return functools.partial(BatchFunction(functools.partial(scoring.choice_scores, model), mesh), params)
