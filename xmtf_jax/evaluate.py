"""`python -m xmtf_jax.evaluate`: the entry point is `xmtf_jax.cli.evaluate` (`--help` answers before it is imported)."""
import sys

from xmtf_jax.cli import quiet_start, usage  # standard library only


def main() -> int:
  """The `xmtf-evaluate` console script."""
  if usage.answer_help("evaluate"):
    return 0
  quiet_start.import_tensorflow()
  from xmtf_jax.cli import errors, evaluate  # imports jax / TensorFlow
  return errors.run(evaluate.main, evaluate.__doc__)


if __name__ == "__main__":
  sys.exit(main())
