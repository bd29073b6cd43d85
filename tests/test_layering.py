"""The package layering stays true: imports only go down the data flow, no cycles, no import dodges.

Layers, bottom to top (docs/architecture.md draws them):
  base        xmtf_jax.paths, xmtf_jax.progress, xmtf_jax.errors  (stdlib-level helpers every layer may use)
  prompts     promptsource template files and trees, strict (evaluation) and xP3 rendering
  parallel    mesh, logical-axis rules, shardings, multi-host helpers
  data        record sources, xP3 layouts, tasks, mixing, the per-host pipeline, the data report
  model       config, network, dropout, the task-level model, scoring
  checkpoint  opening a model path (one classification), reading our checkpoints (one orbax API)
  inference   decoding algorithms, batched generation
  hf          HF name mapping, reading folders, export, tokenizer files, verification, model card
  train       state, step, optimizer, losses, loop, saving checkpoints, hooks, pretrained loading
  evaluation  rank classification, held-out sets, results, eval during training
  xp3build    building xP3-style collections: specs, raw rows, language routing, writing files
  mixtures    the top-level `mixtures/` package: task and mixture definitions users copy
  cli         entry points: gin parsing and registration, one library call each
The package face `xmtf_jax/__init__.py` and the `python -m` shims (`xmtf_jax/<command>.py`,
`xmtf_jax/train/__main__.py`) are entry points above all of these.
"""
from __future__ import annotations

import ast
import os

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LAYERS = ("base", "prompts", "parallel", "data", "model", "checkpoint", "inference", "hf", "train",
          "evaluation", "xp3build", "mixtures", "cli")
LEVEL = {name: i for i, name in enumerate(LAYERS)}
ENTRY = len(LAYERS)  # mixtures, shims and the package face


def layer_of(module: str) -> int:
  """The layer index of a dotted module name of this project."""
  parts = module.split(".")
  if parts[0] == "mixtures":
    return LEVEL["mixtures"]
  if len(parts) == 1 or parts[-1] == "__main__":
    return ENTRY  # the face: xmtf_jax/__init__.py
  head = parts[1]
  if head in ("paths", "progress", "errors"):
    return LEVEL["base"]
  if head in LEVEL:
    return LEVEL[head]
  return ENTRY  # xmtf_jax/<command>.py shims


def module_name(path: str, root: str) -> str:
  rel = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
  return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def project_imports(path: str, module: str) -> list[tuple[str, int, bool]]:
  """(imported project module, line, at module level?) for every import in the file."""
  tree = ast.parse(open(path, encoding="utf-8").read(), path)
  top_level = {id(node) for node in tree.body}
  for node in tree.body:  # imports under a top-level `if`/`try` are still module level
    if isinstance(node, (ast.If, ast.Try)):
      top_level |= {id(n) for n in ast.walk(node)}
  package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
  found = []
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
      # `from xmtf_jax.train import loop` imports the module xmtf_jax.train.loop
      names = [f"{base}.{a.name}" for a in node.names] + [base]
    for name in names:
      if name.split(".")[0] in ("xmtf_jax", "mixtures"):
        found.append((name, node.lineno, id(node) in top_level))
  return found


def resolve(name: str, modules: set[str]) -> str | None:
  """The longest prefix of `name` that is a module of the tree (drops imported attributes)."""
  parts = name.split(".")
  for n in range(len(parts), 0, -1):
    candidate = ".".join(parts[:n])
    if candidate in modules:
      return candidate
  return None


def scan(root: str) -> dict[str, list[tuple[str, int, bool]]]:
  files = {}
  for top in ("xmtf_jax", "mixtures"):
    for folder, _, names in os.walk(os.path.join(root, top)):
      for name in names:
        if name.endswith(".py"):
          path = os.path.join(folder, name)
          files[module_name(path, root)] = path
  modules = set(files)
  graph = {}
  for module, path in files.items():
    edges = []
    for name, line, top_level in project_imports(path, module):
      target = resolve(name, modules)
      if target and target != module and not (target in module.split(".")[0] and target == module.split(".")[0]):
        edges.append((target, line, top_level))
    graph[module] = edges
  return graph


def violations(root: str) -> list[str]:
  """Upward imports, function-level imports of project modules outside entry points, and cycles."""
  graph = scan(root)
  problems = []
  for module, edges in graph.items():
    for target, line, top_level in edges:
      if target in ("xmtf_jax", "mixtures") and layer_of(module) == ENTRY:
        continue
      if layer_of(target) > layer_of(module) or (target == "xmtf_jax" and layer_of(module) < ENTRY):
        problems.append(f"{module}:{line} imports {target}: upward ({LAYERS[layer_of(module)] if layer_of(module) < ENTRY else 'entry'}"
                        f" -> {LAYERS[layer_of(target)] if layer_of(target) < ENTRY else 'entry'})")
      if not top_level and layer_of(module) < LEVEL["cli"]:
        problems.append(f"{module}:{line} imports {target} inside a function (fix the layering instead)")
  # cycles among modules (package faces re-export their children, so skip edges into a face from
  # its own children)
  edges = {m: {t for t, _, _ in e if not m.startswith(t + ".")} for m, e in graph.items()}
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(m: str) -> None:
    state[m] = 1
    stack.append(m)
    for t in sorted(edges.get(m, ())):
      if state.get(t) == 1:
        problems.append("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
      elif t not in state:
        visit(t)
    stack.pop()
    state[m] = 2

  for m in sorted(edges):
    if m not in state:
      visit(m)
  return problems


def import_levels(root: str) -> int:
  """Floors of the module import graph (1 = imports no project module)."""
  graph = scan(root)
  edges = {m: {t for t, _, _ in e if not m.startswith(t + ".") and t != m} for m, e in graph.items()}
  memo: dict[str, int] = {}

  def level(m: str, seen=()) -> int:
    if m not in memo:
      memo[m] = 1 + max((level(t, seen + (m,)) for t in edges.get(m, ()) if t not in seen), default=0)
    return memo[m]

  return max(level(m) for m in edges)


def test_the_tree_is_layered():
  assert violations(REPO_ROOT) == []


def _copy_tree(tmp_path) -> str:
  import shutil
  for top in ("xmtf_jax", "mixtures"):
    shutil.copytree(os.path.join(REPO_ROOT, top), tmp_path / top,
                    ignore=shutil.ignore_patterns("__pycache__"))
  return str(tmp_path)


@pytest.mark.parametrize("module, line, expected", [
    ("xmtf_jax/data/records.py", "from xmtf_jax.train import checkpoints\n",
     "xmtf_jax.data.records:1 imports xmtf_jax.train.checkpoints: upward (data -> train)"),
    ("xmtf_jax/model/network.py", "import mixtures\n",
     "xmtf_jax.model.network:1 imports mixtures: upward (model -> mixtures)"),
    ("xmtf_jax/train/losses.py", "def f():\n  from xmtf_jax.model import config\n",
     "xmtf_jax.train.losses:2 imports xmtf_jax.model.config inside a function"),
])
def test_the_checker_catches_an_upward_or_hidden_import(tmp_path, module, line, expected):
  root = _copy_tree(tmp_path)
  path = os.path.join(root, module)
  with open(path, encoding="utf-8") as f:
    text = f.read()
  with open(path, "w", encoding="utf-8") as f:
    f.write(line + text)
  assert any(p.startswith(expected) for p in violations(root)), violations(root)


def test_the_checker_catches_a_cycle(tmp_path):
  root = _copy_tree(tmp_path)
  path = os.path.join(root, "xmtf_jax/model/dropout.py")
  with open(path, encoding="utf-8") as f:
    text = f.read()
  with open(path, "w", encoding="utf-8") as f:  # network imports dropout; now dropout imports network
    f.write("from xmtf_jax.model import network\n" + text)
  assert any(p.startswith("import cycle:") and "xmtf_jax.model.dropout" in p for p in violations(root))


def test_modules_stay_readable():
  long = []
  for folder, _, names in os.walk(os.path.join(REPO_ROOT, "xmtf_jax")):
    for name in names:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        lines = sum(1 for _ in open(path, encoding="utf-8"))
        if lines > 420:
          long.append(f"{os.path.relpath(path, REPO_ROOT)}: {lines} lines")
  assert long == []
