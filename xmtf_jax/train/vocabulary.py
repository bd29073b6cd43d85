"""The vocabulary that goes with a model path (a seqio vocabulary, hence apart from
`pretrained.py`, which imports neither seqio nor TensorFlow): a SentencePiece model (mT5) or an HF
tokenizer.json (BLOOM, `data.bpe_vocabulary.BpeVocabulary`).

    vocabulary = load_vocabulary(model_path)
"""
from __future__ import annotations

from typing import Optional, Union

import seqio

from xmtf_jax import paths
from xmtf_jax.checkpoint.model_path import ModelPath, open_model_path
from xmtf_jax.data import bpe_vocabulary, tasks
from xmtf_jax.errors import MissingPathError


def load_vocabulary(model_path: Optional[Union[str, ModelPath]], vocabulary_path: Optional[str] = None
                    ) -> seqio.Vocabulary:
  """`vocabulary_path` if given (a SentencePiece model, a tokenizer.json or a folder holding one);
  else `spiece.model` (or `sentencepiece.model`) in the model's folder (as HF mT5 folders and our
  exports hold it), else its `tokenizer.json` (HF BLOOM folders); else the one a training checkpoint
  recorded."""
  candidates = [vocabulary_path] if vocabulary_path else []
  if not (candidates and paths.exists(vocabulary_path)) and model_path:
    opened = open_model_path(model_path)
    names = opened.names or frozenset()
    if bpe_vocabulary.TOKENIZER_FILE in names and not names & set(tasks.SENTENCEPIECE_FILES):
      candidates.append(paths.join(opened.path, bpe_vocabulary.TOKENIZER_FILE))
    candidates += opened.vocabulary_candidates()
  for candidate in candidates:
    if paths.exists(candidate):
      return tasks.vocabulary(paths.abspath(candidate))
  raise MissingPathError(f"no vocabulary (SentencePiece model or tokenizer.json): looked for "
                          f"{candidates}; set vocabulary_path (e.g. "
                          "--gin.evaluate.vocabulary_path=\"'/path/spiece.model'\")")
