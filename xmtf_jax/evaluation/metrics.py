"""seqio metric functions for generation tasks: BLEU (sacrebleu) and ROUGE (rouge-score).

Both follow seqio's `metric_fns` contract, `fn(targets, predictions) -> {name: value}`, with
strings in and scores in 0-100. Use them in a task definition:

    seqio.Task(..., metric_fns=[xmtf_jax.metrics.bleu, xmtf_jax.metrics.rouge])

xP3 is multilingual, so ROUGE uses a tokenizer that keeps every script (rouge-score's default drops
all non-ASCII characters, which would score Chinese or Hindi as 0): text is lower-cased, split on
whitespace and punctuation, and each CJK / Thai / Japanese character is a token of its own.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Sequence

import sacrebleu
from rouge_score import rouge_scorer

# Scripts written without spaces between words: one token per character.
_CHARACTER_SCRIPTS = re.compile(
    "([\u0e00-\u0e7f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af])")


class MultilingualTokenizer:
  """rouge-score tokenizer (has `tokenize(text) -> list[str]`) that works for every script."""

  def tokenize(self, text: str) -> list[str]:
    text = _CHARACTER_SCRIPTS.sub(r" \1 ", text.lower())
    tokens = []
    for word in text.split():
      current = []
      for ch in word:
        if unicodedata.category(ch).startswith("P"):
          if current:
            tokens.append("".join(current))
            current = []
        else:
          current.append(ch)
      if current:
        tokens.append("".join(current))
    return tokens


def bleu(targets: Sequence[str], predictions: Sequence[str], tokenize: str = "13a") -> dict:
  """Corpus BLEU (sacrebleu, one reference per example). `tokenize`: a sacrebleu tokenizer name
  ("13a" default; "zh" or "char" for Chinese/Japanese targets)."""
  _check_lengths(targets, predictions)
  result = sacrebleu.corpus_bleu(list(predictions), [list(targets)], tokenize=tokenize)
  return {"bleu": float(result.score)}


def rouge(targets: Sequence[str], predictions: Sequence[str],
          score_keys: Sequence[str] = ("rouge1", "rouge2", "rougeLsum")) -> dict:
  """Mean ROUGE F-measures over examples (x100), with the multilingual tokenizer above."""
  _check_lengths(targets, predictions)
  scorer = rouge_scorer.RougeScorer(list(score_keys), tokenizer=MultilingualTokenizer())
  totals = dict.fromkeys(score_keys, 0.0)
  for target, prediction in zip(targets, predictions):
    for key, score in scorer.score(target, prediction).items():  # rougeLsum splits on newlines
      totals[key] += score.fmeasure
  # A plain mean (not rouge-score's bootstrap aggregate, which resamples at random).
  return {key: 100 * total / max(len(targets), 1) for key, total in totals.items()}


def _check_lengths(targets: Sequence[str], predictions: Sequence[str]) -> None:
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
