"""Stopping cleanly: SIGTERM / SIGINT ask the training loop to finish its step, save and exit.

Cloud TPU / GPU schedulers send SIGTERM before preempting a VM; Ctrl-C sends SIGINT. Either sets a
flag; the loop asks `agreed()` between steps. A second SIGINT raises KeyboardInterrupt at once (for
when a person really wants out). With several processes every host must stop at the same step (a
checkpoint save is collective), so `agreed` combines the hosts' flags with a small all-gather, which
the loop runs only every `TrainConfig.stop_check_period` steps and at checkpoint steps
(`loop.stop_check`).
"""
from __future__ import annotations

import logging
import signal
import threading

import jax
import numpy as np

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
  """Context manager installing the handlers (main thread only; elsewhere it only has the flag)."""

  def __init__(self):
    self.signal_name = None
    self._previous = {}

  @property
  def requested_here(self) -> bool:
    return self.signal_name is not None

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if self.signal_name == "SIGINT" and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal_name = name
    logging.warning("%s received: finishing the current step, saving a checkpoint, then exiting "
                    "(press Ctrl-C again to abort without saving)", name)

  def __enter__(self) -> "StopRequest":
    if threading.current_thread() is threading.main_thread():
      for sig in STOP_SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def agreed(self) -> bool:
    """Whether any process was asked to stop: the same answer on every process, which must all call
    it at the same step when there are several."""
    if jax.process_count() == 1:
      return self.requested_here
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.int32(self.requested_here))
    return bool(np.any(flags))
