"""The user's mistakes, as types: the entry points (`cli/errors.py`) show these as one paragraph and
exit status 2; any other exception is a bug and keeps its traceback.

A mistake is something the user can fix from the outside: a gin value or flag, a data line or file,
a path they named, a task name, a template. Raise `UserError` (or a subclass) with a message that
names the file, line, flag or gin name and says what to do. A broken invariant inside our code, jax
or orbax stays a plain ValueError / RuntimeError so that its traceback shows where it went wrong.

`UserError` subclasses ValueError (and the path errors subclass FileNotFoundError / FileExistsError)
so that callers and tests catching those keep working.
"""
from __future__ import annotations


class UserError(ValueError):
  """A mistake in what the user gave (gin value, flag, data, path, task name, template)."""


class MissingPathError(UserError, FileNotFoundError):
  """A path the user named (or a file a folder they named must hold) does not exist or is not a
  model folder / checkpoint."""


class PathExistsError(UserError, FileExistsError):
  """An output path the user named is already taken (a file, or a folder that is not empty)."""
