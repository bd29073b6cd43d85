"""Which language folder an xP3 file goes to: the language of its *target* text (facts 1.7).

The table replaces the `iso-639` package the original script imported (a 2016 package we do not
depend on): each of BLOOM's 46 language codes is reachable from itself, its ISO 639 English name
(lower case), that name's first word ("swahili (macrolanguage)" -> "swahili") and its ISO 639-3
code, plus the script's manual additions. Flores and wmt22_african pairs are kept only when both
of their ISO 639-3 codes are keys of this mapping, so the table also decides those presets.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Mapping, Optional

from xmtf_jax.errors import UserError

# (BLOOM code, ISO 639 English name, ISO 639-3 code); None where `iso639.languages.get(alpha2=...)`
# finds nothing (the four codes that are not two-letter ISO 639-1 codes).
BLOOM_LANGUAGES: tuple[tuple[str, Optional[str], Optional[str]], ...] = (
    ("ak", "Akan", "aka"), ("ar", "Arabic", "ara"), ("as", "Assamese", "asm"),
    ("bm", "Bambara", "bam"), ("bn", "Bengali", "ben"), ("ca", "Catalan", "cat"),
    ("code", None, None), ("en", "English", "eng"), ("es", "Spanish", "spa"),
    ("eu", "Basque", "eus"), ("fon", None, None), ("fr", "French", "fra"),
    ("gu", "Gujarati", "guj"), ("hi", "Hindi", "hin"), ("id", "Indonesian", "ind"),
    ("ig", "Igbo", "ibo"), ("ki", "Kikuyu", "kik"), ("kn", "Kannada", "kan"),
    ("lg", "Ganda", "lug"), ("ln", "Lingala", "lin"), ("ml", "Malayalam", "mal"),
    ("mr", "Marathi", "mar"), ("ne", "Nepali (macrolanguage)", "nep"), ("nso", None, None),
    ("ny", "Nyanja", "nya"), ("or", "Oriya (macrolanguage)", "ori"), ("pa", "Panjabi", "pan"),
    ("pt", "Portuguese", "por"), ("rn", "Rundi", "run"), ("rw", "Kinyarwanda", "kin"),
    ("sn", "Shona", "sna"), ("st", "Southern Sotho", "sot"), ("sw", "Swahili (macrolanguage)", "swa"),
    ("ta", "Tamil", "tam"), ("te", "Telugu", "tel"), ("tn", "Tswana", "tsn"),
    ("ts", "Tsonga", "tso"), ("tum", None, None), ("tw", "Twi", "twi"),
    ("ur", "Urdu", "urd"), ("vi", "Vietnamese", "vie"), ("wo", "Wolof", "wol"),
    ("xh", "Xhosa", "xho"), ("yo", "Yoruba", "yor"), ("zh", "Chinese", "zho"),
    ("zu", "Zulu", "zul"),
)

# Datasets whose every file is code (the folder `code`, where whitespace around `|||` is kept).
CODE_DATASETS = (
    "Muennighoff/mbpp", "openai_humaneval", "great_code", "neural_code_search",
    "codeparrot/codecomplex", "codeparrot/github-jupyter-text-code-pairs", "codeparrot/apps",
    "Fraser/python-state-changes", "codeparrot/xlcost-text-to-code", "teven/code_contests",
    "teven/code_docstring_corpus",
)

# The script's hand-written entries: macrolanguage members Flores/WMT use, xlsum subset names whose
# ISO name differs (Rundi, Panjabi), and clue (Chinese).
MANUAL = {"clue": "zh", "cmn": "zh", "npi": "ne", "ory": "or", "swh": "sw", "kirundi": "rn",
          "punjabi": "pa", "chinese_simplified": "zh", "chinese_traditional": "zh"}


def _build_lookup() -> Mapping[str, str]:
  table = {name: "code" for name in CODE_DATASETS}
  table.update(MANUAL)
  for code, name, iso3 in BLOOM_LANGUAGES:
    table[code] = code
    if name is not None:
      table[name.lower()] = code
      table[name.lower().split(" ")[0]] = code
      table[iso3] = code
  return MappingProxyType(table)


LOOKUP: Mapping[str, str] = _build_lookup()


def lookup(key: Optional[str]) -> Optional[str]:
  """The BLOOM language code a dataset name, subset name or language code stands for, or None."""
  return LOOKUP.get(key) if key is not None else None


def english_name(code: str) -> Optional[str]:
  """The ISO 639 English name of a BLOOM code as `iso639` spells it ("Chinese"), or None."""
  return next((name for c, name, _ in BLOOM_LANGUAGES if c == code), None)


def is_code(lang: str) -> bool:
  """True for the `code` folder, whose templates render without stripping (facts 1.6)."""
  return lang == "code"


def _language_of_template(unit, template_name: str) -> Optional[str]:
  """Translation sets write each direction into the target language's folder: the last `-` part of
  the template name (`translate-this-eng-cmn_Hans` -> cmn -> zh)."""
  if unit.dataset == "Helsinki-NLP/tatoeba_mt":
    return LOOKUP.get(template_name.split("-")[-1].split("_")[0], "en")
  # multi_eurlex has one template per pair ending in `-source+target`
  return lookup(template_name.replace("-source+target", "").split("-")[-1])


def route(unit, template_name: str) -> str:
  """The language folder of the file (unit, template): the language the targets are written in."""
  dataset, subset = unit.dataset, unit.subset
  if dataset in ("Helsinki-NLP/tatoeba_mt", "allenai/wmt22_african", "multi_eurlex"):
    lang = _language_of_template(unit, template_name)
  elif dataset == "facebook/flores":
    lang = lookup(subset.split("-")[-1].split("_")[0])
  elif (dataset == "GEM/wiki_lingua" and "_" in subset) or dataset == "pasinit/xlwic":
    lang = lookup(subset.split("_")[-1])
  elif dataset in ("xquad", "mlqa"):
    lang = lookup(subset.split(".")[1])  # mlqa: the context language (mlqa.<context>.<question>)
  else:  # the dataset's language (code datasets, clue), else the subset's, else English
    lang = LOOKUP.get(dataset) or LOOKUP.get(subset if subset is not None else "", "en")
  if lang is None:
    raise UserError(
        f"cannot tell which language folder the template {template_name!r} of {dataset} "
        f"{subset} writes into: its target language is not one of BLOOM's 46 languages "
        f"(xmtf_jax/xp3build/languages.py). Leave this unit or template out of the spec, or "
        f"name templates whose target language is one of those.")
  return lang
