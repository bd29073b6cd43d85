"""The decoder-only example layout (BLOOMZ's finetuning data), in numpy: both input pipelines use it.

An example is s = tok(inputs) ++ tok(" " + targets) ++ [EOS]: inputs and " " + targets tokenized
separately (the space is added here, tasks keep their raw text), no BOS, no EOS after the inputs;
inputs truncated to I tokens, targets (EOS kept) to T, with I, T the TASK_FEATURE_LENGTHS. In a row of
L = I + T positions the example takes len(s) - 1 of them:

  decoder_input_tokens   s[:-1]
  decoder_target_tokens  s[1:]
  decoder_loss_weights   1 where the target position holds a target token (the final EOS included),
                         0 on input positions
  decoder_segment_ids    1, 2, ... per example of the row, 0 on padding (also unpacked: 1 / 0)
  decoder_positions      0, 1, ... within each example, 0 on padding

Padding is the vocabulary's pad id (BLOOM's <pad> = 3); masks come from the segment ids. Packing is
next-fit as the pipelines pack: an example that does not fit starts the next row. With
'average_per_sequence' loss normalisation over segments this is BLOOMZ's --norm-target-loss.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

ENCODER_DECODER = "encoder_decoder"
DECODER_ONLY = "decoder_only"
LAYOUTS = (ENCODER_DECODER, DECODER_ONLY)

FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
            "decoder_segment_ids", "decoder_positions")


def row_length(task_feature_lengths: Mapping[str, int]) -> int:
  """L = I + T: the positions of a decoder-only row."""
  return int(task_feature_lengths["inputs"]) + int(task_feature_lengths["targets"])


def trim(inputs: Sequence[int], targets: Sequence[int], eos_id: int,
         task_feature_lengths: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(inputs[:I], targets[:T-1] + [EOS], truncation counts in `stats.FIELDS` order) of an example
  whose targets are already tokenized with their leading space (EOS not yet appended)."""
  limit_in, limit_out = int(task_feature_lengths["inputs"]), int(task_feature_lengths["targets"])
  n_in, n_out = len(inputs), len(targets) + 1
  cut_in, cut_out = max(n_in - limit_in, 0), max(n_out - limit_out, 0)
  counts = np.array([1, n_in, int(cut_in > 0), cut_in, n_out, int(cut_out > 0), cut_out], np.int64)
  return (np.asarray(list(inputs)[:limit_in], np.int32),
          np.asarray(list(targets)[:limit_out - 1] + [eos_id], np.int32), counts)


def target_text(targets: str) -> str:
  """What the targets are tokenized from: BLOOMZ's --prepend-space."""
  return " " + targets


def size(example) -> int:
  """Positions the example takes in a row: len(inputs) + len(targets) - 1."""
  inputs, targets = example[0], example[1]
  return max(len(inputs) + len(targets) - 1, 0)


def _write(out: Mapping[str, np.ndarray], r: int, at: int, example, segment: int) -> int:
  inputs, targets = np.asarray(example[0], np.int32), np.asarray(example[1], np.int32)
  s = np.concatenate([inputs, targets])
  n = size(example)
  if not n:
    return at
  out["decoder_input_tokens"][r, at:at + n] = s[:-1]
  out["decoder_target_tokens"][r, at:at + n] = s[1:]
  weights = np.ones(n, np.int32)
  weights[:max(len(inputs) - 1, 0)] = 0  # position j predicts s[j+1], a target from len(inputs) - 1
  out["decoder_loss_weights"][r, at:at + n] = weights
  out["decoder_segment_ids"][r, at:at + n] = segment
  out["decoder_positions"][r, at:at + n] = np.arange(n)
  return at + n


def _empty(rows: int, length: int, pad_id: int) -> dict[str, np.ndarray]:
  out = {k: np.zeros((rows, length), np.int32) for k in FEATURES}
  out["decoder_input_tokens"][:] = pad_id
  out["decoder_target_tokens"][:] = pad_id
  return out


def packed_features(rows_of_examples: Sequence[Sequence], task_feature_lengths: Mapping[str, int],
                    pad_id: int) -> dict[str, np.ndarray]:
  """Rows of the given examples (each row's examples must fit: sum of `size` <= L), packed."""
  length = row_length(task_feature_lengths)
  out = _empty(len(rows_of_examples), length, pad_id)
  for r, examples in enumerate(rows_of_examples):
    at = 0
    for segment, example in enumerate(examples, start=1):
      at = _write(out, r, at, example, segment)
  return out


def unpacked_features(examples: Sequence, task_feature_lengths: Mapping[str, int],
                      pad_id: int) -> dict[str, np.ndarray]:
  """One example per row (an empty example gives an all-padding row)."""
  return packed_features([[ex] if len(ex[0]) + len(ex[1]) else [] for ex in examples],
                         task_feature_lengths, pad_id)
