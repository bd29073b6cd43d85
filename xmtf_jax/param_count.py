"""`python -m xmtf_jax.param_count`: the entry point is `xmtf_jax.cli.param_count`."""
import sys

from xmtf_jax.cli import errors, param_count

if __name__ == "__main__":
  sys.exit(errors.run(param_count.main, param_count.__doc__, main_has_help=True))
