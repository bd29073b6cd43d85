"""The one filesystem layer: every path a user gives (MODEL_DIR, data, outputs) goes through here.

A user path may be local or a bucket (`gs://...`), so library code calls these functions instead of
`os.path` / `open` / `shutil`. Files that live in the repository (gin files, bundled data) are found
with `repo_path`.
"""
from __future__ import annotations

import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def is_remote(path: str) -> bool:
  """True for URLs such as gs://bucket/x (anything with a scheme), False for local paths."""
  return "://" in str(path)


def repo_path(path: str) -> str:
  """`path` as given when it exists (or is remote or absolute), else the repository's file of that
  relative path (gin files name `data/demo/...` and `gin/models/...` from any working directory)."""
  if is_remote(path) or os.path.isabs(path) or os.path.exists(path):
    return path
  in_repo = os.path.join(REPO_ROOT, path)
  return in_repo if os.path.exists(in_repo) else path
