"""What an xP3 build makes: the units (dataset, subset, prompt source, cap), which splits and templates
of each it uses, and the name of every output file (facts 1.2-1.4, 1.8).

A preset (`xp3`, `xp3mt`, `xp3all`) reproduces the original script's lists from `presets.yaml`; a
user spec is a YAML or JSON file of units. Both give a `BuildSpec`; the builder only reads that.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import os
from types import MappingProxyType
from typing import Any, Mapping, Optional, Sequence

import yaml

from xmtf_jax import paths
from xmtf_jax.errors import MissingPathError, UserError
from xmtf_jax.xp3build import languages

PRESETS = ("xp3", "xp3mt", "xp3all")
SPLIT_MODES = ("train", "validation")
PROMPT_LANGUAGES = ("english", "native")
PRESETS_FILE = os.path.join(os.path.dirname(__file__), "presets.yaml")  # bundled with the package
UNIT_KEYS = ("dataset", "subset", "prompt_dataset", "prompt_subset", "templates", "cap")


@dataclasses.dataclass(frozen=True)
class Unit:
  """One (dataset, subset) to build, with the promptsource folder its templates come from
  (`prompt_dataset[/prompt_subset]`), the templates to use (None: all of them) and the row cap per
  output file."""
  dataset: str
  subset: Optional[str]
  prompt_dataset: str
  prompt_subset: Optional[str]
  templates: Optional[tuple[str, ...]] = None
  cap: int = 100_000

  @property
  def prompt_key(self) -> str:
    """The promptsource name of the template folder, as SKIP_PROMPTS spells it (`glue/qqp`)."""
    return self.prompt_dataset if self.prompt_subset is None else (
        f"{self.prompt_dataset}/{self.prompt_subset}")


@dataclasses.dataclass(frozen=True)
class BuildSpec:
  name: str
  units: tuple[Unit, ...]
  split_mode: str = "train"
  prompt_language: str = "english"
  include_heldout: bool = False


def _freeze(value: Any) -> Any:
  if isinstance(value, dict):
    return MappingProxyType({k: _freeze(v) for k, v in value.items()})
  if isinstance(value, list):
    return tuple(_freeze(v) for v in value)
  return value


@functools.lru_cache(maxsize=1)
def presets_data() -> Mapping[str, Any]:
  """presets.yaml, read once and frozen (a file of the package: constant for the process)."""
  return _freeze(yaml.safe_load(paths.read_text(PRESETS_FILE)))


def heldout_pairs() -> frozenset[tuple[str, Optional[str]]]:
  """(dataset, subset) of every held-out evaluation set (facts 1.3)."""
  data = presets_data()
  return frozenset(tuple(p) for p in data["heldout_l1"] + data["heldout_l2"] + data["heldout_other"])


# ---- the preset pair lists -------------------------------------------------------------------------

def wiki_lingua_cross_pairs() -> list[tuple[str, str]]:
  """The 72 cross-lingual GEM/wiki_lingua subsets `l1_l2` (l1 != l2), in the script's order."""
  langs = presets_data()["wiki_lingua_cross_languages"]
  return [("GEM/wiki_lingua", f"{a}_{b}") for a, b in itertools.product(langs, langs) if a != b]


def _bloom_iso3(code: str) -> bool:
  return code in languages.LOOKUP


def flores_pairs() -> list[tuple[str, str]]:
  """Directed Flores-200 pairs `src-tgt` among the codes whose ISO 639-3 part is a BLOOM language."""
  codes = [c for c in presets_data()["flores_languages"] if _bloom_iso3(c.split("_")[0])]
  return [("facebook/flores", f"{a}-{b}") for a, b in itertools.product(codes, codes) if a != b]


def wmt22_pairs() -> list[tuple[str, str]]:
  """The listed allenai/wmt22_african pairs whose two languages are both BLOOM languages."""
  return [("allenai/wmt22_african", pair) for pair in presets_data()["wmt22_african_pairs"]
          if all(_bloom_iso3(code) for code in pair.split("-"))]


def preset_pairs(preset: str, include_heldout: bool = False) -> list[tuple[str, Optional[str]]]:
  """The distinct (dataset, subset) pairs of a preset, in the script's order (first one wins)."""
  data = presets_data()
  pairs = [tuple(p) for p in data["xp3_static"]] + wiki_lingua_cross_pairs() + flores_pairs() + (
      wmt22_pairs())
  if preset == "xp3all":
    pairs += [tuple(p) for p in data["xp3all_additions"]]
  if include_heldout:
    pairs += [tuple(p) for p in data["heldout_l1"] + data["heldout_l2"] + data["heldout_other"]]
  return list(dict.fromkeys(pairs))


def default_prompt_subset(dataset: str, subset: Optional[str], prompt_language: str) -> Optional[str]:
  """English prompts: a multilingual dataset's designated English subset (DS_TO_ENG_PROMPT); native
  prompts, or a dataset without one: the subset's own templates."""
  english = presets_data()["english_prompt_subset"]
  if prompt_language == "english" and subset is not None and dataset in english:
    return english[dataset]
  return subset


def default_cap(dataset: str) -> int:
  data = presets_data()
  return int(data["caps"].get(dataset, data["default_cap"]))


def _unit(dataset: str, subset: Optional[str], prompt_language: str) -> Unit:
  return Unit(dataset, subset, dataset, default_prompt_subset(dataset, subset, prompt_language),
              None, default_cap(dataset))


# ---- loading a spec --------------------------------------------------------------------------------

def load_spec(preset_or_path: str, *, split_mode: str = "train", prompt_language: Optional[str] = None,
              include_heldout: bool = False) -> BuildSpec:
  """A preset name or a user spec file as a BuildSpec. `prompt_language` None: native for xp3mt,
  English otherwise."""
  if split_mode not in SPLIT_MODES:
    raise UserError(f"--split_mode={split_mode!r} is not one of {', '.join(SPLIT_MODES)}: `train` "
                    f"builds every split but validation, `validation` only the validation splits.")
  if prompt_language not in (None,) + PROMPT_LANGUAGES:
    raise UserError(f"--prompt_language={prompt_language!r} is not one of "
                    f"{', '.join(PROMPT_LANGUAGES)}: `english` uses the English templates of each "
                    f"multilingual dataset (xP3), `native` the subset's own (machine-translated, xP3mt).")
  if preset_or_path in PRESETS:
    language = prompt_language or ("native" if preset_or_path == "xp3mt" else "english")
    units = tuple(_unit(d, s, language) for d, s in preset_pairs(preset_or_path, include_heldout))
    return BuildSpec(preset_or_path, units, split_mode, language, include_heldout)
  language = prompt_language or "english"
  name, units = _read_spec_file(preset_or_path, language, include_heldout)
  return BuildSpec(name, units, split_mode, language, include_heldout)


def _read_spec_file(path: str, language: str, include_heldout: bool) -> tuple[str, tuple[Unit, ...]]:
  if not paths.exists(path):
    raise MissingPathError(
        f"--spec={path}: no such file, and not a preset name ({', '.join(PRESETS)}). Give one of "
        f"the presets or a YAML/JSON file like `name: mine` / `units: [{{dataset: paws-x, subset: "
        f"fr}}]`.")
  try:
    data = yaml.safe_load(paths.read_text(path))  # JSON is YAML too
  except yaml.YAMLError as e:
    raise UserError(f"{path}: not valid YAML or JSON ({e}). Fix the file's syntax.") from None
  if not isinstance(data, dict) or not isinstance(data.get("units"), list) or not data["units"]:
    raise UserError(f"{path}: a spec is a mapping with a non-empty list `units` (and an optional "
                    f"`name`), e.g. `units: [{{dataset: paws-x, subset: fr}}]`.")
  unknown = sorted(set(data) - {"name", "units"})
  if unknown:
    raise UserError(f"{path}: unknown top-level key(s) {', '.join(map(str, unknown))}; a spec has "
                    f"only `name` and `units`.")
  name = data.get("name", os.path.splitext(paths.basename(path))[0])
  if not isinstance(name, str) or not name:
    raise UserError(f"{path}: `name` must be a non-empty string, got {name!r}.")
  units, seen, heldout = [], {}, heldout_pairs()
  for number, entry in enumerate(data["units"], 1):
    unit = _parse_unit(path, number, entry, language)
    where = f"{path}: units entry {number} ({unit.dataset} {unit.subset})"
    if (unit.dataset, unit.subset) in heldout and not include_heldout:
      raise UserError(f"{where} is a held-out evaluation set (never trained on in xP3). Remove it, "
                      f"or pass --include_heldout to train on it anyway.")
    if (unit.dataset, unit.subset) in seen:
      raise UserError(f"{where} repeats entry {seen[(unit.dataset, unit.subset)]}: both would write "
                      f"the same files. Merge them into one entry.")
    seen[(unit.dataset, unit.subset)] = number
    units.append(unit)
  return name, tuple(units)


def _parse_unit(path: str, number: int, entry: Any, language: str) -> Unit:
  where = f"{path}: units entry {number}"
  if not isinstance(entry, dict):
    raise UserError(f"{where} is {entry!r}; each unit is a mapping such as "
                    f"`{{dataset: paws-x, subset: fr}}` (keys: {', '.join(UNIT_KEYS)}).")
  unknown = sorted(set(map(str, entry)) - set(UNIT_KEYS))
  if unknown:
    raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; a unit has {', '.join(UNIT_KEYS)}.")
  for key in ("dataset", "prompt_dataset"):
    if key in entry and (not isinstance(entry[key], str) or not entry[key]):
      raise UserError(f"{where}: `{key}` must be a non-empty string, got {entry[key]!r}.")
  if "dataset" not in entry:
    raise UserError(f"{where} has no `dataset`; name the dataset as the Hub spelled it in 2022 "
                    f"(e.g. `paws-x`, `GEM/xlsum`).")
  for key in ("subset", "prompt_subset"):
    if entry.get(key) is not None and not isinstance(entry[key], str):
      raise UserError(f"{where}: `{key}` must be a string or null, got {entry[key]!r}; quote it "
                      f"(`{key}: \"{entry[key]}\"`) so YAML keeps it as text.")
  templates = entry.get("templates")
  if templates is not None and (not isinstance(templates, list) or not templates or not all(
      isinstance(t, str) and t for t in templates)):
    raise UserError(f"{where}: `templates` must be a non-empty list of template names, got "
                    f"{templates!r}; leave it out to use every template.")
  dataset, subset = entry["dataset"], entry.get("subset")
  cap = entry.get("cap", default_cap(dataset))
  if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
    raise UserError(f"{where}: `cap` must be a positive whole number of rows per file, got {cap!r}.")
  prompt_dataset = entry.get("prompt_dataset", dataset)
  prompt_subset = entry["prompt_subset"] if "prompt_subset" in entry else default_prompt_subset(
      prompt_dataset, subset, language)
  return Unit(dataset, subset, prompt_dataset, prompt_subset,
              tuple(templates) if templates is not None else None, cap)


# ---- splits, templates, names ----------------------------------------------------------------------

def select_splits(unit: Unit, available: Sequence[str], split_mode: str) -> list[str]:
  """The splits of a unit a build uses (facts 1.4). Train mode trains on test splits too (as xP3
  did); validation mode builds only `validation`, and only when the dataset has another split."""
  splits = list(available)
  if unit.subset == "xlwic_en_zh" and "train" in splits:
    splits.remove("train")  # its train split is English; validation and test are Chinese
  elif unit.dataset == "teven/code_docstring_corpus" and "class_level" in splits:
    splits.remove("class_level")  # poor quality
  if split_mode == "validation":
    return ["validation"] if "validation" in splits and len(splits) > 1 else []
  if split_mode != "train":
    raise ValueError(f"split_mode {split_mode!r}")
  if len(splits) > 1 and "validation" in splits:
    splits.remove("validation")
  return [s for s in splits if s not in ("sampled_validation", "sampled_test")]


def skip_template(unit: Unit, split: str, template_name: str) -> bool:
  """True where SKIP_PROMPTS rules the file out: hidden (-1) labels on that split would render as
  the last answer choice."""
  names = presets_data()["skip_prompts"].get(unit.prompt_key, {}).get(split, ())
  return "all" in names or template_name in names


def file_name(unit: Unit, split: str, template_name: str) -> str:
  """`xp3_{dataset}_{subset}_{split}_{template}.jsonl` as published: only "/" and " " become "_"
  (hyphens and dots stay; no subset is the literal `None`)."""
  name = f"xp3_{unit.dataset}_{unit.subset}_{split}_{template_name}.jsonl"
  return name.replace("/", "_").replace(" ", "_")


def flores_overlap(spec: BuildSpec) -> list[str]:
  """`dataset/subset` of the units that train on Flores dev/devtest, the splits Flores evaluations
  use (xmtf issue #22): the report lists them as train/eval overlap."""
  if spec.split_mode != "train":
    return []
  return [f"{u.dataset}/{u.subset}" for u in spec.units if "flores" in u.dataset.lower()]
