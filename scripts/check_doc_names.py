"""Checks that the module, function and file names the docs mention exist (README.md, docs/*.md).

Every `xmtf_jax.a.b` / `mixtures.a` dotted name must resolve to a module file plus names defined in it
(def / class / assignment / import), and every `path/to/file.py` (or .gin) must exist. Static: nothing
is imported.   python scripts/check_doc_names.py   (exit status 1 lists the names that do not resolve)
"""
import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOTTED = re.compile(r"\b((?:xmtf_jax|mixtures)(?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
FROM_IMPORT = re.compile(r"from ((?:xmtf_jax|mixtures)[\w.]*) import ([\w, ]+)")
FILES = re.compile(r"(?<![\w./{}-])((?:xmtf_jax|mixtures|tests|benchmarks|scripts|gin|docs|data)/[\w./-]*\.(?:py|gin|md|json|model))\b")


def module_file(parts):
  base = os.path.join(ROOT, *parts)
  for candidate in (base + ".py", os.path.join(base, "__init__.py")):
    if os.path.exists(candidate):
      return candidate
  return None


def defines(path, name):
  text = open(path, encoding="utf-8").read()
  return re.search(rf"^\s*(?:def|class|async def)\s+{name}\b|^\s*{name}\s*[:=]|\bimport\b[^\n]*\b{name}\b"
                   rf"|^\s*self\.{name}\s*=|^\s+{name}\s*:|[\"']{name}[\"']", text, re.M) is not None


def check_dotted(name):
  parts = name.split(".")
  for n in range(len(parts), 0, -1):
    path = module_file(parts[:n])
    if path:
      rest = parts[n:]
      if not rest:
        return True
      # module.function, module.Class, module.Class.method: every remaining name defined in the file
      return all(defines(path, r) for r in rest)
  return False


def main():
  docs = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
  bad = []
  for doc in docs:
    for lineno, line in enumerate(open(doc, encoding="utf-8"), 1):
      names = DOTTED.findall(line)
      for package, imported in FROM_IMPORT.findall(line):
        names += [f"{package}.{n.strip()}" for n in imported.split(",") if n.strip()]
      for name in names:
        name = name.rstrip(".")
        if not check_dotted(name):
          bad.append(f"{os.path.relpath(doc, ROOT)}:{lineno}: {name}")
      for path in FILES.findall(line):
        if "*" not in path and not os.path.exists(os.path.join(ROOT, path)):
          bad.append(f"{os.path.relpath(doc, ROOT)}:{lineno}: {path} (no such file)")
  print("\n".join(bad) or f"all names resolve ({len(docs)} files)")
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
