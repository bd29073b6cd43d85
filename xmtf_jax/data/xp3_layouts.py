"""Finding the files of xP3, xP3mt, xP3all, xP3x and P3 as published, on a disk or in a bucket.

Layouts (see README "Data"):
  xP3 / xP3mt / xP3all   {root}/{lang}/xp3_{dataset}_{config}_{split}_{template}.jsonl (per prompt)
                         and/or {root}/{lang}/merged_{lang}.jsonl (their deduplicated union).
                         Files named *_validation_* form the validation split; the train split
                         is merged_{lang}.jsonl only when the folder has no validation files
                         (see `_xp3_language`), else the per-prompt non-validation files.
  xP3x                   {root}/data/{code}/*.jsonl, listed by {root}/paths.json
                         ({code: ["data/{code}/...jsonl", ...]}); records carry 7 fields.
  P3                     {root}/p31t0_train.jsonl (or p31t0_train.zip) and p31t0_validation.jsonl.

Everything goes through xmtf_jax.paths, so local paths and gs:// work alike. Listing costs one call per
language folder; nothing here reads file contents except paths.json.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Optional, Sequence

from xmtf_jax import paths
from xmtf_jax.data import jsonl_source, stats

XP3 = "xp3"
XP3X = "xp3x"
P3 = "p3"
VALIDATION_MARK = "_validation_"


@dataclasses.dataclass(frozen=True)
class LanguageFiles:
  """The files of one language (folder) of a layout.

  `train` is what the language's task reads for training (never a file holding `validation` lines);
  `prompt_files` are the per-prompt files (all splits), each of which also gets its own task.
  """
  language: str
  train: tuple[str, ...]
  validation: tuple[str, ...] = ()
  prompt_files: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Layout:
  """What `scan` found; `problems` holds the folders and files skipped in lenient mode (under the
  `source` name given to `scan`), for the data report."""
  kind: str
  root: str
  languages: tuple[LanguageFiles, ...]
  problems: stats.BadLineLog = dataclasses.field(default_factory=stats.BadLineLog, compare=False)


@dataclasses.dataclass(frozen=True)
class _Source:
  """Where `_problem` records: the scan's own log, under the name of what is being registered."""
  name: str
  log: stats.BadLineLog


def task_name_part(text: str) -> str:
  """A string made safe for a seqio task name (letters, digits, '_', '.', ':')."""
  return re.sub(r"[^\w.:]", "_", text)


def prompt_file_stem(path: str) -> str:
  """`xp3_{dataset}_{config}_{split}_{template}` without the `xp3_`/`xp3x_` prefix and extension."""
  stem = os.path.basename(path)
  stem = stem[:-len(".jsonl")] if stem.endswith(".jsonl") else stem
  return re.sub(r"^xp3(x|mt|all)?_", "", stem)


def _join(root: str, *parts: str) -> str:
  return "/".join([root.rstrip("/")] + [p.strip("/") for p in parts])


def _problem(strict: bool, source: _Source, path: str, reason: str, message: str) -> None:
  """Raises in strict mode; otherwise records the problem (shown in the data report) and logs it."""
  if strict:
    raise jsonl_source.BadDataError(message)
  source.log.record(source.name, path, 0, reason, message)  # logged there


def _listdir(path: str) -> list[str]:
  return paths.listdir(path)


def _subfolders(root: str) -> list[str]:
  # Hidden folders (`.cache/` of `huggingface-cli download`, `.git/`) are not languages.
  return [n for n in paths.subfolders(root) if not n.startswith(".")]


def _check_root(root: str) -> None:
  if not paths.isdir(root):
    raise jsonl_source.BadDataError(
        f"data root {root} does not exist or is not a folder. Point XP3_DATA_DIR (gin "
        "`XP3_DATA_DIR = '...'` or the environment variable) at the downloaded dataset.")


def detect_kind(root: str) -> str:
  names = set(_listdir(root))
  if "paths.json" in names or "data" in names:
    return XP3X
  if any(n.startswith("p31t0_") for n in names):
    return P3
  return XP3


def scan(root: str, kind: Optional[str] = None, *, languages: Optional[Sequence[str]] = None,
         strict: bool = True, source: str = "layout") -> Layout:
  """Lists the files of the dataset under `root` (kind auto-detected when None).

  `languages` restricts the scan to those folders and makes a missing one an error (strict) or a
  counted problem (lenient, in the Layout's `problems` under the name `source`).
  """
  _check_root(root)
  kind = kind or detect_kind(root)
  problems = stats.BadLineLog()
  source = _Source(source, problems)
  if kind == XP3:
    found = _scan_xp3(root, languages, strict, source)
  elif kind == XP3X:
    found = _scan_xp3x(root, languages, strict, source)
  elif kind == P3:
    found = _scan_p3(root, strict, source)
  else:
    raise ValueError(f"unknown layout {kind!r}; expected one of {XP3!r}, {XP3X!r}, {P3!r}")
  if not found:
    raise jsonl_source.BadDataError(f"no usable language folders under {root} (layout {kind}).")
  return Layout(kind, root, tuple(found), problems)


def _xp3_language(root: str, lang: str, files: list[str]) -> LanguageFiles:
  """The train/validation files of one xP3 language folder.

  xP3's merged_{lang}.jsonl is "all of the folder, deduplicated by line and shuffled": it holds the
  lines of the *_validation_* files too. Training on it would train on the validation split, so when
  a folder has validation files the train split is its per-prompt non-validation files (the same
  lines as the merged file minus validation, without reading any file); the merged file is read only
  when there is nothing to hold out. A folder with a merged file and validation files but no
  per-prompt train files cannot be split without reading it: it trains on the merged file and warns.
  """
  merged = f"merged_{lang}.jsonl"
  prompt = [f for f in files if f != merged]
  validation = [f for f in prompt if VALIDATION_MARK in f]
  prompt_train = [f for f in prompt if VALIDATION_MARK not in f]
  train = prompt_train
  if merged in files and (not validation or not prompt_train):
    train = [merged]
    if validation:
      logging.warning(
          "%s: the folder has validation files (%s) but no per-prompt train files, so training reads "
          "merged_%s.jsonl, which contains the validation lines: validation overlaps training. "
          "Download the per-prompt train files (xp3_*_train_*.jsonl) to keep them apart.",
          _join(root, lang), ", ".join(validation), lang)
  path = lambda names: tuple(_join(root, lang, n) for n in names)  # noqa: E731
  return LanguageFiles(lang, path(train), path(validation), path(prompt))


def _check_folders(root: str, present: list[str], languages: Optional[Sequence[str]], strict: bool,
                   source: _Source, how: str) -> list[str]:
  if languages is None:
    return present
  for lang in languages:
    if lang not in present:
      _problem(strict, source, _join(root, lang), jsonl_source.MISSING_FOLDER,
               f"language folder {_join(root, lang)} is missing. {how}")
  return [lang for lang in languages if lang in present]


_FOLDER_HELP = ("Download it, set XP3_LANGUAGES to the languages you have, or set DATA_STRICT = False "
                "to skip it (counted in the data report).")


def _scan_xp3(root, languages, strict, source) -> list[LanguageFiles]:
  found = []
  for lang in _check_folders(root, _subfolders(root), languages, strict, source, _FOLDER_HELP):
    files = [f for f in _listdir(_join(root, lang)) if f.endswith(".jsonl")]
    if not files:
      _problem(strict, source, _join(root, lang), jsonl_source.EMPTY_FOLDER,
               f"language folder {_join(root, lang)} holds no .jsonl files. {_FOLDER_HELP}")
      continue
    found.append(_xp3_language(root, lang, files))
  return found


def _scan_xp3x(root, languages, strict, source) -> list[LanguageFiles]:
  data = _join(root, "data")
  present = _subfolders(data) if paths.isdir(data) else []
  listed = None
  if paths.exists(_join(root, "paths.json")):
    listed = json.loads(paths.read_text(_join(root, "paths.json")))
    if not isinstance(listed, dict):
      raise jsonl_source.BadDataError(f"{_join(root, 'paths.json')}: expected an object "
                                      "{language code: [relative file paths]}")
    if languages is None:
      languages = sorted(listed)
  found = []
  for code in _check_folders(data, present, languages, strict, source, _FOLDER_HELP):
    on_disk = [f for f in _listdir(_join(data, code)) if f.endswith(".jsonl")]
    if listed is not None and code in listed:
      names = [os.path.basename(p) for p in listed[code]]
      for name in sorted(set(names) - set(on_disk)):
        _problem(strict, source, _join(data, code, name), jsonl_source.MISSING_FILE,
                 f"{_join(root, 'paths.json')} lists {_join(data, code, name)}, which is missing. "
                 "Download it, or set DATA_STRICT = False to skip it.")
      on_disk = [n for n in names if n in on_disk]
    if not on_disk:
      _problem(strict, source, _join(data, code), jsonl_source.EMPTY_FOLDER,
               f"language folder {_join(data, code)} holds no .jsonl files. {_FOLDER_HELP}")
      continue
    files = tuple(_join(data, code, n) for n in sorted(on_disk))
    validation = tuple(p for p in files if VALIDATION_MARK in paths.basename(p))
    train = tuple(p for p in files if p not in validation)
    found.append(LanguageFiles(code, train, validation, files))
  return found


def _scan_p3(root, strict, source) -> list[LanguageFiles]:
  names = set(_listdir(root))
  train = [n for n in ("p31t0_train.jsonl", "p31t0_train.zip") if n in names][:1]
  validation = [n for n in ("p31t0_validation.jsonl",) if n in names]
  if not train:
    _problem(strict, source, _join(root, "p31t0_train.jsonl"), jsonl_source.MISSING_FOLDER,
             f"{root} has no p31t0_train.jsonl or p31t0_train.zip (Muennighoff/P3 layout).")
    return []
  return [LanguageFiles("en", tuple(_join(root, n) for n in train),
                        tuple(_join(root, n) for n in validation))]
