"""`python -m xmtf_jax.train`: gin-configured finetuning (and training from scratch) of mT5.

    python -m xmtf_jax.train --gin_file=gin/models/mt5_small.gin --gin_file=gin/runs/finetune.gin \
      --gin.MODEL_DIR="'/tmp/run'" --gin.MIXTURE_OR_TASK_NAME="'xp3'" \
      --gin.INITIAL_CHECKPOINT_PATH="'/path/to/google-mt5-small'"

Several processes: add `--multiprocess` on every host of a TPU pod slice (auto-detected), or
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`.

Exit status: 0 finished, stopped on SIGTERM/SIGINT after saving, or nothing left to train;
3 a non-finite loss stopped the run (the last good checkpoint is kept); 1 any other error.
The run itself is `xmtf_jax.training.train`.
"""
import logging
import os
import sys

from xmtf_jax import cpu_malloc  # stdlib only: cheap before the re-execution below

if __name__ == "__main__":
  # Before anything starts threads: CPU-only hosts re-run this command once with malloc settings that
  # make XLA:CPU steps ~1.4x faster (cpu_malloc.py; XMTF_CPU_MALLOC=0 opts out).
  cpu_malloc.reexec_tuned("xmtf_jax.train", sys.argv[1:])

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before tensorflow is imported (by the data)

from xmtf_jax import (distributed, gin_utils, losses, optim, partitioning, progress,  # noqa: E402
                      training)
from xmtf_jax.config import T5Config  # noqa: E402


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  flags, rest = distributed.parse_known(argv)
  distributed.initialize_from_flags(flags)
  rest = gin_utils.parse_gin(rest)
  if rest:
    raise SystemExit(f"unknown arguments: {rest} (gin settings are --gin_file=F and --gin.NAME=VALUE)")
  progress.configure_logging()
  if cpu_malloc.jax_is_cpu_only():
    logging.info("CPU malloc settings: %s", "tuned (cpu_malloc.py)" if cpu_malloc.is_tuned() else
                 "glibc defaults (XMTF_CPU_MALLOC=0, or not started with `python -m xmtf_jax.train`)")
  config = training.TrainConfig()
  training.write_gin_config(config.model_dir)
  try:
    result = training.train(config, T5Config(), partitioning.PartitioningConfig(),
                            optim.OptimizerConfig(), losses.LossConfig())
  except training.NonFiniteLossError as e:
    print(f"error: {e}", file=sys.stderr)
    return training.EXIT_NON_FINITE
  print(f"{result.status} at step {result.step}: {result.model_dir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
