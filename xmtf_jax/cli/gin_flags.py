"""t5x-style command lines: `--gin_file=a.gin --gin_file=b.gin --gin.NAME=value --gin_bindings=...`.

gin binds only entry-point arguments and config dataclasses; library functions take plain arguments.
"""
from __future__ import annotations

import contextlib
import difflib
import importlib.util  # noqa: F401  gin 0.5.0 resolves `include` paths with it but never imports it
import logging
import os
import re
import sys
import tokenize
from typing import Sequence

import gin

from xmtf_jax.cli import configurables  # noqa: F401  (registers every gin name before parsing)
from xmtf_jax.errors import MissingPathError, UserError
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
          raise UserError(f"{flag} needs a value")
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
          raise UserError(f"{arg}: write --gin.NAME=VALUE (a Python literal, e.g. --gin.MODEL_DIR=\"'/tmp/run'\")")
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
  raise MissingPathError(f"gin file not found: {path} (looked in {os.getcwd()} and {REPO_ROOT}); "
                         "check the --gin_file path")


def parse_gin(argv: Sequence[str] | None = None, *, default_files: Sequence[str] = ()) -> list[str]:
  """Parses gin files and bindings from `argv`; returns the non-gin arguments.

  Includes in gin files are resolved against the repository root, so `include 'gin/models/x.gin'` works
  from any working directory. Errors name the file or binding that failed.
  """
  argv = sys.argv[1:] if argv is None else argv
  files, bindings, rest = split_gin_args(argv)
  files = [resolve_gin_file(f) for f in list(default_files) + files]
  # gin keeps its search paths in a process-wide list and has no way to ask it: add ours once, so a
  # second parse in one process (tests, notebooks) does not list the root again in every error.
  if REPO_ROOT not in getattr(gin.config, "_LOCATION_PREFIXES", ()):
    gin.add_config_file_search_path(REPO_ROOT)
  where = f"gin files {', '.join(files) or 'none'}" + (f"; bindings {bindings}" if bindings else "")
  try:
    with _quiet_include_lookup():
      gin.parse_config_files_and_bindings(files, [], finalize_config=False)
    check_macros(bindings, defined_macros(), files)
    gin.parse_config_files_and_bindings([], bindings, finalize_config=False)
    gin.finalize()
  except UserError:
    raise
  except SyntaxError as e:  # gin's parser: the file (or binding), line and text of the mistake
    text = (e.text or "").strip()
    if e.filename:
      raise UserError(f"gin syntax error in {e.filename}, line {e.lineno}: {e.msg}"
                      + (f": {text}" if text else "")) from e
    raise UserError(f"gin syntax error in the binding --gin.{text}: {e.msg} (a value is a Python "
                    "literal, e.g. --gin.MODEL_DIR=\"'/tmp/run'\" --gin.TRAIN_STEPS=1000)") from e
  except tokenize.TokenError as e:  # an unclosed bracket or string at the end of a file
    raise UserError(f"gin syntax error ({where}): {e.args[0]} (line {e.args[1][0]}): a bracket or "
                    "string is not closed") from e
  except OSError as e:  # an `include` of a file that does not exist
    raise MissingPathError(f"gin configuration failed ({where}): {e}") from e
  except (ValueError, KeyError, NameError, TypeError, AttributeError, ImportError) as e:
    message = str(e).split(" in config string:")[0]  # gin appends the whole configuration here
    message = re.sub(r"No bindings specified for '(\w+)/gin\.macro'",
                     r"the macro %\1 is used but no gin file or --gin.\1=... sets it", message)
    message = re.sub(r"(\w+)/macro\.value set to `%gin\.REQUIRED` but not subsequently overridden",
                     r"the macro \1 is required: set it with --gin.\1=...", message)
    raise UserError(f"gin configuration failed ({where}): {message}") from e
  return rest


class _DropIncludeLookups(logging.Filter):
  """gin logs "ERROR:root:Path not found: gin/mixtures/x.gin" for each place it tries an `include`
  before finding it under the repository root (its search path): noise whenever the working
  directory is not the repository. An include found nowhere is parse_gin's own error."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.module == "resource_reader" and str(record.msg).startswith("Path not found"))


@contextlib.contextmanager
def _quiet_include_lookup():
  root, dropper = logging.getLogger(), _DropIncludeLookups()
  root.addFilter(dropper)
  try:
    yield
  finally:
    root.removeFilter(dropper)


def parse_gin_only(argv: Sequence[str] | None = None, *, default_files: Sequence[str] = ()) -> None:
  """`parse_gin` for commands that take no other flags: anything left over is an error."""
  rest = parse_gin(argv, default_files=default_files)
  if rest:
    raise UserError(f"unknown arguments: {rest} (gin settings are --gin_file=F and --gin.NAME=VALUE; "
                    "--help lists what the command takes)")


def defined_macros() -> set[str]:
  """Names of the gin macros bound so far (gin keeps a macro as a binding of `gin.macro`)."""
  return {scope for scope, selector in gin.config._CONFIG if selector == "gin.macro"}  # noqa: SLF001


def check_macros(bindings: Sequence[str], known: set[str], files: Sequence[str]) -> None:
  """A command-line `NAME=VALUE` must set a macro the gin files define: a typo (TRAIN_STEP for
  TRAIN_STEPS) would otherwise define a new, unused macro and the run would silently use the default."""
  for binding in bindings:
    name = binding.partition("=")[0].strip()
    if not name or "." in name or "/" in name or name in known:
      continue  # Configurable.parameter bindings are checked by gin itself
    close = difflib.get_close_matches(name, sorted(known), n=3)
    hint = (f" Did you mean {' or '.join(close)}?" if close  # else the whole list, to pick from
            else f" Macros the files define: {', '.join(sorted(known)) or 'none'}.")
    raise UserError(
        f"--gin.{name}: no gin file given defines the macro {name} ({', '.join(files) or 'no gin files'})."
        f"{hint}")
