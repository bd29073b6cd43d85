"""`python -m xmtf_jax.train`: the entry point is `xmtf_jax.cli.train`."""
import sys

from xmtf_jax.cli import cpu_malloc  # stdlib only: cheap before the re-execution below

# Before anything starts threads: CPU-only hosts re-run this command once with malloc settings that
# make XLA:CPU steps ~1.4x faster (cpu_malloc.py; XMTF_CPU_MALLOC=0 opts out).
cpu_malloc.reexec_tuned("xmtf_jax.train", sys.argv[1:])

from xmtf_jax.cli import errors, train  # noqa: E402

sys.exit(errors.run(train.main, train.__doc__))
