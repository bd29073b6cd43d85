"""`python -m xmtf_jax.train` (and the `xmtf-train` console script): the entry point is
`xmtf_jax.cli.train`."""
import sys

from xmtf_jax.cli import cpu_malloc, quiet_start, usage  # stdlib only: cheap before the re-execution below


def main() -> int:
  if usage.answer_help("train"):  # without importing jax or TensorFlow
    return 0
  # Before anything starts threads: CPU-only hosts re-run this command once with malloc settings that
  # make XLA:CPU steps ~1.4x faster (cpu_malloc.py; XMTF_CPU_MALLOC=0 opts out).
  cpu_malloc.reexec_tuned("xmtf_jax.train", sys.argv[1:])
  quiet_start.import_tensorflow()
  from xmtf_jax.cli import errors, train  # after the re-execution: these start threads
  return errors.run(train.main, train.__doc__)


if __name__ == "__main__":
  sys.exit(main())
