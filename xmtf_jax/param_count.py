"""`python -m xmtf_jax.param_count`: the entry point is `xmtf_jax.cli.param_count` (`--help` answers before it is imported)."""
import sys

from xmtf_jax.cli import quiet_start, usage  # standard library only


def main() -> int:
  """The `xmtf-param-count` console script."""
  if usage.answer_help("param_count"):
    return 0
  quiet_start.import_tensorflow()
  from xmtf_jax.cli import errors, param_count  # imports jax / TensorFlow
  return errors.run(param_count.main, param_count.__doc__, main_has_help=True)


if __name__ == "__main__":
  sys.exit(main())
