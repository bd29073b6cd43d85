"""Imports TensorFlow without the lines its C++ runtime prints on every start of a CPU machine.

TensorFlow 2.21 writes, straight to file descriptor 2 and whatever TF_CPP_MIN_LOG_LEVEL says:
  WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
  I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
  E0000 ... cuda_platform.cc:52] failed call to cuInit: ... (when its devices are first listed)
TensorFlow only reads data here (tf.data, SentencePiece); JAX finds and reports accelerators itself.
`import_tensorflow` sends fd 2 through a pipe while TensorFlow loads and lists its devices, and
writes every other line back unchanged: only these exact start-up lines are dropped.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from typing import Iterator, Pattern, Sequence

STARTUP_NOISE = (
    re.compile(r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"),
    re.compile(r"I\d{4} [\d:.]+ +\d+ cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine, "
               r"GPU will not be used\."),
    re.compile(r"E\d{4} [\d:.]+ +\d+ cuda_platform\.cc:\d+\] failed call to cuInit: .*"),
)


@contextlib.contextmanager
def drop_lines(patterns: Sequence[Pattern[str]] = STARTUP_NOISE) -> Iterator[None]:
  """Within the block, lines written to fd 2 (by C++ or Python) that fully match one of `patterns`
  are dropped; all others reach the real stderr, in order."""
  sys.stderr.flush()
  saved = os.dup(2)
  read_end, write_end = os.pipe()
  os.dup2(write_end, 2)
  os.close(write_end)

  def forward() -> None:
    pending = b""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
      while chunk := pipe.read(65536):
        *lines, pending = (pending + chunk).split(b"\n")
        _emit(lines, saved, patterns, last=False)
    _emit([pending] if pending else [], saved, patterns, last=True)

  thread = threading.Thread(target=forward, name="stderr-filter", daemon=True)
  thread.start()
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)  # closes the pipe's last write end: the thread reads to the end and stops
    thread.join()
    os.close(saved)


def _emit(lines: list[bytes], fd: int, patterns: Sequence[Pattern[str]], last: bool) -> None:
  kept = [line for line in lines
          if not any(p.fullmatch(line.decode("utf-8", "replace").rstrip("\r")) for p in patterns)]
  data = b"\n".join(kept) + (b"" if last or not kept else b"\n")
  while data:
    data = data[os.write(fd, data):]


def import_tensorflow() -> None:
  """`import tensorflow` and the first listing of its devices, without the start-up noise above."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's INFO lines (CPU features); not warnings
  with drop_lines():
    import tensorflow as tf  # noqa: PLC0415  (what this function is for)
    tf.config.list_physical_devices("CPU")
