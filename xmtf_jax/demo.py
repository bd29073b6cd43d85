"""`python -m xmtf_jax.demo`: the entry point is `xmtf_jax.cli.demo`."""
import sys

from xmtf_jax.cli.demo import main

if __name__ == "__main__":
  sys.exit(main())
