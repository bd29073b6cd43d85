"""`python -m xmtf_jax.infer`: the entry point is `xmtf_jax.cli.infer`."""
import sys

from xmtf_jax.cli.infer import main

if __name__ == "__main__":
  sys.exit(main())
