"""The tokenizer files of an exported HF folder, from the SentencePiece model we trained with.

HF's `T5Tokenizer` (transformers 5.x) rebuilds its pipeline from `spiece.model` with fixed choices:
the model's normaliser (precompiled charsmap), whitespace split with runs of whitespace dropped, a
"▁" prefix, Unigram *without byte fallback*. That reproduces SentencePiece's ids exactly for models
trained like mT5's (nmt_nfkc normalisation, extra whitespace removed, no byte fallback), and not for
others: with byte fallback, characters outside the vocabulary become `<unk>` instead of byte pieces;
with whitespace kept, spaces are lost. So:

  - compatible models trained on inputs ending in EOS get `tokenizer_class: T5Tokenizer` (what every
    mT5/mT0 folder uses);
  - the others get a `tokenizer.json` that spells out SentencePiece's pipeline for the `tokenizers`
    library (written here as JSON: no runtime dependency) and `tokenizer_class:
    PreTrainedTokenizerFast`, which loads that file as is.

EOS: `tokenizer(text)` must give the ids the model was trained on (and `xmtf_jax.infer` feeds), so
the folder appends EOS only for a model trained with `add_eos_to_inputs` (`add_eos`). T5Tokenizer
always appends it (transformers 5.23 hard-codes its post-processor and ignores `add_eos_token`), so a
model trained without EOS gets the tokenizer.json, whose post-processor appends nothing (transformers
drops `add_eos_token` from tokenizer_config.json whenever a tokenizer.json is present, so the
post-processor is the one place that decides).

Either way `tokenizer_config.json` says `extra_ids: 0`: mT5's 100 sentinels are inside its vocabulary,
and T5Tokenizer's default would append 100 more. The tests compare encodings with seqio's
`SentencePieceVocabulary` on multilingual text for both kinds.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import logging
from typing import Any, Union

from xmtf_jax import paths
from xmtf_jax.errors import UserError

log = logging.getLogger(__name__)

SPACE = "\u2581"  # SentencePiece's visible space "▁"
# Effectively unlimited, as HF writes for tokenizers without a model maximum (mT5 has no fixed one).
MODEL_MAX_LENGTH = 1_000_000_000_000_000_019_884_624_838_656


@dataclasses.dataclass(frozen=True)
class SentencePieceInfo:
  """What decides how HF can reproduce a SentencePiece model."""
  pieces: list[tuple[str, float, int]]  # (piece, score, type) in id order
  normalizer_name: str
  precompiled_charsmap: bytes
  add_dummy_prefix: bool
  remove_extra_whitespaces: bool
  byte_fallback: bool
  treat_whitespace_as_suffix: bool
  pad_id: int
  eos_id: int
  unk_id: int

  @property
  def t5_tokenizer_compatible(self) -> bool:
    return (not self.byte_fallback and self.add_dummy_prefix and self.remove_extra_whitespaces
            and not self.treat_whitespace_as_suffix)


def read_sentencepiece(model_bytes: bytes, origin: str = "spiece.model") -> SentencePieceInfo:
  """Parses a SentencePiece model and checks mT5's special ids (pad 0, eos 1, unk 2)."""
  from sentencepiece import sentencepiece_model_pb2

  proto = sentencepiece_model_pb2.ModelProto()
  try:
    proto.ParseFromString(model_bytes)
  except Exception as e:  # protobuf's DecodeError; the type lives in a private module
    raise UserError(f"{origin}: not a SentencePiece model ({e})") from e
  trainer, normalizer = proto.trainer_spec, proto.normalizer_spec
  if trainer.model_type != trainer.UNIGRAM:
    raise UserError(f"{origin}: a {trainer.ModelType.Name(trainer.model_type)} SentencePiece model; "
                    "mT5 exports need a UNIGRAM model (as mT5's own)")
  info = SentencePieceInfo(
      pieces=[(p.piece, p.score, p.type) for p in proto.pieces],
      normalizer_name=normalizer.name, precompiled_charsmap=bytes(normalizer.precompiled_charsmap),
      add_dummy_prefix=normalizer.add_dummy_prefix,
      remove_extra_whitespaces=normalizer.remove_extra_whitespaces,
      byte_fallback=trainer.byte_fallback, treat_whitespace_as_suffix=trainer.treat_whitespace_as_suffix,
      pad_id=trainer.pad_id, eos_id=trainer.eos_id, unk_id=trainer.unk_id)
  ids = (info.pad_id, info.eos_id, info.unk_id)
  if ids != (0, 1, 2):
    raise UserError(f"{origin}: special ids pad/eos/unk are {ids}; mT5 models use (0, 1, 2), and HF's "
                    "MT5 config and generation settings assume them")
  return info


@dataclasses.dataclass(frozen=True)
class TokenizerFiles:
  """The vocabulary files of an exported folder (either family), checked before anything is written."""
  files: dict[str, Union[str, bytes]]  # {file name: text or bytes}, in the order they are written
  tokenizer_class: str                 # tokenizer_config.json's, for the model card


def sentencepiece_folder_files(vocabulary_path: str, config: Any, add_eos: bool) -> TokenizerFiles:
  """mT5's tokenizer files: `spiece.model` (a copy of `vocabulary_path`) and `tokenizer_files`. Refuses
  a model with more pieces than the config's vocabulary (not the one it was trained with)."""
  spm_bytes = paths.read_bytes(vocabulary_path)
  info = read_sentencepiece(spm_bytes, origin=vocabulary_path)
  if len(info.pieces) > config.vocab_size:
    raise UserError(f"{vocabulary_path} has {len(info.pieces)} pieces but the model's vocabulary is "
                     f"{config.vocab_size}: it is not the vocabulary this model was trained with")
  files = tokenizer_files(info, add_eos)
  tokenizer_class = json.loads(files["tokenizer_config.json"])["tokenizer_class"]
  if not info.t5_tokenizer_compatible:  # (a compatible model trained without EOS: see the docstring)
    log.info("the SentencePiece model uses %s; T5Tokenizer cannot reproduce it, so the folder holds "
             "a tokenizer.json (tokenizer_class %s) that does",
             "byte fallback" if info.byte_fallback else "whitespace-preserving normalisation",
             tokenizer_class)
  return TokenizerFiles({"spiece.model": spm_bytes, **files}, tokenizer_class)


def tokenizer_files(info: SentencePieceInfo, add_eos: bool) -> dict[str, str]:
  """{file name: JSON text} to write beside `spiece.model` (which the caller copies); `add_eos`:
  whether `tokenizer(text)` appends EOS (the model was trained on inputs ending in it)."""
  pad, eos, unk = (info.pieces[i][0] for i in (info.pad_id, info.eos_id, info.unk_id))
  special = {"eos_token": eos, "unk_token": unk, "pad_token": pad}
  config: dict[str, Any] = {
      **special, "model_max_length": MODEL_MAX_LENGTH, "clean_up_tokenization_spaces": False,
      "added_tokens_decoder": {str(i): _added_token(piece) for i, (piece, _, _) in
                               enumerate(info.pieces[:3])},
  }
  files = {"special_tokens_map.json": _dumps(special)}
  if info.t5_tokenizer_compatible and add_eos:
    config.update(tokenizer_class="T5Tokenizer", extra_ids=0, additional_special_tokens=[])
  else:
    config.update(tokenizer_class="PreTrainedTokenizerFast")
    files["tokenizer.json"] = _dumps(tokenizer_json(info, add_eos))
  files["tokenizer_config.json"] = _dumps(config)
  return files


def _dumps(obj: Any) -> str:
  return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def _added_token(content: str) -> dict:
  return dict(content=content, lstrip=False, rstrip=False, normalized=False, single_word=False,
              special=True)


def tokenizer_json(info: SentencePieceInfo, add_eos: bool = True) -> dict:
  """SentencePiece's encoding as a `tokenizers` pipeline (the library's JSON format, version 1.0).

  normalise (charsmap; if the model removes extra whitespace: drop leading/trailing spaces and collapse
  runs; a "▁" prefix if it adds one; spaces -> "▁") -> split before each "▁" -> Unigram with byte
  fallback -> append EOS (if `add_eos`). Decoding undoes it: "▁" -> space, byte pieces -> bytes, drop the prefix.
  """
  normalizers: list[dict] = []
  if info.precompiled_charsmap:
    normalizers.append({"type": "Precompiled",
                        "precompiled_charsmap": base64.b64encode(info.precompiled_charsmap).decode()})
  if info.remove_extra_whitespaces:
    normalizers += [_replace({"Regex": "^ +| +$"}, ""), _replace({"Regex": " {2,}"}, " ")]
  if info.treat_whitespace_as_suffix:
    raise UserError("SentencePiece models with treat_whitespace_as_suffix are not supported")
  if info.add_dummy_prefix:
    normalizers.append({"type": "Prepend", "prepend": SPACE})
  normalizers.append(_replace({"String": " "}, SPACE))
  decoders = [_replace({"String": SPACE}, " "), {"type": "ByteFallback"}, {"type": "Fuse"}]
  if info.add_dummy_prefix:
    decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
  sequence = lambda name: {"Sequence": {"id": name, "type_id": 0}}
  eos_piece = info.pieces[info.eos_id][0]
  ends = [{"SpecialToken": {"id": eos_piece, "type_id": 0}}] if add_eos else []
  return {
      "version": "1.0", "truncation": None, "padding": None,
      "added_tokens": [dict(_added_token(piece), id=i) for i, (piece, _, _) in enumerate(info.pieces[:3])],
      "normalizer": {"type": "Sequence", "normalizers": normalizers},
      "pre_tokenizer": {"type": "Metaspace", "replacement": SPACE, "prepend_scheme": "never",
                        "split": True},
      "post_processor": {"type": "TemplateProcessing", "single": [sequence("A"), *ends],
                         "pair": [sequence("A"), *ends, sequence("B"), *ends],
                         "special_tokens": {eos_piece: {"id": eos_piece, "ids": [info.eos_id],
                                                        "tokens": [eos_piece]}}},
      "decoder": {"type": "Sequence", "decoders": decoders},
      "model": {"type": "Unigram", "unk_id": info.unk_id,
                "vocab": [[piece, score] for piece, score, _ in info.pieces],
                "byte_fallback": info.byte_fallback},
  }


def _replace(pattern: dict, content: str) -> dict:
  return {"type": "Replace", "pattern": pattern, "content": content}


def folder_appends_eos(files: dict[str, str]) -> bool:
  """Whether transformers' tokenizer of an HF folder appends EOS to `tokenizer(text)`, from the
  folder's `tokenizer_config.json` and `tokenizer.json` texts ({name: text}, absent ones left out), so
  a re-export keeps what the folder did. T5Tokenizer / MT5Tokenizer (and a folder without tokenizer
  files, which such a folder's users load as T5Tokenizer) always append it; otherwise a tokenizer.json's
  post-processor decides (none: no EOS, as transformers builds it)."""
  config = json.loads(files.get("tokenizer_config.json") or "{}")
  if config.get("tokenizer_class") in (None, "T5Tokenizer", "T5TokenizerFast", "MT5Tokenizer",
                                       "MT5TokenizerFast"):
    return True
  if "tokenizer.json" in files:
    post = json.loads(files["tokenizer.json"]).get("post_processor")
    if post:
      return any("SpecialToken" in item for item in post.get("single", ()))
  return False
