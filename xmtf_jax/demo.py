"""`python -m xmtf_jax.demo`: the entry point is `xmtf_jax.cli.demo`."""
import sys

from xmtf_jax.cli import errors, demo


def main() -> int:
  """The `xmtf-demo` console script."""
  return errors.run(demo.main, demo.__doc__)


if __name__ == "__main__":
  sys.exit(main())
