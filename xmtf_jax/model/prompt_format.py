"""How a model family lays text out as token rows for scoring and generation: one setting per family.

    fmt = prompt_format(model.config)        # MT5 or BLOOM
    row = fmt.input_ids(ids, max_length, add_eos=False)
    batch = fmt.pad_inputs([row, ...], length)          # [B, length] int32

mT5 (t-zero's protocol for mT0): the encoder input is cut keeping its beginning and right-padded with
0; an answer choice is scored as tokenized, EOS (1) appended. BLOOM (t-zero's `DecoderModel`, as BLOOMZ
was evaluated): the prompt is cut keeping its end and left-padded with <pad> (3), so the choice or the
generated continuation follows its last token directly; a choice is " " + choice without EOS (BLOOM's
tokenizer adds no specials); generation stops at </s> (2). Rank classification, generation and the
commands read these fields and never ask which family they serve.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from xmtf_jax.model.bloom_config import BloomConfig
from xmtf_jax.model.config import T5Config
from xmtf_jax.model.family import family_of


@dataclasses.dataclass(frozen=True)
class PromptFormat:
  """Token layout of prompts, answer choices and generated text for one model family."""
  eos_id: int
  pad_id: int
  # Decoder-only: prompts are left-padded and cut keeping their end (the continuation follows them);
  # encoder-decoder: right-padded, cut keeping their beginning.
  left_pad_inputs: bool
  # Answer choices for rank classification: the text put before each choice and whether EOS ends it.
  choice_prefix: str
  choice_eos: bool
  # Whether generation appends EOS to a prompt unless told otherwise (mT5 xP3 tasks end inputs with
  # EOS; a BLOOM example never has EOS after its inputs).
  eos_after_inputs: bool

  def input_ids(self, ids: Sequence[int], max_length: int, add_eos: bool = False) -> list[int]:
    """A prompt's ids cut to `max_length` (EOS appended within the limit when `add_eos`)."""
    ids = list(ids)
    room = max_length - 1 if add_eos else max_length
    ids = ids[-room:] if self.left_pad_inputs and room > 0 else ids[:max(room, 0)]
    return ids + [self.eos_id] if add_eos else ids

  def choice_ids(self, encode, choice: str, max_length: int) -> list[int]:
    """An answer choice's ids: `encode(choice_prefix + choice)`, cut to `max_length` keeping its
    beginning (EOS last, within the limit, when `choice_eos`)."""
    ids = list(encode(self.choice_prefix + choice))
    return ids[:max_length - 1] + [self.eos_id] if self.choice_eos else ids[:max_length]

  def pad_inputs(self, rows: Sequence[Sequence[int]], length: int, num_rows: int | None = None
                 ) -> np.ndarray:
    """[num_rows, length] int32 prompts padded with `pad_id` on the family's side (rows beyond
    `len(rows)` are all padding)."""
    out = np.full((len(rows) if num_rows is None else num_rows, length), self.pad_id, np.int32)
    for r, ids in enumerate(rows):
      if len(ids) > length:
        raise ValueError(f"prompt of {len(ids)} tokens does not fit {length} positions")
      if len(ids):
        if self.left_pad_inputs:
          out[r, length - len(ids):] = ids
        else:
          out[r, :len(ids)] = ids
    return out

  def generated_ids(self, sequence: Sequence[int]) -> list[int]:
    """The ids of a generated sequence up to (excluding) its first EOS, padding dropped."""
    ids = [int(t) for t in sequence]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    return [t for t in ids if t != self.pad_id]


MT5 = PromptFormat(eos_id=1, pad_id=0, left_pad_inputs=False, choice_prefix="", choice_eos=True,
                   eos_after_inputs=True)
BLOOM = PromptFormat(eos_id=2, pad_id=3, left_pad_inputs=True, choice_prefix=" ", choice_eos=False,
                     eos_after_inputs=False)

FORMATS = {T5Config.family: MT5, BloomConfig.family: BLOOM}


def prompt_format(config: Any) -> PromptFormat:
  """The prompt format of `config`'s model family (a T5Config or BloomConfig)."""
  return FORMATS[family_of(config)]
