"""`python -m xmtf_jax.evaluate`: the entry point is `xmtf_jax.cli.evaluate`."""
import sys

from xmtf_jax.cli.evaluate import main

if __name__ == "__main__":
  sys.exit(main())
