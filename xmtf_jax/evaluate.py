"""`python -m xmtf_jax.evaluate`: the entry point is `xmtf_jax.cli.evaluate`."""
import sys

from xmtf_jax.cli import errors, evaluate

if __name__ == "__main__":
  sys.exit(errors.run(evaluate.main, evaluate.__doc__))
