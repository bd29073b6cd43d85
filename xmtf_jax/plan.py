"""`python -m xmtf_jax.plan`: the entry point is `xmtf_jax.cli.plan` (it must be imported before jax)."""
import sys

from xmtf_jax.cli import plan  # noqa: I001  (first: it sets XLA/TPU environment before jax loads)
from xmtf_jax.cli import errors

if __name__ == "__main__":
  sys.exit(errors.run(plan.main, plan.__doc__, main_has_help=True))
