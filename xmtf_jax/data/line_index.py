"""Random access to the lines of JSON-lines files: byte offsets of every line, built once and cached.

The indexed input pipeline reads example k of a task by seeking to its line, so it needs each
file's line starts. Building them reads the file once (about 1 s per GB locally); the result is an
int64 array saved as `.npy` under an index folder (default `$XMTF_CACHE_DIR/line_index` or
`~/.cache/xmtf_jax/line_index`; a shared `gs://` folder lets a pod's hosts build it once), keyed by
the file's path, size and modification time, so a replaced file is indexed again.

Lines are split as tf.data.TextLineDataset splits them: at "\\n", a trailing "\\r" removed, a last
line without a newline counted, no extra empty line after a final newline.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import io
import logging
import os
import threading
import time
from typing import Optional, Sequence

import numpy as np

from xmtf_jax import paths

_CHUNK = 1 << 24


def default_index_dir() -> str:
  return paths.join(paths.cache_dir(), "line_index")


def build_offsets(path: str) -> np.ndarray:
  """[n + 1] int64: the byte where each of the n lines starts, then the file's size."""
  starts, base = [np.zeros(1, np.int64)], 0
  with paths.open(path, "rb") as f:
    while True:
      chunk = f.read(_CHUNK)
      if not chunk:
        break
      newlines = np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10)
      starts.append(newlines.astype(np.int64) + base + 1)
      base += len(chunk)
  offsets = np.concatenate(starts)
  if offsets[-1] != base:  # a last line without "\n"
    offsets = np.append(offsets, np.int64(base))
  return offsets


class LineIndex:
  """Line offsets of one file, and reading lines by number (0-based here; reports say 1-based)."""

  def __init__(self, path: str, offsets: np.ndarray):
    self.path = path
    self.offsets = offsets
    self._fd: Optional[int] = None
    self._lock = threading.Lock()

  @property
  def num_lines(self) -> int:
    return len(self.offsets) - 1

  def read(self, line: int) -> bytes:
    """Line `line` without its "\\n" (or "\\r\\n")."""
    start, end = int(self.offsets[line]), int(self.offsets[line + 1])
    if paths.is_remote(self.path):
      data = paths.read_range(self.path, start, end)
    else:
      if self._fd is None:
        with self._lock:
          if self._fd is None:
            self._fd = os.open(os.path.expanduser(self.path), os.O_RDONLY)  # local-only
      data = os.pread(self._fd, end - start, start)  # local-only
    if data.endswith(b"\n"):
      data = data[:-1]
    return data[:-1] if data.endswith(b"\r") else data

  def close(self) -> None:
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None


def _cache_name(path: str) -> str:
  key = f"{paths.abspath(path)}|{paths.fingerprint(path)}"
  return hashlib.sha1(key.encode("utf-8")).hexdigest()[:20] + "-" + paths.basename(path) + ".npy"


def load_index(path: str, index_dir: Optional[str] = None) -> LineIndex:
  """The LineIndex of `path`, from the index folder or built (and saved there) now."""
  index_dir = index_dir or default_index_dir()
  cached = paths.join(index_dir, _cache_name(path))
  if paths.exists(cached):
    try:
      if paths.is_remote(cached):
        return LineIndex(path, np.load(io.BytesIO(paths.read_bytes(cached)), allow_pickle=False))
      # memory-mapped: xP3's ~80M lines would otherwise hold ~640 MB per host
      return LineIndex(path, np.load(os.path.expanduser(cached), mmap_mode="r",  # local-only
                                     allow_pickle=False))
    except ValueError:
      logging.warning("line index %s is unreadable; building it again", cached)
  start = time.time()
  offsets = build_offsets(path)
  buffer = io.BytesIO()
  np.save(buffer, offsets, allow_pickle=False)
  try:
    paths.write_bytes(cached, buffer.getvalue())
  except OSError as e:  # a read-only cache folder costs a rebuild next time, nothing more
    logging.warning("could not save the line index of %s to %s (%s)", path, cached, e)
  elapsed = time.time() - start
  if elapsed > 5:
    logging.info("indexed %s: %d lines in %.1fs (saved in %s)", path, len(offsets) - 1, elapsed,
                 index_dir)
  return LineIndex(path, offsets)


def index_files(files: Sequence[str], index_dir: Optional[str] = None,
                num_threads: int = 16) -> int:
  """Builds (or finds) the index of every file, in parallel; returns the total number of lines."""
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    return sum(i.num_lines for i in pool.map(lambda f: load_index(f, index_dir), files))


class FileSetIndex:
  """The lines of several files as one sequence (file order, then line order)."""

  def __init__(self, files: Sequence[str], index_dir: Optional[str] = None):
    self.files = [load_index(f, index_dir) for f in files]
    self.ends = np.cumsum([f.num_lines for f in self.files]).astype(np.int64)

  @property
  def num_lines(self) -> int:
    return int(self.ends[-1]) if len(self.ends) else 0

  def locate(self, lines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(file number, 0-based line in that file) of each of `lines` (lines of the whole set)."""
    lines = np.asarray(lines, np.int64)
    which = np.searchsorted(self.ends, lines, side="right")
    firsts = np.concatenate([[0], self.ends])[which]
    return which, lines - firsts
