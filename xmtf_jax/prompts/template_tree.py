"""A promptsource templates tree (`<dataset>[/<subset>]/templates.yaml`) read the way the xP3 fork did.

Layout: `GEM/xlsum/swahili/templates.yaml` is dataset `GEM/xlsum`, subset `swahili`;
`Fraser/python-state-changes/templates.yaml` is dataset `Fraser/python-state-changes`, no subset. A
folder's place is decided by the file's own `dataset` key where that key is a prefix of the folder
path (owner-prefixed datasets are otherwise ambiguous); the rest of the path is the subset. The
folder, not the file's `subset` key, names the subset: the fork reads
`templates/<dataset>/<subset>/templates.yaml` by path, and several copied files keep a stale key
(the four non-Python xlcost folders say `Python-program-level`; in xp3mt, `mlqa/mlqa.ar.en` says
`mlqa.ar.ar`). Files named otherwise (one `template.yaml`) are ignored, as the fork ignores them.

Duplicate names: the fork maps name -> id with the LAST template of that name in file order, then
looks the id up among the YAML keys. So the later of `codeparrot/apps/all`'s two `abovesol` survives
(key 5b318b2c-...), and a name whose surviving id is not a key (tr13/xp3mt
`multi_eurlex/all_languages` `a_good_translation-en-pt-source+target`) cannot be looked up at all:
the build script skipped it; `templates()` leaves it out and `unreachable()` names it.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import random
import time
from typing import Any

import jinja2

from xmtf_jax import paths
from xmtf_jax.prompts import synthetic, xp3_render
from xmtf_jax.prompts.templates import PromptTemplate, TemplateError, document_templates, read_document

FILE_NAME = "templates.yaml"
_MAX_DEPTH = 4  # owner/dataset/subset is 3 folders deep; one more for safety


@dataclasses.dataclass
class CheckReport:
  """What `TemplateTree.check` found: counts, and every template that did not render, with why."""
  root: str
  files: int = 0
  templates: int = 0
  rendered: int = 0
  unreachable: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (file, name)
  key_mismatches: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (file, keys)
  failures: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # (file, name, why)
  seconds: float = 0.0

  @property
  def reported(self) -> collections.Counter:
    """Templates that render on no synthetic row, counted by reason."""
    return collections.Counter(reason for _, _, reason in self.failures)

  def summary(self) -> str:
    lines = [f"{self.root}: {self.files} files, {self.templates} templates, {self.rendered} render "
             f"on a synthetic row, {len(self.failures)} reported ({self.seconds:.1f} s)"]
    lines += [f"  {count:5d}  {reason}" for reason, count in sorted(self.reported.items())]
    lines += [f"  unreachable (the fork's name -> id lookup fails): {f} '{n}'" for f, n in self.unreachable]
    lines += [f"  file keys differ from its folder (the folder is used): {f} {k}"
              for f, k in self.key_mismatches]
    return "\n".join(lines)


class TemplateTree:
  """The templates of a promptsource `templates/` folder; files are read when first needed, once."""

  def __init__(self, root: str | os.PathLike):
    """`root`: the `templates` folder of the fork, or the checkout holding `promptsource/templates`."""
    root = os.fspath(root).rstrip("/")
    checkout = paths.join(root, "promptsource", "templates")
    self.root = checkout if paths.isdir(checkout) else root
    self._documents: dict[str, dict] = {}
    self._layout: dict[tuple[str, str | None], str] | None = None
    self._mismatches: list[tuple[str, str]] = []

  def _document(self, path: str) -> dict:
    if path not in self._documents:
      self._documents[path] = read_document(path)
    return self._documents[path]

  def _files(self) -> dict[tuple[str, str | None], str]:
    """(dataset, subset) -> file, for every templates.yaml of the tree (parses them all once)."""
    if self._layout is None:
      if not paths.isdir(self.root):
        raise TemplateError(f"templates tree not found: {self.root}. Pass the `templates` folder of a "
                            "promptsource checkout (branch tr13 for xP3, xp3mt for xP3mt).")
      found = []
      for depth in range(1, _MAX_DEPTH + 1):
        found += paths.glob(paths.join(paths.escape(self.root), *["*"] * depth, FILE_NAME))
      layout, self._mismatches = {}, []
      for path in sorted(found):
        key = self._key(path)
        layout.setdefault(key, path)
      self._layout = layout
    return self._layout

  def _key(self, path: str) -> tuple[str, str | None]:
    folder = paths.dirname(path)[len(self.root) + 1:]
    document = self._document(path)
    declared, declared_subset = str(document["dataset"]), document.get("subset")
    if folder == declared or folder.startswith(declared + "/"):
      dataset, subset = declared, folder[len(declared) + 1:] or None
    else:
      dataset, _, subset = folder.rpartition("/") if "/" in folder else (folder, "", "")
      subset = subset or None
    if (dataset, subset) != (declared, declared_subset):
      self._mismatches.append((path, f"dataset={declared!r} subset={declared_subset!r}"))
    return dataset, subset

  def subsets(self) -> list[tuple[str, str | None]]:
    """Every (dataset, subset) of the tree, sorted (None, no subset, first)."""
    return sorted(self._files(), key=lambda k: (k[0], k[1] is not None, k[1] or ""))

  def path(self, dataset: str, subset: str | None) -> str:
    """The file the fork reads for (dataset, subset): by path, like `DatasetTemplates`."""
    path = paths.join(self.root, dataset, subset, FILE_NAME) if subset else paths.join(
        self.root, dataset, FILE_NAME)
    if path not in self._documents and not paths.isfile(path):
      raise TemplateError(f"no templates for dataset '{dataset}'"
                          f"{f' subset {subset!r}' if subset else ''}: {path} does not exist. Check "
                          f"the names, or that {self.root} is the `templates` folder of the fork.")
    return path

  def _lookup(self, dataset: str, subset: str | None) -> tuple[list[PromptTemplate], list[str]]:
    path = self.path(dataset, subset)
    entries = document_templates(self._document(path), path, dataset, subset)
    by_key = dict(entries)
    name_to_id = {template.name: template.id for _, template in entries}
    found, unreachable = [], []
    for name in sorted(name_to_id):
      template = by_key.get(name_to_id[name])
      if template is None:
        unreachable.append(name)
      else:
        found.append(template)
    return found, unreachable

  def templates(self, dataset: str, subset: str | None) -> list[PromptTemplate]:
    """The templates the fork applies for (dataset, subset), sorted by name, one per name."""
    return self._lookup(dataset, subset)[0]

  def unreachable(self, dataset: str, subset: str | None) -> list[str]:
    """Names the fork's `prompts[name]` fails on (the surviving duplicate's id is not a YAML key)."""
    return self._lookup(dataset, subset)[1]

  def check(self, *, every: int = 1) -> CheckReport:
    """Parses every file and renders every template (or every `every`-th) on synthetic rows."""
    start = time.perf_counter()
    report = CheckReport(root=self.root)
    counter = 0
    for dataset, subset in self.subsets():
      report.files += 1
      found, unreachable = self._lookup(dataset, subset)
      report.unreachable += [(self.path(dataset, subset), name) for name in unreachable]
      for template in found:
        counter += 1
        if (counter - 1) % every:
          continue
        report.templates += 1
        why = render_failure(template)
        if why is None:
          report.rendered += 1
        else:
          report.failures.append((template.source, template.name, why))
    report.key_mismatches = list(self._mismatches)
    report.seconds = time.perf_counter() - start
    return report


def render_failure(template: PromptTemplate) -> str | None:
  """None when the template renders on one of its synthetic rows, else why it renders on none."""
  sources = [template.jinja] + ([template.answer_choices] if template.answer_choices else [])
  try:
    rows = list(synthetic.synthetic_rows(sources, xp3_render.environment()))
  except jinja2.TemplateSyntaxError as e:
    return xp3_render.RENDER_ERROR + type(e).__name__
  reasons: list[str] = []
  for row in rows:
    result = xp3_render.render_xp3(template, row, code=False, rng=random.Random(0))
    if isinstance(result, xp3_render.Rendered):
      return None
    reasons.append(result.reason)
  return reasons[0] if reasons else "no synthetic row"


def check_summary(report: CheckReport) -> dict[str, Any]:
  """The report's counts as plain data (for a command's JSON output)."""
  return {"root": report.root, "files": report.files, "templates": report.templates,
          "rendered": report.rendered, "reported": dict(report.reported),
          "unreachable": len(report.unreachable), "seconds": round(report.seconds, 1)}
