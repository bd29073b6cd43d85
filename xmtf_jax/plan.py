"""`python -m xmtf_jax.plan`: the entry point is `xmtf_jax.cli.plan` (it must be imported before jax)."""
import sys

from xmtf_jax.cli.plan import main

if __name__ == "__main__":
  sys.exit(main())
