"""Line counts of data files (= examples before bad-line filtering), cached next to the data.

Mixing rates and the data report need each task's size. Counting xP3 means reading every byte once
(~minutes from a bucket), so counts are cached in `{data_dir}/counts.json`, or, when the data root is
not writable (a read-only bucket), in `{cache_dir}/{hash of data_dir}.json` (default cache dir
`~/.cache/xmtf_jax/line_counts`, or $XMTF_CACHE_DIR). An entry is reused while the file's size is
unchanged. On a pod, write the counts once (e.g. `python -m xmtf_jax.data_report` on one machine
with write access) so that hosts do not all count at the same time.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import logging
import os
import threading
import time
import zipfile
from typing import Iterable, Optional

from xmtf_jax import paths


COUNTS_FILE = "counts.json"
_CHUNK = 1 << 23


def default_cache_dir() -> str:
  return os.environ.get("XMTF_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "xmtf_jax", "line_counts")


def count_lines(path: str) -> int:
  """Number of lines of a text file (a last line without newline counts), or of a zip's .jsonl files."""
  with paths.open(path, "rb") as f:
    if path.endswith(".zip"):
      with zipfile.ZipFile(f) as archive:
        return sum(_count_stream(archive.open(m)) for m in archive.namelist() if m.endswith(".jsonl"))
    return _count_stream(f)


def _count_stream(stream: io.RawIOBase) -> int:
  lines, last = 0, b"\n"
  while True:
    chunk = stream.read(_CHUNK)
    if not chunk:
      break
    lines += chunk.count(b"\n")
    last = chunk[-1:]
  return lines + (0 if last == b"\n" else 1)


class LineCounts:
  """Cached line counts for the files under one data root."""

  def __init__(self, data_dir: str, cache_dir: Optional[str] = None, num_threads: int = 16):
    self.data_dir = data_dir.rstrip("/")
    self._cache_dir = cache_dir or default_cache_dir()
    self._num_threads = num_threads
    self._lock = threading.Lock()
    self._entries: Optional[dict] = None  # relative path -> {"bytes": int, "lines": int}
    self._checked: set[str] = set()  # paths whose size was compared with the cache in this process

  def _local_cache_path(self) -> str:
    digest = hashlib.sha1(self.data_dir.encode("utf-8")).hexdigest()[:16]
    return paths.join(self._cache_dir, f"{digest}.json")

  def _load(self) -> dict:
    if self._entries is None:
      entries = {}
      for path in (self._local_cache_path(), paths.join(self.data_dir, COUNTS_FILE)):
        try:
          if paths.exists(path):
            entries.update(json.loads(paths.read_text(path)).get("files", {}))
        except (json.JSONDecodeError, OSError) as e:
          logging.warning("ignoring unreadable line-count cache %s: %s", path, e)
      self._entries = entries
    return self._entries

  def _relative(self, path: str) -> str:
    prefix = self.data_dir + "/"
    return path[len(prefix):] if path.startswith(prefix) else path

  def counts(self, files: Iterable[str]) -> dict[str, int]:
    """path -> line count for every path, counting (in parallel) those not cached or changed."""
    files = list(dict.fromkeys(files))
    with self._lock:
      entries = self._load()
      unchecked = [p for p in files if p not in self._checked]
      with concurrent.futures.ThreadPoolExecutor(self._num_threads) as pool:
        sizes = dict(zip(unchecked, pool.map(paths.getsize, unchecked)))
        todo = [p for p in unchecked
                if entries.get(self._relative(p), {}).get("bytes") != sizes[p]]
        self._checked.update(unchecked)
        if todo:
          start = time.time()
          logging.info("counting lines of %d files under %s (cached afterwards)", len(todo),
                       self.data_dir)
          for path, lines in zip(todo, pool.map(count_lines, todo)):
            entries[self._relative(path)] = {"bytes": sizes[path], "lines": lines}
          logging.info("counted %d files in %.1fs", len(todo), time.time() - start)
          self._save()
      return {p: entries[self._relative(p)]["lines"] for p in files}

  def total(self, files: Iterable[str]) -> int:
    return sum(self.counts(files).values())

  def _save(self) -> None:
    payload = json.dumps({"files": dict(sorted(self._entries.items()))}, indent=1)
    try:
      paths.write_text(paths.join(self.data_dir, COUNTS_FILE), payload)
      return
    except Exception as e:  # noqa: BLE001 (OSError locally; gcsfs raises HttpError on a read-only bucket)
      logging.info("data root not writable (%s); caching line counts locally", e)
    paths.write_text(self._local_cache_path(), payload)


_REGISTRY: dict[tuple[str, Optional[str]], LineCounts] = {}


def line_counts_for(data_dir: str, cache_dir: Optional[str] = None) -> LineCounts:
  """One shared LineCounts per (data root, cache dir)."""
  key = (data_dir.rstrip("/"), cache_dir)
  if key not in _REGISTRY:
    _REGISTRY[key] = LineCounts(data_dir, cache_dir)
  return _REGISTRY[key]
