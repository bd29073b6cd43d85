"""Check an existing xP3-layout folder (a build, a downloaded xP3) against a spec: expected against
found file names per language, rows per file, malformed lines and the merged files.

Without the raw data the splits a unit has are unknown, so a (unit, template) counts as present when
a file of any split exists; with `data_dir` the exact names are expected. Per-template files hold
at most the unit's cap lines and are sorted by `inputs`; both are checked. A folder this builder
wrote has `build_report.json`: the files it records as empty (every row dropped: no file written)
are not missing, and every other file must hold the rows the report counted.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Callable, Optional

from xmtf_jax import paths
from xmtf_jax.progress import Progress
from xmtf_jax.prompts.template_tree import TemplateTree
from xmtf_jax.xp3build import spec as xp3spec
from xmtf_jax.xp3build.build import unit_templates
from xmtf_jax.xp3build.languages import route
from xmtf_jax.xp3build.lines import MalformedLine, decode_line
from xmtf_jax.xp3build.raw_rows import open_raw

MAX_LISTED = 200  # malformed lines listed one by one; the count covers all
_SPLIT = "\x00"  # stands for the split in a file name pattern


@dataclasses.dataclass
class CheckResult:
  folder: str
  spec_name: str
  files: dict[str, int]  # path relative to the folder -> rows
  missing: dict[str, list[str]]  # lang -> expected names not found (a `*` for "any split")
  unexpected: dict[str, list[str]]  # lang -> names found that the spec does not produce
  malformed: list[str]  # "path:line: reason", the first MAX_LISTED
  malformed_count: int
  over_cap: list[str]
  unsorted: list[str]
  merged_missing: list[str]
  recorded_empty: list[str] = dataclasses.field(default_factory=list)  # expected, empty by the report
  count_mismatch: list[str] = dataclasses.field(default_factory=list)  # rows != the report's count

  @property
  def problems(self) -> int:
    return (sum(map(len, self.missing.values())) + sum(map(len, self.unexpected.values()))
            + self.malformed_count + len(self.over_cap) + len(self.unsorted) + len(self.merged_missing)
            + len(self.count_mismatch))

  def to_json(self) -> dict:
    return {**dataclasses.asdict(self), "problems": self.problems}

  def summary(self) -> str:
    missing = sum(map(len, self.missing.values()))
    unexpected = sum(map(len, self.unexpected.values()))
    lines = [f"{self.folder} against {self.spec_name}: {len(self.files)} files, "
             f"{sum(self.files.values()):,} rows; {missing} missing, {unexpected} unexpected, "
             f"{self.malformed_count} malformed lines, {len(self.over_cap)} over their cap, "
             f"{len(self.unsorted)} not sorted by inputs, {len(self.merged_missing)} merged files missing, "
             f"{len(self.count_mismatch)} row counts differ from build_report.json; "
             f"{len(self.recorded_empty)} expected files empty by the build's report"]
    for lang in sorted(set(self.missing) | set(self.unexpected)):
      lines.append(f"  {lang}: missing {len(self.missing.get(lang, []))}, "
                   f"unexpected {len(self.unexpected.get(lang, []))}")
    for what, items in (("missing", [f"{l}/{n}" for l, ns in sorted(self.missing.items()) for n in ns]),
                        ("unexpected", [f"{l}/{n}" for l, ns in sorted(self.unexpected.items())
                                        for n in ns]),
                        ("malformed", self.malformed), ("over cap", self.over_cap),
                        ("not sorted", self.unsorted), ("merged missing", self.merged_missing),
                        ("rows differ from build_report.json", self.count_mismatch)):
      for item in items[:20]:
        lines.append(f"  {what}: {item}")
      if len(items) > 20:
        lines.append(f"  {what}: ... {len(items) - 20} more (see the JSON)")
    return "\n".join(lines)


def _expected(spec, templates_root: str, data_dir: Optional[str]) -> dict[str, tuple]:
  """lang/name (with `*` for the split when the splits are unknown) -> (lang, prefix, suffix, cap):
  a found name matches when it is prefix + split + suffix (prefix alone with known splits)."""
  tree = TemplateTree(templates_root)
  expected = {}
  for unit in spec.units:
    names = sorted({t.name for t in unit_templates(tree, unit)})
    splits = (xp3spec.select_splits(unit, list(open_raw(data_dir, unit).splits()), spec.split_mode)
              if data_dir else [_SPLIT])
    for name in names:
      for split in splits:
        if split != _SPLIT and xp3spec.skip_template(unit, split, name):
          continue
        lang, file_name = route(unit, name), xp3spec.file_name(unit, split, name)
        prefix, _, suffix = file_name.partition(_SPLIT)
        expected[f"{lang}/{file_name.replace(_SPLIT, '*')}"] = (lang, prefix, suffix, unit.cap)
  return expected


def _matcher(expected: dict[str, tuple]) -> Callable[[str, str], list[str]]:
  """(lang, name) -> the expected keys it satisfies, looked up by the name's prefixes."""
  by_prefix: dict[tuple[str, str], list[tuple[str, str]]] = {}
  for key, (lang, prefix, suffix, _) in expected.items():
    by_prefix.setdefault((lang, prefix), []).append((suffix, key))

  def match(lang: str, name: str) -> list[str]:
    if (lang, name) in by_prefix:
      return [key for suffix, key in by_prefix[(lang, name)] if not suffix]
    hits = []
    for cut in [i + 1 for i, c in enumerate(name) if c == "_"]:
      for suffix, key in by_prefix.get((lang, name[:cut]), ()):
        if suffix and name.endswith(suffix) and len(name) > cut + len(suffix):
          hits.append(key)
    return hits

  return match


def _check_file(path: str, relative: str, cap: Optional[int], result: CheckResult) -> None:
  rows, previous, ordered = 0, None, True
  with paths.open(path, "rb") as f:
    for number, line in enumerate(f, 1):
      rows += 1
      try:
        inputs = decode_line(line)["inputs"]
      except MalformedLine as error:
        result.malformed_count += 1
        if len(result.malformed) < MAX_LISTED:
          result.malformed.append(f"{relative}:{number}: {error}")
        continue
      ordered = ordered and (previous is None or previous <= inputs)
      previous = inputs
  result.files[relative] = rows
  if cap is not None and rows > cap:
    result.over_cap.append(f"{relative} ({rows:,} rows, cap {cap:,})")
  if not ordered:
    result.unsorted.append(relative)


def _recorded_rows(folder: str) -> dict[str, int]:
  """path -> rows written, from the folder's build_report.json (empty for folders we did not build)."""
  report_path = paths.join(folder, "build_report.json")
  if not paths.exists(report_path):
    return {}
  try:
    report = json.loads(paths.read_text(report_path))
    return {entry["path"]: int(entry["written"]) for entry in report.get("templates", [])}
  except (ValueError, KeyError, TypeError):
    return {}  # not our report: check without it


def check(folder: str, spec, *, templates_root: str, data_dir: Optional[str] = None,
          print_fn: Optional[Callable[[str], None]] = print) -> CheckResult:
  """Checks `folder` against `spec` (see the module docstring); reads every per-template file."""
  expected = _expected(spec, templates_root, data_dir)
  found = [p for p in paths.glob(paths.join(paths.escape(folder), "*", "*.jsonl"))
           if not paths.basename(p).startswith("merged_")]
  relative = {p: f"{paths.basename(paths.dirname(p))}/{paths.basename(p)}" for p in found}
  result = CheckResult(folder, spec.name, {}, {}, {}, [], 0, [], [], [])
  matched, match = set(), _matcher(expected)
  progress = Progress(len(found), print_fn, label="checked", unit="files")
  for path in found:
    rel = relative[path]
    hits = match(*rel.split("/", 1))
    matched.update(hits)
    if not hits:
      result.unexpected.setdefault(rel.split("/")[0], []).append(rel.split("/", 1)[1])
    _check_file(path, rel, expected[hits[0]][3] if hits else None, result)
    progress.update(1)
  recorded = _recorded_rows(folder)
  for rel, rows in result.files.items():
    if rel in recorded and recorded[rel] != rows:
      result.count_mismatch.append(f"{rel} ({rows:,} rows, the report counted {recorded[rel]:,})")
  empty = [rel for rel, rows in recorded.items() if rows == 0]
  for key in expected:
    if key not in matched:
      lang, prefix, suffix, _ = expected[key]
      if any(rel == key or (suffix and rel.startswith(f"{lang}/{prefix}") and rel.endswith(suffix))
             for rel in empty):
        result.recorded_empty.append(key)
      else:
        result.missing.setdefault(key.split("/")[0], []).append(key.split("/", 1)[1])
  for lang in sorted({rel.split("/")[0] for rel in relative.values()}):
    if not paths.exists(paths.join(folder, lang, f"merged_{lang}.jsonl")):
      result.merged_missing.append(f"{lang}/merged_{lang}.jsonl")
  return result
