"""t5x-style command lines: `--gin_file=a.gin --gin_file=b.gin --gin.NAME=value --gin_bindings=...`.

gin binds only entry-point arguments and config dataclasses; library functions take plain arguments.
"""
from __future__ import annotations

import importlib.util  # noqa: F401  gin 0.5.0 resolves `include` paths with it but never imports it
import os
import sys
from typing import Sequence

import gin

from xmtf_jax.cli import configurables  # noqa: F401  (registers every gin name before parsing)
from xmtf_jax.paths import REPO_ROOT


def split_gin_args(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
  """Separates gin files and bindings from the other arguments of a command line.

  Accepts `--gin_file=F` / `--gin_file F`, `--gin_bindings=B` and `--gin.NAME=VALUE` (turned into the
  binding `NAME=VALUE`). Returns (gin_files, bindings, remaining_argv).
  """
  files, bindings, rest = [], [], []
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    for flag, target in (("--gin_file", files), ("--gin_bindings", bindings)):
      if arg == flag:
        if i + 1 >= len(args):
          raise SystemExit(f"{flag} needs a value")
        target.append(args[i + 1])
        i += 2
        break
      if arg.startswith(flag + "="):
        target.append(arg[len(flag) + 1:])
        i += 1
        break
    else:
      if arg.startswith("--gin."):
        name, sep, value = arg[len("--gin."):].partition("=")
        if not sep:
          raise SystemExit(f"{arg}: write --gin.NAME=VALUE (a Python literal, e.g. --gin.MODEL_DIR=\"'/tmp/run'\")")
        bindings.append(f"{name}={value}")
      else:
        rest.append(arg)
      i += 1
  return files, bindings, rest


def resolve_gin_file(path: str) -> str:
  """Finds a gin file as given, or relative to the repository root (so `gin/models/...` works anywhere)."""
  if os.path.exists(path) or path.startswith("gs://"):  # local-only: gin reads its files itself
    return path
  candidate = os.path.join(REPO_ROOT, path)
  if os.path.exists(candidate):  # local-only: a file of the repository
    return candidate
  raise SystemExit(f"gin file not found: {path} (looked in {os.getcwd()} and {REPO_ROOT})")


def parse_gin(argv: Sequence[str] | None = None, *, default_files: Sequence[str] = ()) -> list[str]:
  """Parses gin files and bindings from `argv`; returns the non-gin arguments.

  Includes in gin files are resolved against the repository root, so `include 'gin/models/x.gin'` works
  from any working directory. Errors name the file or binding that failed.
  """
  argv = sys.argv[1:] if argv is None else argv
  files, bindings, rest = split_gin_args(argv)
  files = [resolve_gin_file(f) for f in list(default_files) + files]
  gin.add_config_file_search_path(REPO_ROOT)
  try:
    gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
  except (ValueError, KeyError, NameError, TypeError) as e:
    raise SystemExit(f"gin configuration failed ({' '.join(files)}; bindings {bindings}): {e}") from e
  gin.finalize()
  return rest
