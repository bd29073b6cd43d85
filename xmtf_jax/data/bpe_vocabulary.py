"""BLOOM's byte-level BPE tokenizer (an HF `tokenizer.json`) as a seqio vocabulary.

    vocab = BpeVocabulary("/models/bloomz-560m/tokenizer.json")    # or gs://...
    vocab.encode("Hello world")            # no BOS/EOS added, as BLOOM's tokenizer
    vocab.decode(ids)                      # up to the first EOS, nothing skipped before it

seqio's tasks, both input pipelines and decoding use it like a SentencePieceVocabulary: special ids
come from the file's tokens (<unk>, <s>, </s>, <pad>: BLOOM's 0, 1, 2, 3), the TF variants wrap the
Python tokenizer (`tf.numpy_function`), and two vocabularies of one file are equal (seqio checks
that the tasks of a mixture share one). The file is read on first use, so naming a gs:// file at
task registration downloads nothing; pickling keeps the path only.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf
import tokenizers

from xmtf_jax import paths
from xmtf_jax.errors import UserError

TOKENIZER_FILE = "tokenizer.json"
# Token strings of the special ids, with BLOOM's ids (what `tests/bpe_fixture.py` trains too).
SPECIAL_TOKENS = {"unk": "<unk>", "bos": "<s>", "eos": "</s>", "pad": "<pad>"}
BLOOM_IDS = {"unk": 0, "bos": 1, "eos": 2, "pad": 3}


class BpeVocabulary(seqio.Vocabulary):
  """An HF `tokenizers` tokenizer file as a seqio vocabulary (module docstring)."""

  def __init__(self, tokenizer_file: str):
    super().__init__(extra_ids=0)
    self._tokenizer_file = tokenizer_file
    self._tokenizer: Optional[tokenizers.Tokenizer] = None
    self._special: dict[str, Optional[int]] = {}

  @property
  def tokenizer_file(self) -> str:
    """The path given (local or gs://): what checkpoints record and equality compares."""
    return self._tokenizer_file

  @property
  def tokenizer(self) -> tokenizers.Tokenizer:
    if self._tokenizer is None:
      try:
        text = paths.read_bytes(self._tokenizer_file).decode("utf-8")
      except FileNotFoundError:
        raise UserError(f"no tokenizer file {self._tokenizer_file} (VOCABULARY_PATH)") from None
      tokenizer = tokenizers.Tokenizer.from_str(text)
      special = {k: tokenizer.token_to_id(token) for k, token in SPECIAL_TOKENS.items()}
      missing = [SPECIAL_TOKENS[k] for k in ("eos", "pad") if special[k] is None]
      if missing:
        raise UserError(f"{self._tokenizer_file} has no {' or '.join(missing)} token: the "
                         "decoder-only layout needs BLOOM's </s> (EOS) and <pad>")
      self._special, self._tokenizer = special, tokenizer
    return self._tokenizer

  def _id(self, kind: str) -> Optional[int]:
    self.tokenizer  # noqa: B018  (loads the file)
    return self._special[kind]

  @property
  def unk_id(self) -> Optional[int]:
    return self._id("unk")

  @property
  def bos_id(self) -> Optional[int]:
    return self._id("bos")

  @property
  def eos_id(self) -> int:
    return self._id("eos")

  @property
  def pad_id(self) -> int:
    return self._id("pad")

  @property
  def _base_vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def _encode(self, s: str) -> Sequence[int]:
    return self.tokenizer.encode(s, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """`encode` of each text (one call into the Rust tokenizer)."""
    return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

  def _decode(self, ids) -> str:
    ids = [int(i) for i in ids]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    return self.tokenizer.decode(ids, skip_special_tokens=False)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    s = tf.convert_to_tensor(s, tf.string)
    if s.shape.rank != 0:
      raise ValueError(f"BpeVocabulary.encode_tf takes one string (a scalar), not shape {s.shape}")
    def encode(text):
      return np.asarray(self._encode(np.asarray(text).item().decode("utf-8")), np.int32)

    ids = tf.numpy_function(encode, [s], tf.int32, stateful=False)
    ids.set_shape([None])
    return ids

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    ids = tf.convert_to_tensor(ids)

    def decode(array):
      if array.ndim == 1:
        return np.asarray(self._decode(array).encode("utf-8"), object)
      return np.asarray([self._decode(row).encode("utf-8") for row in array], object)

    out = tf.numpy_function(decode, [ids], tf.string, stateful=False)
    out.set_shape(ids.shape[:-1])
    return out

  def __eq__(self, other):
    if not isinstance(other, BpeVocabulary):
      return NotImplemented  # e.g. data.tasks.RunVocabulary compares by what it resolves to
    return paths.abspath(self._tokenizer_file) == paths.abspath(other._tokenizer_file)

  def __hash__(self) -> int:
    return hash((BpeVocabulary, paths.abspath(self._tokenizer_file)))

  def __getstate__(self):
    return {"tokenizer_file": self._tokenizer_file}

  def __setstate__(self, state) -> None:
    self.__init__(state["tokenizer_file"])

  def __repr__(self) -> str:
    return f"BpeVocabulary({self._tokenizer_file!r})"


def is_tokenizer_file(path: str) -> bool:
  """Whether `path` names an HF tokenizer file (by name: nothing is read)."""
  return str(path).endswith(".json")
