"""What the project's code defines, read with `ast` (nothing is imported): modules, their top-level
names, classes and members, function parameters, imports and local aliases, gin registrations and
macros, files. The doc checker (check_docs.py) resolves the docs' names against it.
"""
from __future__ import annotations

import ast
import dataclasses
import glob
import os
import re
from typing import Optional

PY_TREES = ("xmtf_jax", "mixtures", "tests", "benchmarks", "scripts")
LIBRARY_TREES = ("xmtf_jax", "mixtures", "scripts")


@dataclasses.dataclass
class ClassInfo:
  members: set
  bases: list
  init_params: Optional[set]


@dataclasses.dataclass
class ModuleInfo:
  name: str
  path: str
  defined: dict          # top-level name -> "class" | "def" | "var"
  imported: dict         # local name -> dotted target (project or external)
  classes: dict          # class name -> ClassInfo
  functions: dict        # function name -> parameter names (None: takes **kwargs)
  dynamic: set           # names a module-level __getattr__ serves (string keys of its dicts)
  tree: ast.Module


def _params(args: ast.arguments) -> Optional[set]:
  names = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
  if args.vararg:
    names.add(args.vararg.arg)
  return None if args.kwarg else names


def _class_info(node: ast.ClassDef) -> ClassInfo:
  members, init_params = set(), None
  for item in node.body:
    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
      members.add(item.name)
      if item.name == "__init__":
        init_params = _params(item.args)
      for sub in ast.walk(item):
        if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == "self" \
            and isinstance(sub.ctx, ast.Store):
          members.add(sub.attr)
    elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
      members.add(item.target.id)
    elif isinstance(item, ast.Assign):
      members |= {t.id for t in item.targets if isinstance(t, ast.Name)}
    elif isinstance(item, ast.ClassDef):
      members.add(item.name)
  bases = [ast.unparse(b) for b in node.bases]
  return ClassInfo(members, bases, init_params)


def module_name(path: str, root: str) -> str:
  rel = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
  return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def parse_module(path: str, root: str) -> ModuleInfo:
  name = module_name(path, root)
  tree = ast.parse(open(path, encoding="utf-8").read(), path)
  package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
  info = ModuleInfo(name, path, {}, {}, {}, {}, set(), tree)
  body = list(tree.body)
  for node in list(body):  # definitions under a top-level if/try are module level too
    if isinstance(node, (ast.If, ast.Try)):
      body += [n for n in ast.walk(node) if n is not node and isinstance(n, ast.stmt)]
  dict_keys = set()
  for node in body:
    if isinstance(node, ast.ClassDef):
      info.defined[node.name] = "class"
      info.classes[node.name] = _class_info(node)
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      info.defined[node.name] = "def"
      info.functions[node.name] = _params(node.args)
    elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      for target in targets:
        for t in ast.walk(target):
          if isinstance(t, ast.Name):
            info.defined.setdefault(t.id, "var")
      if isinstance(node.value, ast.Dict):
        dict_keys |= {k.value for k in node.value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.asname:
          info.imported[alias.asname] = alias.name
        else:
          info.imported[alias.name.split(".")[0]] = alias.name.split(".")[0]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
      for alias in node.names:
        info.imported[alias.asname or alias.name] = f"{base}.{alias.name}"
  if "__getattr__" in info.functions:
    info.dynamic = dict_keys
  return info


class Project:
  """What the code defines, read with ast: modules, classes, functions, gin names and macros, files."""

  def __init__(self, root: str):
    self.root = root
    self.modules: dict[str, ModuleInfo] = {}
    for tree in PY_TREES:
      for path in sorted(glob.glob(os.path.join(root, tree, "**", "*.py"), recursive=True)):
        info = parse_module(path, root)
        self.modules[info.name] = info
    self.packages = {m.rpartition(".")[0] for m in self.modules if "." in m} | {
        m for m, i in self.modules.items() if i.path.endswith("__init__.py")}
    self.stems: dict[str, list[str]] = {}
    for name in set(self.modules) | self.packages:
      self.stems.setdefault(name.rpartition(".")[2], []).append(name)
    self.classes: dict[str, list[tuple[str, ClassInfo]]] = {}
    self.top_defs: dict[str, set[str]] = {}
    self.code_aliases: dict[str, str] = {}  # `hooks as eval_hooks`: local name -> project module
    for name, info in self.modules.items():
      for cls, ci in info.classes.items():
        self.classes.setdefault(cls, []).append((name, ci))
      for local, target in info.imported.items():
        if not self.is_project(target):
          continue
        if local != target.rpartition(".")[2] and (target in self.modules or target in self.packages
                                                      or os.path.isdir(os.path.join(root, *target.split(".")))):
          self.code_aliases[local] = target
      if name.split(".")[0] in LIBRARY_TREES:
        for top, kind in info.defined.items():
          if kind != "var" or top.isupper():
            self.top_defs.setdefault(top, set()).add(name)
    self.mentioned = self._mentioned()
    self.gin_names = self._gin_names()
    self.macros = self._gin_macros()

  @staticmethod
  def is_project(dotted: str) -> bool:
    return dotted.split(".")[0] in PY_TREES

  def _mentioned(self) -> set[str]:
    """Every identifier, attribute, keyword and identifier-like string the library mentions."""
    words = set(self.stems)
    for info in self.modules.values():
      if info.name.split(".")[0] not in ("xmtf_jax", "mixtures"):
        continue  # the library only: tests and this checker name stale names on purpose
      for node in ast.walk(info.tree):
        if isinstance(node, ast.Name):
          words.add(node.id)
        elif isinstance(node, ast.Attribute):
          words.add(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
          words.add(node.name)
        elif isinstance(node, ast.arg):
          words.add(node.arg)
        elif isinstance(node, ast.keyword) and node.arg:
          words.add(node.arg)
        elif isinstance(node, ast.alias):
          words |= set((node.asname or node.name).split("."))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
          words |= set(re.findall(r"\w+", node.value))
    return words

  def _gin_names(self) -> dict[str, str]:
    """gin name (with its module prefix, if any) -> the dotted name of what it registers."""
    names = {}
    for name, info in self.modules.items():
      if not name.startswith(("xmtf_jax", "mixtures")) or \
          "configurable" not in open(info.path, encoding="utf-8").read():
        continue
      for node in ast.walk(info.tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("external_configurable"):
          kw = {k.arg: k.value.value for k in node.keywords if isinstance(k.value, ast.Constant)}
          target = ast.unparse(node.args[0])
          gin_name = kw.get("name") or target.rpartition(".")[2]
          if kw.get("module"):
            gin_name = f"{kw['module']}.{gin_name}"
          head, _, rest = target.partition(".")
          names[gin_name] = ".".join([info.imported.get(head, f"{name}.{head}")] + ([rest] if rest else []))
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
          for deco in node.decorator_list:
            if "configurable" in ast.unparse(deco):
              module = None
              if isinstance(deco, ast.Call):
                for k in deco.keywords:
                  if k.arg == "module" and isinstance(k.value, ast.Constant):
                    module = k.value.value
              names[f"{module}.{node.name}" if module else node.name] = f"{name}.{node.name}"
    return names

  def _gin_macros(self) -> set[str]:
    macros = set()
    for path in glob.glob(os.path.join(self.root, "gin", "**", "*.gin"), recursive=True):
      text = open(path, encoding="utf-8").read()
      macros |= set(re.findall(r"^([A-Z][A-Z0-9_]*)\s*=", text, re.M))
      macros |= set(re.findall(r"%([A-Z][A-Z0-9_]*)", text))
    return macros

  # -- resolving python names --------------------------------------------------------------------------

  def module(self, dotted: str) -> Optional[ModuleInfo]:
    return self.modules.get(dotted)

  def class_members(self, module: str, cls: str, seen=None) -> Optional[set]:
    info = self.modules.get(module)
    if not info or cls not in info.classes:
      return None
    ci = info.classes[cls]
    members = set(ci.members)
    seen = (seen or set()) | {(module, cls)}
    for base in ci.bases:
      head = base.split(".")[-1].split("[")[0]
      for owner, _ in self.classes.get(head, []):
        if (owner, head) not in seen:
          members |= self.class_members(owner, head, seen) or set()
      if base.split(".")[0] in ("NamedTuple", "typing") or "NamedTuple" in base:
        members |= {"_asdict", "_replace", "_fields"}
    return members

  def resolve(self, dotted: str, depth: int = 0) -> tuple[bool, str]:
    """(resolves?, why not) for an absolute dotted name of the project (module[.attr...])."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
      head = ".".join(parts[:n])
      if head in self.modules or head in self.packages:
        return self.resolve_in(head, parts[n:], depth)
    return False, f"no module {'.'.join(parts[:2])}"

  def resolve_in(self, module: str, rest: list[str], depth: int = 0) -> tuple[bool, str]:
    if not rest:
      return True, ""
    if depth > 8:
      return False, "import cycle"
    info = self.modules.get(module)
    name, more = rest[0], rest[1:]
    sub = f"{module}.{name}"
    if sub in self.modules or sub in self.packages:
      return self.resolve_in(sub, more, depth)
    if info is None:
      return False, f"{module} (a folder without __init__.py) has no module {name}"
    if name in info.classes:
      if not more:
        return True, ""
      members = self.class_members(module, name) or set()
      if more[0] in members and len(more) == 1:
        return True, ""
      return False, f"class {name} ({self.rel(info.path)}) has no member {more[0]}"
    if name in info.functions:
      if not more:
        return True, ""
      return False, f"{name} is a function in {self.rel(info.path)}; it has no attribute {more[0]}"
    if name in info.defined:
      return True, ""  # a variable: its attributes are not followed
    if name in info.imported:
      target = info.imported[name]
      if self.is_project(target):
        return self.resolve(".".join([target] + more), depth + 1)
      return True, ""
    if name in info.dynamic:
      return True, ""
    return False, f"{self.rel(info.path)} defines no {name}"

  def rel(self, path: str) -> str:
    return os.path.relpath(path, self.root)

  def callable_params(self, dotted: str) -> Optional[set]:
    """Parameter names of a project function or class (None when unknown or it takes **kwargs)."""
    parts = dotted.split(".")
    for n in range(len(parts) - 1, 0, -1):
      head = ".".join(parts[:n])
      info = self.modules.get(head)
      if info is None:
        continue
      rest = parts[n:]
      if len(rest) == 1 and rest[0] in info.functions:
        return info.functions[rest[0]]
      if len(rest) == 1 and rest[0] in info.classes:
        ci = info.classes[rest[0]]
        if ci.init_params is not None:
          return ci.init_params - {"self"}
        fields = self.class_members(head, rest[0]) or set()
        return fields if fields and not ci.bases else None
      if len(rest) == 1 and rest[0] in info.imported and self.is_project(info.imported[rest[0]]):
        return self.callable_params(info.imported[rest[0]])
      if len(rest) == 2 and rest[0] in info.classes:
        return None  # methods: not followed
      return None
    return None

  # -- files -------------------------------------------------------------------------------------------

  def file_exists(self, path: str) -> bool:
    for base in (self.root, os.path.join(self.root, "xmtf_jax")):
      full = os.path.join(base, path)
      if ("*" in path and glob.glob(full)) or os.path.exists(full):
        return True
    return False

  def find_basename(self, name: str) -> list[str]:
    if not hasattr(self, "_basenames"):
      self._basenames = {}
      for tree in PY_TREES + ("gin",):
        for folder, _, files in os.walk(os.path.join(self.root, tree)):
          for file in files:
            self._basenames.setdefault(file, []).append(os.path.join(folder, file))
    return self._basenames.get(name, [])
