"""`python -m xmtf_jax.infer`: the entry point is `xmtf_jax.cli.infer` (`--help` answers before it is imported)."""
import sys

from xmtf_jax.cli import quiet_start, usage  # standard library only


def main() -> int:
  """The `xmtf-infer` console script."""
  if usage.answer_help("infer"):
    return 0
  quiet_start.import_tensorflow()
  from xmtf_jax.cli import errors, infer  # imports jax / TensorFlow
  return errors.run(infer.main, infer.__doc__)


if __name__ == "__main__":
  sys.exit(main())
