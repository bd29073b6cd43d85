"""No module-level mutable run state in the library: a module-level container or RNG that the
module itself mutates is state two runs (or two tests) in one process would share.

Settings travel in config objects and statistics belong to the batch source that counted them
(docs/architecture.md "Run state has an owner"); the allow-list holds caches of facts that do not
depend on the run (each with why).
"""
import ast
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MUTATORS = {"append", "extend", "insert", "update", "setdefault", "pop", "popitem", "clear", "add",
            "remove", "discard", "seed", "shuffle", "random", "choice", "randint", "sample"}
ALLOWED = {
    # Line counts of data files keyed by (root, cache dir); each entry is keyed by the file's size and
    # mtime: facts about files, the same for every run.
    ("xmtf_jax/data/line_counts.py", "_REGISTRY"),
    # The held-out suite's task facts beside seqio's TaskRegistry (global by seqio's design): filled
    # when a task is registered, read by the evaluator.
    ("xmtf_jax/evaluation/heldout_tasks.py", "TASK_INFO"),
    # Known debt: examples a template does not apply to, per task, written when the task's data is
    # read; should move to the evaluator that reads them (the batch source owns its counts already).
    ("xmtf_jax/evaluation/heldout_tasks.py", "NOT_APPLICABLE"),
}


def mutated_module_state(path: str) -> list[str]:
  tree = ast.parse(open(path, encoding="utf-8").read(), path)
  candidates = {}
  for node in tree.body:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
        node, ast.AnnAssign) and node.value is not None else []
    value = getattr(node, "value", None)
    mutable = isinstance(value, (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp)) or (
        isinstance(value, ast.Call) and getattr(value.func, "attr", getattr(value.func, "id", ""))
        in {"dict", "list", "set", "defaultdict", "OrderedDict", "Counter", "Random", "deque"})
    for target in targets:
      if mutable and isinstance(target, ast.Name):
        candidates[target.id] = node.lineno
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Global):
      found.update(n for n in node.names if n in candidates)
    elif isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
      for target in (node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]):
        if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name) \
            and target.value.id in candidates:
          found.add(target.value.id)
    elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
        and node.value.id in candidates and node.attr in MUTATORS:
      found.add(node.value.id)  # called here, or handed out to be called (e.g. as a jinja filter)
  return sorted(found)


def library_modules():
  for folder in ("xmtf_jax", "mixtures"):
    for root, _, files in os.walk(os.path.join(REPO_ROOT, folder)):
      for name in files:
        if name.endswith(".py"):
          path = os.path.join(root, name)
          yield os.path.relpath(path, REPO_ROOT).replace(os.sep, "/"), path


def test_no_module_level_mutable_run_state():
  problems = [f"{rel}: module-level {name} is mutated"
              for rel, path in library_modules() for name in mutated_module_state(path)
              if (rel, name) not in ALLOWED]
  assert not problems, "\n".join(problems)


def test_the_check_sees_a_mutated_global_and_an_rng(tmp_path):
  module = tmp_path / "m.py"
  module.write_text("import random\nCOUNTS = {}\n_RNG = random.Random(0)\nFROZEN = {'a': 1}\n"
                    "def count(k):\n  COUNTS[k] = COUNTS.get(k, 0) + 1\n"
                    "def pick(xs):\n  return _RNG.choice(xs)\n"
                    "def read(k):\n  return FROZEN[k]\n")
  assert mutated_module_state(str(module)) == ["COUNTS", "_RNG"]
