"""`python -m xmtf_jax.demo`: the entry point is `xmtf_jax.cli.demo` (`--help` answers before it is imported)."""
import sys

from xmtf_jax.cli import quiet_start, usage  # standard library only


def main() -> int:
  """The `xmtf-demo` console script."""
  if usage.answer_help("demo"):
    return 0
  quiet_start.import_tensorflow()
  from xmtf_jax.cli import errors, demo  # imports jax / TensorFlow
  return errors.run(demo.main, demo.__doc__)


if __name__ == "__main__":
  sys.exit(main())
