"""`python -m xmtf_jax.export_hf`: the entry point is `xmtf_jax.cli.export_hf`."""
import sys

from xmtf_jax.cli.export_hf import main

if __name__ == "__main__":
  sys.exit(main())
