"""`python -m xmtf_jax.plan`: the entry point is `xmtf_jax.cli.plan` (`--help` answers before it is
imported; it must be imported before jax)."""
import sys

from xmtf_jax.cli import usage  # standard library only


def main() -> int:
  """The `xmtf-plan` console script."""
  if usage.answer_help("plan"):
    return 0
  from xmtf_jax.cli import plan  # noqa: I001  (first: it sets XLA/TPU environment before jax loads)
  from xmtf_jax.cli import errors
  return errors.run(plan.main, plan.__doc__, main_has_help=True)


if __name__ == "__main__":
  sys.exit(main())
