"""`python -m xmtf_jax.plan`: the entry point is `xmtf_jax.cli.plan` (it must be imported before jax)."""
import sys

from xmtf_jax.cli import plan  # noqa: I001  (first: it sets XLA/TPU environment before jax loads)
from xmtf_jax.cli import errors


def main() -> int:
  """The `xmtf-plan` console script."""
  return errors.run(plan.main, plan.__doc__, main_has_help=True)


if __name__ == "__main__":
  sys.exit(main())
