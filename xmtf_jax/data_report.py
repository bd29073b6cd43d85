"""`python -m xmtf_jax.data_report`: the entry point is `xmtf_jax.cli.data_report` (`--help` answers before it is imported)."""
import sys

from xmtf_jax.cli import quiet_start, usage  # standard library only


def main() -> int:
  """The `xmtf-data-report` console script."""
  if usage.answer_help("data_report"):
    return 0
  quiet_start.import_tensorflow()
  from xmtf_jax.cli import errors, data_report  # imports jax / TensorFlow
  return errors.run(data_report.main, data_report.__doc__)


if __name__ == "__main__":
  sys.exit(main())
