"""Test-only eval hooks for training runs in subprocesses (imported from a gin file).

`signal_self` sends a real signal to the training process at given steps, once per MODEL_DIR (a marker
file keeps a resumed run from sending it again). For SIGKILL it first waits until the checkpoint named
in `wait_for_checkpoint` is committed, so the kill lands after a completed checkpoint.
"""
import os
import signal
import time

import gin

from xmtf_jax import paths  # MODEL_DIR may be a bucket


@gin.configurable
def signal_self(context, signals=gin.REQUIRED, wait_for_checkpoint=None):
  """signals: {step: 'SIGTERM' | 'SIGKILL'}; wait_for_checkpoint: {step: checkpoint step}."""
  def hook(step, params):
    del params
    name = signals.get(step)
    marker = paths.join(context.model_dir, f"signal_sent_at_{step}")
    if name is None or paths.exists(marker):
      return {}
    paths.write_text(marker, "")
    wait = (wait_for_checkpoint or {}).get(step)
    if wait is not None:
      committed = paths.join(context.model_dir, f"checkpoint_{wait}", "commit_success.txt")
      deadline = time.time() + 60
      while not paths.exists(committed) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(os.getpid(), getattr(signal, name))
    time.sleep(0.5)  # let SIGKILL land before the loop goes on (SIGTERM only sets a flag)
    return {}
  hook.name = "signal_self"
  return hook
