"""`python -m xmtf_jax.param_count`: the entry point is `xmtf_jax.cli.param_count`."""
import sys

from xmtf_jax.cli.param_count import main

if __name__ == "__main__":
  sys.exit(main())
