"""What the original xP3 script did to a raw row before rendering it (facts 1.9, checklist 4).

`prepare` returns the row the templates see, or None when the row is not used (the reason is
`drop_reason(unit)`). Every dataset gets `-` -> `_` in field names (jinja cannot address
`a-b`); GEM/wiki_lingua gets its language names and, for a cross-lingual subset, only its own
direction; xlcost gets `code_clean`; apps gets one solution, chosen with the caller's seeded rng
(the script used the unseeded global one).
"""
from __future__ import annotations

import json
import random
from typing import Optional

from xmtf_jax.errors import UserError
from xmtf_jax.xp3build import languages

DROP_REASONS = {"GEM/wiki_lingua": "other direction", "codeparrot/apps": "no solution"}


def drop_reason(unit) -> str:
  """Why `prepare` returned None for a row of this unit (a short fixed string for the report)."""
  return DROP_REASONS.get(unit.dataset, "dropped in preparation")


def without_hyphens(example: dict) -> dict:
  """Field names with `-` replaced by `_` (top level only, as promptsource's removeHyphen)."""
  return {key.replace("-", "_"): value for key, value in example.items()}


def prepare(unit, split: str, example: dict, rng: random.Random) -> Optional[dict]:
  """The row to render for one raw row of `unit`, or None to drop it (see drop_reason)."""
  del split  # no preparation depends on the split; the argument keeps the call site uniform
  row = without_hyphens(example)
  if unit.dataset == "GEM/wiki_lingua":
    return _wiki_lingua(unit, row)
  if unit.dataset == "codeparrot/apps":
    return _apps(row, rng)
  if unit.dataset == "codeparrot/xlcost-text-to-code":
    row["code_clean"] = clean_xlcost_code(row["code"])
  return row


def _language_name(code: str, field: str) -> str:
  name = languages.english_name(code)
  if name is None:
    raise UserError(f"GEM/wiki_lingua row has {field}={code!r}, which is not one of BLOOM's language "
                    f"codes (xmtf_jax/xp3build/languages.py), so its templates cannot name it. Use "
                    f"the GEM/wiki_lingua subsets the xp3 preset lists.")
  return name


def _wiki_lingua(unit, row: dict) -> Optional[dict]:
  """Adds `source_language_name`/`target_language_name` ("Chinese"), which the en_en templates use;
  a cross-lingual subset `l1_l2` keeps only rows from l1 to l2 (l2 -> l1 is its own subset)."""
  if unit.subset is not None and "_" in unit.subset:
    l1, l2 = unit.subset.split("_")[:2]
    if row.get("source_language") != l1 or row.get("target_language") != l2:
      return None
  row["source_language_name"] = _language_name(row["source_language"], "source_language")
  row["target_language_name"] = _language_name(row["target_language"], "target_language")
  return row


def _apps(row: dict, rng: random.Random) -> Optional[dict]:
  """One solution out of the JSON list `solutions`; rows without any are dropped."""
  solutions = json.loads(row["solutions"]) if row.get("solutions") else []
  if not solutions:
    return None
  row["solution"] = rng.choice(solutions)
  return row


def clean_xlcost_code(code: str) -> str:
  """xlcost's tokenised program as code: `NEW_LINE` ends a line, `INDENT`/`DEDENT` move the tab
  depth, `STRNEWLINE` and `TABSYMBOL` inside strings become a newline and a tab."""
  depth, lines = 0, []
  for piece in code.split("NEW_LINE"):
    depth += piece.count("INDENT") - piece.count("DEDENT")
    text = piece.replace("INDENT", "").replace("DEDENT", "")
    text = text.replace("STRNEWLINE", "\n").replace("TABSYMBOL", "\t")
    lines.append("\t" * depth + text.strip())
  return "\n".join(lines)
