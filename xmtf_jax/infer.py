"""`python -m xmtf_jax.infer`: the entry point is `xmtf_jax.cli.infer`."""
import sys

from xmtf_jax.cli import errors, infer


def main() -> int:
  """The `xmtf-infer` console script."""
  return errors.run(infer.main, infer.__doc__)


if __name__ == "__main__":
  sys.exit(main())
