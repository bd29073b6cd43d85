"""Checks that what the docs (README.md, docs/*.md) name exists in the code as it is.

    python scripts/check_docs.py        exit status 1 and one line per finding: doc:line: `name`: why

Nothing of the project is imported: every module is parsed with `ast` (about a second). What counts
as a name of this project (anything else is prose and is not checked, so nothing else can be a
false finding):

- file paths ending in .py / .gin / .md that start with a folder of the repository (`xmtf_jax/`,
  `tests/`, `gin/`, `docs/`, ...) or of the package (`data/pipeline.py` is `xmtf_jax/data/pipeline.py`,
  as the docs write them), with `{a,b}` alternatives and `*` globs, and `path.py:function`; a bare
  `name.py` / `name.gin` in backticks (looked up next to the last path on the line, else anywhere; in a
  table row whose first cell is one folder, `mixtures/`, in that folder only);
- dotted names in backticks and code blocks whose first part is `xmtf_jax` or `mixtures`, a module of
  the project (`partitioning.make_mesh`), a class of the project (`TrainConfig.num_data_shards`), a gin
  configurable (`zero_shot_eval_hook.generation_tasks`, `--gin.TrainConfig.seed=0`), `model` (an
  `EncoderDecoderModel`, as in the README) or a name a Python example imported; keyword arguments of
  calls to project functions; the imports of Python examples;
- a local alias the code uses for a project module (`data_tasks`, `hf_reader`): the docs name modules
  by their names;
- in a table row whose first cell names project modules: a bare `name` defined at the top level of
  another module and neither defined nor imported by the row's modules (`BatchFunction` in the row
  of `model/scoring.py`), or a snake_case name the library never mentions at all (`default_mesh`);
- knob tables: a first column of `macro` must hold macros a gin file sets or uses; a table headed
  `` `infer.*` / `DecodingConfig.*` `` lists parameters or fields of those gin configurables; in code
  blocks, `--gin.MACRO=` bindings and `@configurable` references;
- Markdown links `[text](target#anchor)` and plain `docs/x.md#anchor`: the file and the heading.

Names of your own files and modules are written `my_*` in the docs and are not looked up.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
import sys
from typing import Iterable, Optional

from project_index import PY_TREES, Project, module_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH_ROOTS = ("xmtf_jax", "mixtures", "tests", "benchmarks", "scripts", "gin", "docs", "data")
# A dotted token ending like this is a file name (`model.safetensors`, `results.json`), not a name.
FILE_SUFFIXES = {"safetensors", "json", "jsonl", "md", "py", "gin", "png", "txt", "npy", "bin", "yaml",
                 "zip", "csv", "tsv", "parquet", "model", "index", "gz", "html", "sh"}
TYPED_VARIABLES = {"model": "xmtf_jax.model.encoder_decoder.EncoderDecoderModel"}
USER_PLACEHOLDER = re.compile(r"^(my|your)(_|\.|$)")

DOTTED = re.compile(r"(?<![\w./@-])@?([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(\s*\()?")
PATH = re.compile(r"(?<![\w./{}<>*-])((?:[\w*-]+|\{[\w,]+\})(?:/(?:[\w.*-]+|\{[\w,.]+\}|[\w*-]*\{[\w,]+\}[\w*.-]*))*"
                  r"\.(?:py|gin|md))(?::(\w+))?(#[\w-]+)?(?![\w/])")
BARE_FILE = re.compile(r"^([\w-]+\.(?:py|gin))$")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
GIN_BINDING = re.compile(r"--gin\.([A-Za-z_][\w.]*)\s*=")
GIN_FILE_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*\.[A-Za-z_]\w*)\s*=")
PYTHON_M = re.compile(r"python3?\s+-m\s+([\w.]+)")
BACKTICKS = re.compile(r"`([^`]+)`")
IMPORT_LINE = re.compile(r"^\s*(?:from\s+([\w.]+)\s+)?import\s+(.+)$")
KWARG = re.compile(r"[(,]\s*(\w+)\s*=(?!=)")


@dataclasses.dataclass
class Finding:
  doc: str
  line: int
  name: str
  why: str

  def __str__(self):
    return f"{self.doc}:{self.line}: `{self.name}`: {self.why}"


# -- Markdown ------------------------------------------------------------------------------------------

def slug(heading: str) -> str:
  """GitHub's anchor for a heading."""
  text = re.sub(r"`([^`]*)`", r"\1", heading.strip())
  text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
  text = re.sub(r"[^\w\- ]", "", text.lower())
  return text.replace(" ", "-")


def anchors(path: str) -> set[str]:
  found, counts, fence = set(), {}, False
  for line in open(path, encoding="utf-8"):
    if line.lstrip().startswith("```"):
      fence = not fence
      continue
    m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
    if m and not fence:
      s = slug(m.group(1))
      n = counts.get(s, 0)
      counts[s] = n + 1
      found.add(s if n == 0 else f"{s}-{n}")
  return found


def expand_braces(path: str) -> list[str]:
  m = re.search(r"\{([^{}]*,[^{}]*)\}", path)
  if not m:
    return [path]
  return [e for alt in m.group(1).split(",") for e in expand_braces(path[:m.start()] + alt + path[m.end():])]


@dataclasses.dataclass
class Line:
  number: int
  text: str
  fence: Optional[str]   # None in prose, else the code block's language ("" when none)


def read_lines(path: str) -> list[Line]:
  lines, fence = [], None
  for number, text in enumerate(open(path, encoding="utf-8").read().split("\n"), 1):
    stripped = text.lstrip()
    if stripped.startswith("```"):
      fence = stripped[3:].strip() if fence is None else None
      continue
    lines.append(Line(number, text, fence))
  return lines


class DocChecker:
  def __init__(self, project: Project, doc_path: str):
    self.project = project
    self.path = doc_path
    self.doc = project.rel(doc_path)
    self.lines = read_lines(doc_path)
    self.findings: list[Finding] = []
    self.aliases: dict[str, str] = {}      # names the doc's python blocks import from the project
    self.variables: set[str] = set()       # names the doc's python blocks assign
    for line in self.lines:
      if line.fence == "python":
        self._scan_python_bindings(line.text)

  def report(self, line: int, name: str, why: str):
    self.findings.append(Finding(self.doc, line, name, why))

  def _scan_python_bindings(self, text: str):
    m = IMPORT_LINE.match(text)
    if m:
      base, names = m.group(1), m.group(2)
      for part in names.split("#")[0].strip("() ").split(","):
        words = part.split()
        if not words:
          continue
        target, local = words[0], words[-1]
        full = f"{base}.{target}" if base else target
        if Project.is_project(full):
          self.aliases[local if base or len(words) > 1 else target.split(".")[0]] = (
              full if base or len(words) > 1 else target.split(".")[0])
      return
    m = re.match(r"^\s*(?:for\s+)?([\w, ]+?)\s*(?:=(?!=)|\s+in\s)", text)
    if m:
      self.variables |= {v.strip() for v in m.group(1).split(",") if v.strip().isidentifier()}

  # -- the checks --------------------------------------------------------------------------------------

  def run(self) -> list[Finding]:
    table = None   # "macro", or the gin configurables a knob table's header names (`infer.*`)
    for line in self.lines:
      text = line.text
      if line.fence is None and text.startswith("|"):
        cells = [c.strip() for c in text.strip().strip("|").split("|")]
        if re.match(r"^[\s|:-]+$", text):
          pass  # the header's separator row
        elif table is None:
          configurables = re.findall(r"`([A-Za-z_][\w.]*)\.\*`", cells[0])
          table = "macro" if cells[0].lower() == "macro" else configurables or ""
        else:
          self.check_knob_row(line.number, cells[0], table)
      else:
        table = None
      self.check_links(line)
      self.check_paths(line)
      self.check_gin(line)
      self.check_names(line)
      if line.fence is None and text.startswith("|"):
        self.check_row_placement(line)
    if any(l.fence == "python" for l in self.lines):
      self.check_python_blocks()
    return sorted(self.findings, key=lambda f: f.line)

  def check_knob_row(self, number: int, cell: str, table) -> None:
    """A row of a knob table: macros that gin files set, or parameters of the header's configurables."""
    if table == "macro":
      for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell):
        if name not in self.project.macros:
          self.report(number, name, "no gin file sets or uses this macro")
      return
    for configurable in table or ():
      if configurable not in self.project.gin_names:
        self.report(number, f"{configurable}.*", "not a registered gin configurable")
        return
    for span in re.findall(r"`([A-Za-z_][\w.]*)`", cell) if table else ():
      if "." in span:
        continue  # `HeldoutSuite.data_dir`: checked as a dotted name
      if not any(self.check_gin_name(f"{c}.{span}")[0] for c in table):
        self.report(number, span, f"no parameter or field of {' / '.join(table)}")

  def check_links(self, line: Line):
    if line.fence is not None:
      return
    targets = LINK.findall(line.text)
    for m in re.finditer(r"(?<![\w/(])((?:docs/)?[\w-]+\.md)(#[\w-]+)", line.text):
      targets.append(m.group(1) + m.group(2))
    for target in targets:
      if re.match(r"^[a-z]+:", target):
        continue
      path, _, anchor = target.partition("#")
      base = os.path.dirname(self.path)
      full = os.path.normpath(os.path.join(base, path)) if path else self.path
      if path and not os.path.exists(full):
        alt = os.path.join(self.project.root, path)   # plain `docs/x.md#a` from a doc in docs/
        if os.path.exists(alt) and not target.startswith("["):
          full = alt
        else:
          self.report(line.number, target, f"link target {os.path.relpath(full, self.project.root)} does not exist")
          continue
      if anchor and full.endswith(".md") and anchor not in anchors(full):
        self.report(line.number, target, f"{self.project.rel(full)} has no heading with anchor #{anchor}")

  def check_paths(self, line: Line):
    text = line.text
    context_dir, strict_dir = None, None
    if line.fence is None and text.startswith("|"):  # a module table's row: `mixtures/` | `demo.py` ...
      folders = re.findall(r"`([\w/]+)/`", text.strip().strip("|").split("|")[0])
      if len(folders) == 1 and os.path.isdir(os.path.join(self.project.root, folders[0])):
        strict_dir = folders[0]
    for m in re.finditer(r"`([^`]+)`|" + PATH.pattern, text):
      if m.group(1) is not None:  # a backtick span: paths inside it, or a bare file name
        span = m.group(1).strip()
        bare = BARE_FILE.match(span)
        if bare and strict_dir:
          if not os.path.exists(os.path.join(self.project.root, strict_dir, span)):
            self.report(line.number, span, f"no such file in {strict_dir}/ (the row's folder)")
        elif bare:
          self._check_bare_file(line, span, context_dir)
          continue
        for pm in PATH.finditer(span):
          context_dir = self._check_path(line, pm) or context_dir
      else:
        context_dir = self._check_path(line, PATH.match(text, m.start())) or context_dir

  def _check_path(self, line: Line, m) -> Optional[str]:
    path, func = m.group(1), m.group(2)
    first = path.split("/")[0]
    if "/" not in path:
      return None
    if first not in PATH_ROOTS and first not in self.project.stems and not first.startswith("{"):
      return None
    if USER_PLACEHOLDER.match(os.path.basename(path)) or re.search(r"\{\w+\}", path):
      return None  # `{lang}` placeholders are data layouts, not files of ours
    resolved_dir = None
    for candidate in expand_braces(path):
      if not self.project.file_exists(candidate):
        self.report(line.number, candidate, "no such file (looked in the repository root and xmtf_jax/)")
        continue
      resolved_dir = os.path.dirname(candidate)
      if func and candidate.endswith(".py"):
        module = self._module_of_path(candidate)
        info = self.project.module(module) if module else None
        if info and func not in info.defined and func not in info.imported:
          self.report(line.number, f"{candidate}:{func}", f"{candidate} defines no {func}")
    return resolved_dir

  def _module_of_path(self, path: str) -> Optional[str]:
    for base in ("", "xmtf_jax/"):
      full = os.path.join(self.project.root, base + path)
      if os.path.exists(full):
        return module_name(full, self.project.root)
    return None

  def _check_bare_file(self, line: Line, name: str, context_dir: Optional[str]):
    if USER_PLACEHOLDER.match(name):
      return
    if context_dir and self.project.file_exists(os.path.join(context_dir, name)):
      return
    if not self.project.find_basename(name):
      where = f" in {context_dir}/ or" if context_dir else ""
      self.report(line.number, name, f"no such file{where} anywhere in the repository")

  def check_gin(self, line: Line):
    text = line.text
    for m in GIN_BINDING.finditer(text):
      name = m.group(1)
      if "." not in name:
        if line.fence is not None and name not in self.project.macros:
          self.report(line.number, f"--gin.{name}", "no gin file sets or uses this macro")
      else:
        ok, why = self.check_gin_name(name)
        if not ok:
          self.report(line.number, name, why)
    if line.fence is not None and line.fence != "python":
      m = GIN_FILE_LINE.match(text.lstrip("# "))
      if m and not text.lstrip().startswith("--"):
        ok, why = self.check_gin_name(m.group(1))
        if not ok:
          self.report(line.number, m.group(1), why)
      for ref in re.findall(r"@([A-Za-z_][\w.]*)", text):
        if not USER_PLACEHOLDER.match(ref) and ref not in self.project.gin_names:
          self.report(line.number, "@" + ref, "not a registered gin configurable")

  def check_gin_name(self, name: str) -> tuple[bool, str]:
    """`Configurable.param` (or `module.Configurable.param`)."""
    configurable, _, param = name.rpartition(".")
    if configurable not in self.project.gin_names:
      if USER_PLACEHOLDER.match(configurable):
        return True, ""
      return False, f"{configurable} is not a registered gin configurable (xmtf_jax/cli/configurables.py)"
    dotted = self.project.gin_names[configurable]
    params = self.project.callable_params(dotted)
    if params is None:
      params = self._members_of(dotted)
    if params is not None and param not in params:
      return False, f"gin configurable {configurable} has no parameter or field {param}"
    return True, ""

  def _members_of(self, dotted: str) -> Optional[set]:
    module, _, cls = dotted.rpartition(".")
    info = self.project.module(module)
    if info and cls in info.imported:
      return self._members_of(info.imported[cls])
    return self.project.class_members(module, cls)

  # -- dotted names ------------------------------------------------------------------------------------

  def spans(self, line: Line) -> Iterable[str]:
    if line.fence is not None:
      text = line.text
      if line.fence != "python":
        text = GIN_BINDING.sub(" ", text)
        text = re.sub(r"--gin_file=\S+", " ", text)
      yield text
    else:
      for span in BACKTICKS.findall(line.text):
        yield GIN_BINDING.sub(" ", span)
      for m in re.finditer(r"(?<![\w.`])(xmtf_jax(?:\.\w+)+)", BACKTICKS.sub(" ", line.text)):
        yield m.group(1)

  def check_names(self, line: Line):
    if line.fence == "python":
      return  # python blocks: check_python_blocks
    for span in self.spans(line):
      if line.fence is None and GIN_FILE_LINE.match(span) and "(" not in span.split("=")[0]:
        ok, why = self.check_gin_name(GIN_FILE_LINE.match(span).group(1))
        if not ok:
          self.report(line.number, GIN_FILE_LINE.match(span).group(1), why)
        continue
      for m in DOTTED.finditer(span):
        name = m.group(1)
        if PATH.fullmatch(name) or self._is_path_part(span, m):
          continue
        self.check_dotted(line.number, name, {}, call_args=self._call_args(span, m))

  @staticmethod
  def _is_path_part(span: str, m) -> bool:
    return m.end(1) < len(span) and span[m.end(1)] in "/:" and not span[m.end(1):].startswith(": ")

  @staticmethod
  def _call_args(span: str, m) -> Optional[str]:
    if not m.group(2):
      return None
    depth, start = 0, m.end(0) - 1
    for i in range(start, len(span)):
      depth += {"(": 1, ")": -1}.get(span[i], 0)
      if depth == 0:
        return span[start:i + 1]
    return span[start:]

  def check_dotted(self, number: int, name: str, aliases: dict, call_args=None):
    project = self.project
    parts = name.split(".")
    head = parts[0]
    if parts[-1] in FILE_SUFFIXES and head not in ("xmtf_jax", "mixtures"):
      return
    if USER_PLACEHOLDER.match(head):
      return
    candidates: list[str] = []
    gin_ok = None
    if head in aliases:
      candidates = [".".join([aliases[head]] + parts[1:])]
    elif head in TYPED_VARIABLES:
      candidates = [".".join([TYPED_VARIABLES[head]] + parts[1:])]
    elif head in ("xmtf_jax", "mixtures"):
      candidates = [name]
    elif head in self.variables:
      return
    else:
      if len(parts) >= 2:
        for n in (2, 1):
          configurable = ".".join(parts[:n])
          if configurable in project.gin_names and len(parts) == n + 1:
            gin_ok = self.check_gin_name(name)
      if head in project.stems:
        candidates += [".".join([m] + parts[1:]) for m in project.stems[head]]
      if head in project.classes:
        candidates += [".".join([owner, head] + parts[1:]) for owner, _ in project.classes[head]]
      if not candidates and gin_ok is None:
        if head in project.code_aliases:
          self.report(number, name, f"{head} is the code's local alias of {project.code_aliases[head]}; "
                                    f"name the module")
        return  # not a name of this project (seqio's Mixture, jax, a tensor name): prose
    if gin_ok and gin_ok[0]:
      return
    results = [project.resolve(c) for c in candidates]
    if any(ok for ok, _ in results):
      if call_args:
        self._check_kwargs(number, name, [c for c, (ok, _) in zip(candidates, results) if ok], call_args)
      return
    why = "; ".join(sorted({w for _, w in results})) or (gin_ok[1] if gin_ok else "unresolved")
    if gin_ok:
      why = f"{gin_ok[1]}; {why}" if candidates else gin_ok[1]
    self.report(number, name, why)

  def _check_kwargs(self, number: int, name: str, resolved: list[str], args: str):
    depth, top = 0, []
    for ch in args:  # keyword names at the call's own level, not those of nested calls
      depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(ch, 0)
      top.append(ch if depth <= 1 else " ")
    keywords = set(KWARG.findall("".join(top))) - {"self"}
    if not keywords:
      return
    for dotted in resolved:
      params = self.project.callable_params(dotted)
      if params is None or keywords <= params:
        return
    bad = sorted(keywords - (self.project.callable_params(resolved[0]) or set()))
    self.report(number, name, f"takes no keyword argument {', '.join(bad)}")

  def check_python_blocks(self):
    """Python examples: imports resolve, `alias.name` resolves, keyword arguments exist."""
    for line in self.lines:
      if line.fence != "python":
        continue
      m = IMPORT_LINE.match(line.text)
      if m:
        base, names = m.group(1), m.group(2)
        for part in names.split("#")[0].strip("() ").split(","):
          words = part.split()
          if not words:
            continue
          full = f"{base}.{words[0]}" if base else words[0]
          if Project.is_project(full):
            ok, why = self.project.resolve(full)
            if not ok:
              self.report(line.number, full, why)
        continue
      code = line.text
      for dm in DOTTED.finditer(code):
        if self._is_path_part(code, dm):
          continue
        self.check_dotted(line.number, dm.group(1), self.aliases, call_args=self._call_args(code, dm))

  # -- table rows: names in the row of their module ----------------------------------------------------

  def check_row_placement(self, line: Line):
    """Rows of a module table (first cell: the module paths): the names they list live there."""
    first = line.text.strip().strip("|").split("|")[0]
    modules = []
    for m in PATH.finditer(first):
      for candidate in expand_braces(m.group(1)):
        if candidate.endswith(".py") and "/" in candidate:
          module = self._module_of_path(candidate)
          if module:
            modules.append(module)
    if not modules:
      return
    # bare names continue the folder of the cell's first path: `xmtf_jax/train/loop.py`, `trainer.py`
    folder = os.path.dirname(self.project.modules[modules[0]].path)
    for name in re.findall(r"`([\w-]+)\.py`", first):
      if os.path.exists(os.path.join(folder, name + ".py")):
        modules.append(module_name(os.path.join(folder, name + ".py"), self.project.root))
    local = set()
    for module in modules:
      info = self.project.modules[module]
      local |= set(info.defined) | set(info.imported)  # what a row's module defines or uses
      for ci in info.classes.values():
        local |= ci.members
      for params in info.functions.values():
        local |= params or set()
    for span in BACKTICKS.findall(line.text):
      m = re.match(r"^@?(\w+)\s*(\(.*\))?\s*(->.*)?$", span.strip())
      if not m:
        continue
      name = m.group(1)
      if name in self.project.code_aliases and name not in self.project.stems:
        self.report(line.number, name, f"{name} is the code's local alias of "
                                       f"{self.project.code_aliases[name]}; name the module")
        continue
      if "_" in name.strip("_") and name not in self.project.mentioned:
        self.report(line.number, name, "the code defines and mentions no such name")
        continue
      if name in local or name not in self.project.top_defs:
        continue
      owners = sorted(self.project.rel(self.project.modules[o].path) for o in self.project.top_defs[name])
      self.report(line.number, name, f"defined in {', '.join(owners)}, not in this row's "
                                     f"{', '.join(self.project.rel(self.project.modules[m].path) for m in modules)}")


def doc_paths(root: str) -> list[str]:
  return [os.path.join(root, "README.md")] + sorted(glob.glob(os.path.join(root, "docs", "*.md")))


def check(root: str = ROOT, docs: Optional[list[str]] = None, project: Optional[Project] = None
          ) -> list[Finding]:
  """The findings for `docs` (default README.md and docs/*.md under `root`), against the code in `root`."""
  project = project or Project(root)
  findings = []
  for doc in docs or doc_paths(root):
    findings += DocChecker(project, doc).run()
  return findings


def main(argv: list[str]) -> int:
  root = argv[1] if len(argv) > 1 else ROOT
  findings = check(root)
  for finding in findings:
    print(finding)
  if not findings:
    print(f"docs: every name, path and link resolves ({len(doc_paths(root))} files)")
  return 1 if findings else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
