"""`python -m xmtf_jax.evaluate`: the entry point is `xmtf_jax.cli.evaluate`."""
import sys

from xmtf_jax.cli import errors, evaluate


def main() -> int:
  """The `xmtf-evaluate` console script."""
  return errors.run(evaluate.main, evaluate.__doc__)


if __name__ == "__main__":
  sys.exit(main())
