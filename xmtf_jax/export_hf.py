"""`python -m xmtf_jax.export_hf`: the entry point is `xmtf_jax.cli.export_hf`."""
import sys

from xmtf_jax.cli import errors, export_hf


def main() -> int:
  """The `xmtf-export-hf` console script."""
  return errors.run(export_hf.main, export_hf.__doc__, main_has_help=True)


if __name__ == "__main__":
  sys.exit(main())
