"""`python -m xmtf_jax.data_report`: the entry point is `xmtf_jax.cli.data_report`."""
import sys

from xmtf_jax.cli import errors, data_report


def main() -> int:
  """The `xmtf-data-report` console script."""
  return errors.run(data_report.main, data_report.__doc__)


if __name__ == "__main__":
  sys.exit(main())
