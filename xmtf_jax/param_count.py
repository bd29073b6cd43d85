"""`python -m xmtf_jax.param_count`: the entry point is `xmtf_jax.cli.param_count`."""
import sys

from xmtf_jax.cli import errors, param_count


def main() -> int:
  """The `xmtf-param-count` console script."""
  return errors.run(param_count.main, param_count.__doc__, main_has_help=True)


if __name__ == "__main__":
  sys.exit(main())
