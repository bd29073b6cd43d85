"""The SentencePiece vocabulary that goes with a model path (a seqio vocabulary, hence apart from
`pretrained.py`, which imports neither seqio nor TensorFlow).

    vocabulary = load_vocabulary(model_path)
"""
from __future__ import annotations

from typing import Optional, Union

import seqio

from xmtf_jax import paths
from xmtf_jax.checkpoint.model_path import ModelPath, open_model_path
from xmtf_jax.data import tasks
from xmtf_jax.errors import MissingPathError


def load_vocabulary(model_path: Optional[Union[str, ModelPath]], vocabulary_path: Optional[str] = None
                    ) -> seqio.SentencePieceVocabulary:
  """`vocabulary_path` if given; else `spiece.model` (or `sentencepiece.model`) in the model's folder
  (as HF folders and our exports hold it); else the one a training checkpoint recorded."""
  candidates = [vocabulary_path] if vocabulary_path else []
  if not (candidates and paths.exists(vocabulary_path)) and model_path:
    candidates += open_model_path(model_path).vocabulary_candidates()
  for candidate in candidates:
    if paths.exists(candidate):
      return tasks.vocabulary(paths.abspath(candidate))
  raise MissingPathError(f"no SentencePiece model: looked for {candidates}; set vocabulary_path "
                          "(e.g. --gin.evaluate.vocabulary_path=\"'/path/spiece.model'\")")
