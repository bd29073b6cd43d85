"""`python -m xmtf_jax.export_hf`: the entry point is `xmtf_jax.cli.export_hf` (`--help` answers before it is imported)."""
import sys

from xmtf_jax.cli import quiet_start, usage  # standard library only


def main() -> int:
  """The `xmtf-export-hf` console script."""
  if usage.answer_help("export_hf"):
    return 0
  quiet_start.import_tensorflow()
  from xmtf_jax.cli import errors, export_hf  # imports jax / TensorFlow
  return errors.run(export_hf.main, export_hf.__doc__, main_has_help=True)


if __name__ == "__main__":
  sys.exit(main())
