"""`python -m xmtf_jax.data_report`: the entry point is `xmtf_jax.cli.data_report`."""
import sys

from xmtf_jax.cli.data_report import main

if __name__ == "__main__":
  sys.exit(main())
