"""`python -m xmtf_jax.train`: gin-configured finetuning (and training from scratch) of mT5.

    python -m xmtf_jax.train --gin_file=gin/models/mt5_small.gin --gin_file=gin/runs/finetune.gin \
      --gin.MODEL_DIR="'/tmp/run'" --gin.MIXTURE_OR_TASK_NAME="'xp3'" \
      --gin.INITIAL_CHECKPOINT_PATH="'/path/to/google-mt5-small'"

Several processes: add `--multiprocess` on every host of a TPU pod slice (auto-detected), or
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`.

Exit status: 0 finished, stopped on SIGTERM/SIGINT after saving, or nothing left to train;
3 a non-finite loss stopped the run (the last good checkpoint is kept); 2 a mistake in the
command, gin or data (one paragraph on stderr; --traceback shows where); 1 any other error.
The run itself is `xmtf_jax.train.loop.train`.

gin macros that matter: MODEL_DIR, MIXTURE_OR_TASK_NAME, TRAIN_STEPS, BATCH_SIZE, NUM_MICROBATCHES,
INITIAL_CHECKPOINT_PATH, XP3_DATA_DIR, VOCABULARY_PATH, VOCAB_SIZE, TASK_FEATURE_LENGTHS, USE_PACKING,
LEARNING_RATE, LOSS_NORMALIZATION, CHECKPOINT_PERIOD, EVAL_PERIOD (gin/runs/finetune.gin lists them).
"""
import logging
import os
import sys

from xmtf_jax.cli import cpu_malloc

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before tensorflow is imported (by the data)

import gin  # noqa: E402
import jax  # noqa: E402

from xmtf_jax import paths  # noqa: E402
from xmtf_jax.cli import configurables, gin_flags, runtime  # noqa: E402
from xmtf_jax.parallel import distributed  # noqa: E402
from xmtf_jax.data import tasks as data_tasks  # noqa: E402
from xmtf_jax.errors import UserError  # noqa: E402
from xmtf_jax.train import checkpoints, loop  # noqa: E402


def write_gin_config(model_dir: str) -> None:
  """MODEL_DIR/config.gin: every gin setting of the run (the operative subset goes in checkpoints)."""
  if jax.process_index() == 0:
    paths.write_text(paths.join(model_dir, "config.gin"), gin.config_str())


def remove_gin_config_of_failed_start(model_dir: str, created_dir: bool) -> None:
  """After a failure before the first checkpoint: take back config.gin (a MODEL_DIR holding only a
  config.gin looks like a run), and MODEL_DIR itself when this run created it and left it empty."""
  if jax.process_index() != 0 or checkpoints.list_steps(model_dir):
    return
  config_file = paths.join(model_dir, "config.gin")
  if paths.exists(config_file):
    paths.remove(config_file)
  if created_dir and paths.isdir(model_dir) and not paths.listdir(model_dir):
    paths.rmtree(model_dir)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  flags, rest = distributed.parse_known(argv)
  distributed.initialize_from_flags(flags)
  gin_flags.parse_gin_only(rest)
  runtime.configure_logging()
  if cpu_malloc.jax_is_cpu_only():
    logging.info("CPU malloc settings: %s", "tuned (cpu_malloc.py)" if cpu_malloc.is_tuned() else
                 "glibc defaults (XMTF_CPU_MALLOC=0, or not started with `python -m xmtf_jax.train`)")
  config = configurables.TrainConfig()
  # Validate before anything is written: a typo in the mixture name must not leave a MODEL_DIR behind.
  runtime.register_tasks(config.mixture_or_task_name)
  data_tasks.get_mixture_or_task(config.mixture_or_task_name)
  created_dir = not paths.exists(config.model_dir)
  if not created_dir and not paths.isdir(config.model_dir):
    raise UserError(f"MODEL_DIR={config.model_dir!r} is a file, not a directory: give the folder the run "
                    "writes its checkpoints, metrics and config.gin to (a new path, or an earlier run's "
                    "MODEL_DIR to resume it), e.g. --gin.MODEL_DIR=\"'/tmp/my_run'\"")
  write_gin_config(config.model_dir)
  try:
    result = loop.train(config, configurables.model_config(), configurables.PartitioningConfig(),
                        configurables.OptimizerConfig(), configurables.LossConfig(),
                        describe_run=gin.operative_config_str)
  except loop.NonFiniteLossError as e:
    print(f"error: {e}", file=sys.stderr)
    return loop.EXIT_NON_FINITE
  except Exception:
    remove_gin_config_of_failed_start(config.model_dir, created_dir)
    raise
  print(f"{result.status} at step {result.step}: {result.model_dir}")
  return 0
