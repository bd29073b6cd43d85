"""The build's output files: written whole or not at all, with a marker per finished job, so a killed
build reruns to the identical result (finished jobs skipped, unfinished ones redone from scratch).

Layout under the output folder:
  {lang}/xp3_{dataset}_{subset}_{split}_{template}.jsonl   per-template files (facts 1.8)
  {lang}/merged_{lang}.jsonl                               every line of the folder's files, once
  .build/{job}.json                                        a finished job: its key, files and counts
A file appears by one rename (local) or one object upload (gs://), so readers and reruns never see
half a file; the marker is written after the job's last file.
"""
from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import os
import random
import tempfile
from typing import Iterable, Iterator, Optional, Sequence

from xmtf_jax import paths

MARKER_DIR = ".build"
# In-memory chunk of the merged files' sort and shuffle; bigger inputs go through temporary files.
MERGE_CHUNK_BYTES = 1 << 30


def write_file(path: str, data: bytes) -> None:
  """Writes `path` whole (a temporary sibling and a rename; one upload on gs://)."""
  paths.write_bytes(path, data)


def derived_seed(seed: int, *names: str) -> int:
  """A 64-bit seed for one purpose (an output file's name): the same on every machine and run,
  unrelated between purposes, unlike `seed + i` or Python's salted `hash`."""
  text = "\x1f".join([str(seed), *names])
  return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def marker_path(output_dir: str, job_name: str) -> str:
  return paths.join(output_dir, MARKER_DIR, job_name + ".json")


def read_marker(output_dir: str, job_name: str, key: str) -> Optional[dict]:
  """The finished job's record when its marker exists and was written for the same `key` (seed,
  unit, split and settings); None when the job must be (re)done."""
  path = marker_path(output_dir, job_name)
  if not paths.exists(path):
    return None
  try:
    record = json.loads(paths.read_text(path))
  except ValueError:  # not ours or cut short by a crash on a file system without atomic rename
    return None
  if record.get("key") != key:
    return None
  if not all(paths.exists(paths.join(output_dir, f["path"])) for f in record.get("files", [])
             if f.get("rows")):
    return None  # a file removed since: redo the job
  return record


def write_marker(output_dir: str, job_name: str, record: dict) -> None:
  write_file(marker_path(output_dir, job_name),
             (json.dumps(record, ensure_ascii=False, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def remove_stale_temporaries(output_dir: str) -> list[str]:
  """Deletes the temporary files a killed build left (`*.tmp-<pid>` next to the outputs)."""
  if paths.is_remote(output_dir) or not paths.isdir(output_dir):
    return []  # uploads are single objects on a bucket: nothing is left behind there
  stale = paths.glob(paths.join(paths.escape(output_dir), "*", "*.tmp-*"))
  stale += paths.glob(paths.join(paths.escape(output_dir), MARKER_DIR, "*.tmp-*"))
  for path in stale:
    paths.remove(path)
  return stale


# ---- merged_{lang}.jsonl ------------------------------------------------------------------------

def _read_lines(path: str) -> Iterator[bytes]:
  with paths.open(path, "rb") as f:
    for line in f:
      yield line if line.endswith(b"\n") else line + b"\n"


def _sorted_unique_chunks(files: Sequence[str], workdir: str, chunk_bytes: int) -> list[str]:
  """Local files of sorted, deduplicated lines, each from at most `chunk_bytes` of input."""
  chunks, lines, size = [], set(), 0

  def flush() -> None:
    nonlocal lines, size
    if lines:
      chunk = os.path.join(workdir, f"sorted-{len(chunks)}")
      with open(chunk, "wb") as f:  # local-only: a temporary folder of ours
        f.writelines(sorted(lines))
      chunks.append(chunk)
    lines, size = set(), 0

  for path in files:
    for line in _read_lines(path):
      if line not in lines:
        lines.add(line)
        size += len(line)
        if size >= chunk_bytes:
          flush()
  flush()
  return chunks


def _merge_unique(chunks: Sequence[str]) -> Iterator[bytes]:
  """The lines of sorted chunk files in byte order, each once (what `LC_ALL=C sort -u` prints)."""
  with contextlib.ExitStack() as stack:
    handles = [stack.enter_context(open(c, "rb")) for c in chunks]  # local-only: our temporaries
    previous = None
    for line in heapq.merge(*handles):
      if line != previous:
        yield line
        previous = line


def _shuffled(lines: Iterable[bytes], seed: int, total_bytes: int, workdir: str,
              chunk_bytes: int) -> Iterator[bytes]:
  """A seeded shuffle of `lines` in bounded memory: each line goes to one of ceil(total/chunk)
  random buckets, each bucket is shuffled in memory, buckets follow each other."""
  rng = random.Random(seed)
  buckets = max(1, -(-total_bytes // chunk_bytes))
  if buckets == 1:
    everything = list(lines)
    rng.shuffle(everything)
    yield from everything
    return
  names = [os.path.join(workdir, f"bucket-{i}") for i in range(buckets)]
  with contextlib.ExitStack() as stack:
    handles = [stack.enter_context(open(n, "wb")) for n in names]  # local-only: our temporaries
    for line in lines:
      handles[rng.randrange(buckets)].write(line)
  for name in names:
    with open(name, "rb") as f:  # local-only: our temporaries
      bucket = f.readlines()
    rng.shuffle(bucket)
    yield from bucket


def write_merged(path: str, files: Sequence[str], *, shuffle_seed: Optional[int],
                 chunk_bytes: int = MERGE_CHUNK_BYTES) -> int:
  """Writes `merged_{lang}.jsonl`: every line of `files` once (exact byte equality, as
  `LC_ALL=C sort -u`), in byte order, then shuffled with `shuffle_seed` (train mode) or left
  sorted (None: validation mode). Returns the number of lines. Memory stays near `chunk_bytes`."""
  with tempfile.TemporaryDirectory(prefix="xp3-merge-") as workdir:
    chunks = _sorted_unique_chunks(files, workdir, chunk_bytes)
    count, total = 0, 0
    unique = os.path.join(workdir, "unique")
    with open(unique, "wb") as f:  # local-only: our temporary
      for line in _merge_unique(chunks):
        f.write(line)
        count, total = count + 1, total + len(line)
    for chunk in chunks:
      os.remove(chunk)  # local-only: our temporaries
    if shuffle_seed is not None:
      result = os.path.join(workdir, "shuffled")
      with open(unique, "rb") as source, open(result, "wb") as f:  # local-only: our temporaries
        f.writelines(_shuffled(source, shuffle_seed, total, workdir, chunk_bytes))
      unique = result
    _publish(unique, path)
  return count


def _publish(local: str, path: str) -> None:
  """Moves a finished local file to `path` in one step (rename; one upload on a bucket)."""
  if paths.is_remote(path):
    paths.upload(local, path)
    return
  paths.makedirs(paths.dirname(path))
  tmp = f"{path}.tmp-{os.getpid()}"
  paths.upload(local, tmp)  # a copy: the temporary folder may be on another file system
  paths.rename(tmp, path)
