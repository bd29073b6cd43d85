"""How every entry point ends: a user's mistake is one readable paragraph on stderr and exit status 2;
`--help` prints the command's usage; `--traceback` keeps Python's traceback for developers.

User mistakes are `xmtf_jax.errors.UserError` and its subclasses (bad gin values, unknown tasks, bad
data lines, bad templates, paths the user named), gin's own configuration mistakes (raised by gin
itself: a required binding left unset, arguments gin could not supply), and those raised inside
tf.data, which are unwrapped from TensorFlow's `{{function_node ...}}` text. Anything else, a plain
ValueError from jax, orbax or our step included, is a bug and keeps its traceback (exit status 1).
"""
from __future__ import annotations

import re
import sys
import textwrap
from typing import Callable, Optional, Sequence

from xmtf_jax.data import jsonl_source
from xmtf_jax.errors import UserError

EXIT_USER_ERROR = 2

GIN_USAGE = """\
gin settings (t5x style, repeatable):
  --gin_file=FILE            a gin file (found from the working directory or the repository root)
  --gin.NAME=VALUE           set a macro or Configurable.parameter; VALUE is a Python literal,
                             e.g. --gin.MODEL_DIR="'/tmp/run'" --gin.TRAIN_STEPS=1000
  --gin_bindings='NAME=VALUE'
  --traceback                show Python's traceback on errors (for developers)
"""


def user_message(error: BaseException) -> Optional[str]:
  """The paragraph to show for a user's mistake, or None for anything else (a bug)."""
  if _is_tf_error(error):
    error = _raised_while_tracing(error) or jsonl_source.unwrap_tf_error(error)
    if _is_tf_error(error) and type(error).__name__ == "NotFoundError":  # a missing data file
      return "file not found: " + " ".join(re.sub(r"\{\{function_node [^}]*\}\}", "",
                                                  getattr(error, "message", str(error))).split())
  user_error = isinstance(error, UserError)
  if not (user_error or _raised_by_gin(error)):
    return None
  text = str(error.args[0]) if len(error.args) == 1 and isinstance(error.args[0], str) else str(error)
  text = re.sub(r"\{\{function_node [^}]*\}\}", "", text)
  if user_error:  # the message names the gin setting already; gin's "In call to ..." only adds noise
    text = _GIN_CALL_CONTEXT.sub("", text)
  return " ".join(text.split())


# What gin appends to an exception raised inside a configurable it called.
_GIN_CALL_CONTEXT = re.compile(r"\s*In call to configurable '[^']*' \(<[^>]*>\)(?: in scope '[^']*')?")


def _raised_by_gin(error: BaseException) -> bool:
  """True when gin itself raised `error` while calling a configurable (a required binding left
  unset, arguments neither gin nor the caller supplied): the innermost frame is gin's code."""
  traceback = error.__traceback__
  if traceback is None:
    return False
  while traceback.tb_next is not None:
    traceback = traceback.tb_next
  module = traceback.tb_frame.f_globals.get("__name__", "")
  return module == "gin" or module.startswith("gin.")


def _raised_while_tracing(error: BaseException) -> Optional[UserError]:
  """The UserError behind TensorFlow's StagingError: raised while tf.data traced a preprocessor
  (e.g. a vocabulary on an unreachable bucket, loaded when `tokenize` is first traced)."""
  chain, seen = error.__cause__ or error.__context__, set()
  while chain is not None and not isinstance(chain, UserError) and id(chain) not in seen:
    seen.add(id(chain))
    chain = chain.__cause__ or chain.__context__
  return chain if isinstance(chain, UserError) else None


def _is_tf_error(error: BaseException) -> bool:
  return type(error).__module__.startswith("tensorflow")


def run(main: Callable[[Sequence[str]], Optional[int]], usage: str, argv: Optional[Sequence[str]] = None,
        *, main_has_help: bool = False) -> int:
  """Runs `main(argv)` as a command: --help, --traceback, one-paragraph user errors, exit status.

  main_has_help: `main` parses its flags with argparse, whose --help lists them (usage is then not
  printed here)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if ("--help" in argv or "-h" in argv) and not main_has_help:
    print(usage.rstrip() + "\n\n" + GIN_USAGE)
    return 0
  show_traceback = "--traceback" in argv
  argv = [a for a in argv if a != "--traceback"]
  try:
    code = main(argv)
  except Exception as error:  # noqa: BLE001  (sorted into user errors and bugs below)
    message = None if show_traceback else user_message(error)
    if message is None:
      raise
    print("error: " + textwrap.fill(message, width=100, subsequent_indent="  ", break_on_hyphens=False,
                                    break_long_words=False)
          + "\n(add --traceback to see where it was raised)", file=sys.stderr)
    return EXIT_USER_ERROR
  return int(code or 0)
