"""Regenerates the bundled demo mixture (data/demo, data/demo_heldout) deterministically.

    python scripts/make_demo_data.py [--output_root data]

The content is real multilingual data shipped by pinned packages: CLDR names of languages,
countries, months and weekdays (babel) and number words (num2words), rendered with several English
prompts per dataset in xP3's layout ({lang}/xp3_{dataset}_{config}_{split}_{template}.jsonl), plus
held-out rank-classification tasks whose records carry `answer_choices`, and a small SentencePiece
model trained on the demo text (pad 0 / eos 1 / unk 2 like mT5, byte fallback), and a small
byte-level BPE `tokenizer.json` built the way BLOOM's is (its pre-tokenizer; unk/bos/eos/pad 0..3) for
the tiny BLOOM (data/demo_bpe, gin/mixtures/demo_bloom.gin). Running it twice gives byte-identical
files (tests/test_demo_data.py checks this).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import sys

import babel
import num2words
import sentencepiece as spm
import tokenizers
from babel import Locale
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

LANGUAGES = ("ar", "bn", "en", "es", "fr", "id", "pt", "ru", "te", "vi")
HELDOUT_LANGUAGES = ("ar", "en", "es", "ru", "te")
# Languages and countries whose CLDR names are asked for (ISO 639-1 / ISO 3166-1 codes).
NAMED_LANGUAGES = ("af", "am", "ar", "bg", "bn", "ca", "cs", "da", "de", "el", "en", "es", "et",
                   "eu", "fa", "fi", "fr", "gu", "ha", "he", "hi", "hu", "hy", "id", "ig", "it",
                   "ja", "ka", "kn", "ko", "ml", "mr", "ne", "nl", "pa", "pl", "pt", "ro", "ru",
                   "sv", "sw", "ta", "te", "th", "tr", "uk", "ur", "vi", "yo", "zh", "zu")
COUNTRIES = ("AF", "AR", "AT", "AU", "BD", "BE", "BO", "BR", "CA", "CH", "CL", "CM", "CN", "CO",
             "CU", "CZ", "DE", "DK", "DZ", "EC", "EG", "ES", "ET", "FI", "FR", "GB", "GH", "GR",
             "HU", "ID", "IE", "IL", "IN", "IQ", "IR", "IT", "JP", "KE", "KR", "LK", "MA", "MX",
             "MY", "NG", "NL", "NO", "NP", "NZ", "PE", "PH", "PK", "PL", "PT", "RO", "RU", "SA",
             "SE", "SN", "TH", "TR", "TZ", "UA", "UG", "US", "VE", "VN", "ZA")
NUMBERS = tuple(sorted(set(list(range(0, 41)) + [42, 45, 50, 57, 60, 64, 70, 77, 80, 88, 90, 99,
                                                   100, 101, 110, 128, 150, 200, 250, 256, 300, 365,
                                                   400, 500, 512, 600, 700, 800, 900, 999, 1000,
                                                   1001, 1234, 1500, 2000, 2024, 3600, 5000, 10000,
                                                   20000, 65536, 100000, 1000000, 2500000])))
VALIDATION_EVERY = 7  # every 7th item of a dataset goes to the validation split
VOCAB_SIZE = 2000  # SentencePiece pieces; the model's embedding is padded to 2048 (gin VOCAB_SIZE)
SEED = "xmtf_jax demo v1"

# dataset -> {template name: (inputs format, targets format)}; fields filled per item.
TEMPLATES = {
    "cldr_languages": {
        "how_to_write": ("How do you write the name of the language {en_name} in {target}?", "{value}"),
        "translate_name": ("Translate the language name \"{en_name}\" into {target}.", "{value}"),
        "in_target": ("{en_name} (a language). In {target}, this language is called:", "{value}"),
    },
    "cldr_countries": {
        "how_to_write": ("How do you write the name of the country {en_name} in {target}?", "{value}"),
        "translate_name": ("Translate the country name \"{en_name}\" into {target}.", "{value}"),
        "in_target": ("{en_name} (a country). In {target}, this country is called:", "{value}"),
    },
    "cldr_months": {
        "comes_after": ("Which month comes after {value}?", "{answer}"),
        "follows": ("What month follows {value}? Answer in {target}.", "{answer}"),
        "next_in_calendar": ("{value} is followed in the calendar by which month?", "{answer}"),
    },
    "cldr_weekdays": {
        "comes_after": ("Which day of the week comes after {value}?", "{answer}"),
        "follows": ("What day follows {value}? Answer in {target}.", "{answer}"),
        "tomorrow": ("If today is {value}, what day is tomorrow?", "{answer}"),
    },
    "num2words_cardinal": {
        "in_words": ("Write the number {number} in words in {target}.", "{value}"),
        "spell_out": ("Spell out {number} in {target}.", "{value}"),
        "how_to_say": ("How do you say {number} in {target}?", "{value}"),
    },
    "num2words_digits": {
        "as_digits": ("Write this number with digits: {value}", "{number}"),
        "what_number": ("What number is \"{value}\"?", "{number}"),
        "convert": ("{value}\nConvert the number above to digits.", "{number}"),
    },
}

HELDOUT_TEMPLATES = {
    "number_compare": {
        "which_larger": "Which number is larger: \"{a}\" or \"{b}\"?",
        "bigger_of_two": "Of \"{a}\" and \"{b}\", which is the bigger number?",
        "more": "\"{a}\" or \"{b}\": which one is more?",
    },
    "language_id": {
        "which_language": "In which language is \"{text}\" written?",
        "identify": "Identify the language of this text: {text}",
        "language_of": "\"{text}\"\nThe language of the text above is",
    },
}


def _cardinal(n: int, lang: str) -> str:
  return num2words.num2words(n, lang=lang)


def items(dataset: str, lang: str) -> list[dict]:
  """The items (template fields) of one dataset in one language, in a fixed order."""
  loc, en = Locale.parse(lang), Locale.parse("en")
  target = en.languages[lang]
  out = []
  if dataset == "cldr_languages":
    for code in NAMED_LANGUAGES:
      out.append({"en_name": en.languages[code], "value": loc.languages[code], "target": target})
  elif dataset == "cldr_countries":
    for code in COUNTRIES:
      out.append({"en_name": en.territories[code], "value": loc.territories[code], "target": target})
  elif dataset in ("cldr_months", "cldr_weekdays"):
    kind = "months" if dataset == "cldr_months" else "days"
    names = getattr(loc, kind)["stand-alone"]["wide"]
    keys = sorted(names)
    for i, key in enumerate(keys):
      out.append({"value": names[key], "answer": names[keys[(i + 1) % len(keys)]], "target": target})
  elif dataset in ("num2words_cardinal", "num2words_digits"):
    for n in NUMBERS:
      out.append({"number": str(n), "value": _cardinal(n, lang), "target": target})
  else:
    raise ValueError(dataset)
  return out


def jsonl(records: list[dict]) -> bytes:
  return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def train_files() -> dict[str, bytes]:
  """Relative path -> content of every per-prompt file of data/demo."""
  files = {}
  for lang in LANGUAGES:
    for dataset, templates in TEMPLATES.items():
      rows = items(dataset, lang)
      for split in ("train", "validation"):
        chosen = [r for i, r in enumerate(rows) if (i % VALIDATION_EVERY == VALIDATION_EVERY - 1)
                  == (split == "validation")]
        for template, (inputs, targets) in templates.items():
          records = [{"inputs": inputs.format(**r), "targets": targets.format(**r)} for r in chosen]
          files[f"{lang}/xp3_{dataset}_{lang}_{split}_{template}.jsonl"] = jsonl(records)
  return files


def heldout_files() -> tuple[dict[str, bytes], list[dict]]:
  """Held-out rank-classification files and the manifest entries describing them."""
  files, manifest = {}, []
  en = Locale.parse("en")
  for dataset, templates in HELDOUT_TEMPLATES.items():
    for lang in HELDOUT_LANGUAGES:
      rng = random.Random(f"{SEED}/{dataset}/{lang}")
      questions = []
      if dataset == "number_compare":
        for _ in range(24):
          a, b = rng.sample(NUMBERS, 2)
          wa, wb = _cardinal(a, lang), _cardinal(b, lang)
          questions.append(({"a": wa, "b": wb}, [wa, wb], wa if a > b else wb))
      else:
        pool = []
        for other in LANGUAGES:
          loc = Locale.parse(other)
          for kind in ("months", "days"):
            pool += [(other, name) for name in sorted(set(getattr(loc, kind)["stand-alone"]["wide"].values()))]
        own = [p for p in pool if p[0] == lang]
        for text_lang, text in rng.sample(own, 12):
          # distractors: two languages in which this text is not a month or day name ("domingo"
          # is both Spanish and Portuguese)
          ambiguous = {l for l, name in pool if name == text}
          others = rng.sample([l for l in LANGUAGES if l not in ambiguous], 2)
          choices = sorted([en.languages[text_lang]] + [en.languages[o] for o in others])
          questions.append(({"text": text}, choices, en.languages[text_lang]))
      for template, prompt in templates.items():
        records = [{"inputs": prompt.format(**fields), "targets": gold, "answer_choices": choices,
                    "dataset": dataset, "language": lang, "template": template}
                   for fields, choices, gold in questions]
        path = f"{lang}/xp3_{dataset}_{lang}_validation_{template}.jsonl"
        files[path] = jsonl(records)
        manifest.append({"dataset": dataset, "language": lang, "template": template, "file": path,
                         "examples": len(records)})
  return files, manifest


def train_sentencepiece(texts: list[str]) -> bytes:
  """A unigram SentencePiece model with mT5's special ids (pad 0, eos 1, unk 2), deterministic."""
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=model, vocab_size=VOCAB_SIZE,
      model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, byte_fallback=True,
      character_coverage=1.0, num_threads=1, shuffle_input_sentence=False, input_sentence_size=0,
      split_digits=True, minloglevel=2)
  return model.getvalue()


BPE_VOCAB_SIZE = 1024
# BLOOM's pre-tokenizer split (bigscience/tokenizer's tokenizer.json).
BLOOM_SPLIT = " ?[^(\\s|[.,!?…。，、।۔،])]+"


def train_bpe(texts: list[str]) -> dict[str, bytes]:
  """A byte-level BPE with BLOOM's pre-tokenizer, decoder and specials (<unk> <s> </s> <pad> = 0..3;
  the whole byte alphabet, so nothing encodes to <unk>), as an HF tokenizer folder's two files."""
  tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
  tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(BLOOM_SPLIT), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
  tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB_SIZE, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tokenizer.train_from_iterator(texts, trainer=trainer)
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>", "bos_token": "<s>",
            "eos_token": "</s>", "pad_token": "<pad>", "padding_side": "left", "add_prefix_space": False}
  return {"tokenizer.json": tokenizer.to_str(pretty=True).encode("utf-8"),
          "tokenizer_config.json": json.dumps(config, indent=1).encode("utf-8")}


def counts_json(files: dict[str, bytes]) -> bytes:
  entries = {path: {"bytes": len(data), "lines": data.count(b"\n")}
             for path, data in sorted(files.items())}
  return json.dumps({"files": entries}, indent=1).encode("utf-8")


def build() -> dict[str, bytes]:
  """Relative path (under the output root) -> content of every demo file."""
  train = train_files()
  heldout, manifest = heldout_files()
  texts = []
  for data in list(train.values()) + list(heldout.values()):
    for line in data.decode("utf-8").splitlines():
      record = json.loads(line)
      texts += [record["inputs"], record["targets"]] + record.get("answer_choices", [])
  out = {f"demo/{p}": d for p, d in train.items()}
  out.update({f"demo_heldout/{p}": d for p, d in heldout.items()})
  out["demo/sentencepiece.model"] = train_sentencepiece(texts)
  out.update({f"demo_bpe/{name}": data for name, data in train_bpe(texts).items()})
  out["demo/counts.json"] = counts_json(train)
  out["demo_heldout/counts.json"] = counts_json(heldout)
  out["demo_heldout/manifest.json"] = json.dumps(
      {"split": "validation", "tasks": manifest}, indent=1, ensure_ascii=False).encode("utf-8")
  provenance = (f"Generated by scripts/make_demo_data.py from babel {babel.__version__} (CLDR) and "
                f"num2words {num2words.__version__ if hasattr(num2words, '__version__') else ''}, "
                f"sentencepiece {spm.__version__}, tokenizers {tokenizers.__version__}.\n")
  out["demo/PROVENANCE.txt"] = provenance.encode("utf-8")
  return out


def write(output_root: str) -> dict[str, str]:
  """Writes every file under `output_root`; returns relative path -> sha256."""
  digests = {}
  for path, data in sorted(build().items()):
    full = os.path.join(output_root, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "wb") as f:
      f.write(data)
    digests[path] = hashlib.sha256(data).hexdigest()
  return digests


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output_root", default=os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data"))
  args = parser.parse_args(argv)
  digests = write(args.output_root)
  total = sum(os.path.getsize(os.path.join(args.output_root, p)) for p in digests)
  print(f"wrote {len(digests)} files ({total / 1e6:.2f} MB) under {args.output_root}", file=sys.stderr)


if __name__ == "__main__":
  main()
