"""A tiny BLOOM-style byte-level BPE `tokenizer.json`, trained offline (facts file §4).

BLOOM's pre-tokenizer (Split on its regex, isolated, then ByteLevel without prefix space or regex),
no normalizer, ByteLevel decoder and post-processor, specials <unk> <s> </s> <pad> = 0 1 2 3 and the
whole byte alphabet, so every text encodes without <unk>. `tests/conftest.py` builds it once per
session (`bpe_tokenizer_path`).
"""
from __future__ import annotations

import json
import os

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BLOOM_SPLIT = " ?[^(\\s|[.,!?…。，、।۔،])]+"
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]

TRAINING_TEXTS = [
    "Translate to French: the cat sleeps on the mat.", "le chat dort sur le tapis",
    "Is this sentence positive? I loved this film.", "yes", "no",
    "把这句话翻译成英文：猫在垫子上睡觉。", "the cat is sleeping",
    "अंग्रेज़ी में अनुवाद करें: बिल्ली चटाई पर सो रही है", "ترجم إلى الإنجليزية: القطة نائمة",
    "def add(a, b):\n\treturn a + b", "O(1)", "Question: what is 2 + 2? Answer: 4",
]


def build_tokenizer(vocab_size: int = 300) -> Tokenizer:
  tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
  tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(BLOOM_SPLIT), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
  tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tokenizer.train_from_iterator(TRAINING_TEXTS * 5, trainer=trainer)
  return tokenizer


def write_tokenizer_folder(folder: str, vocab_size: int = 300) -> str:
  """An HF tokenizer folder (tokenizer.json + tokenizer_config.json, as BLOOM's); returns the
  tokenizer.json path."""
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, "tokenizer.json")
  build_tokenizer(vocab_size).save(path)
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>", "bos_token": "<s>",
            "eos_token": "</s>", "pad_token": "<pad>", "padding_side": "left",
            "add_prefix_space": False}
  with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
    json.dump(config, f)
  return path
