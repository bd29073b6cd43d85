"""The one filesystem layer: every path a user gives (MODEL_DIR, data, outputs) goes through here.

A user path may be local or a bucket (`gs://...`, or any fsspec URL), so library code calls these
functions instead of `os.path` / `open` / `shutil` / `glob`. Local paths use plain `os` (fast, no
extra dependency); URLs go through fsspec (gcsfs for gs://), the layer etils.epath and orbax use with
EPATH_USE_TF=false. Not tf.io.gfile: its GCS endpoint is hard-wired, so nothing can point it at a
local emulator and the gs:// code paths could not be tested (docs/gcs.md). Files that live in the
repository (gin files, bundled data) are found with `repo_path`.
"""
from __future__ import annotations

import contextlib
import functools
import glob as _glob
import io
import logging
import os
import posixpath
import shutil
import socket
import urllib.parse
from typing import IO, Iterator, Optional

from xmtf_jax.errors import UserError

# Before anything asks etils.epath which backend serves gs:// (it reads this variable on every call):
# orbax's metadata files then go through fsspec like ours, not through tf.io.gfile.
os.environ.setdefault("EPATH_USE_TF", "false")
# gcsfs >= 2026 probes each bucket for hierarchical namespaces over gRPC (a 60 s timeout against an
# emulator or without that API); plain buckets need none of it. Must be set before gcsfs is imported.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

# fsspec logs one INFO line per file it opens from a bucket: noise in a training log.
logging.getLogger("fsspec.caching").setLevel(logging.WARNING)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def is_remote(path: str) -> bool:
  """True for URLs such as gs://bucket/x (anything with a scheme), False for local paths."""
  return "://" in str(path)


def repo_path(path: str) -> str:
  """`path` as given when it exists (or is remote or absolute), else the repository's file of that
  relative path (gin files name `data/demo/...` and `gin/models/...` from any working directory)."""
  if is_remote(path) or os.path.isabs(path) or os.path.exists(path):
    return path
  in_repo = os.path.join(REPO_ROOT, path)
  return in_repo if os.path.exists(in_repo) else path


def _fs(path: str):
  """(fsspec filesystem, path without the scheme). Listing caches are off: another process (a
  resumed run, orbax's writer, a second host) changes the bucket behind this one's back."""
  check_reachable(path)
  import fsspec
  return fsspec.core.url_to_fs(str(path), use_listings_cache=False)


# ---- reaching a bucket ------------------------------------------------------------------------------

GCS_PROTOCOLS = ("gs", "gcs")
CONNECT_TIMEOUT_S = 5.0


def storage_endpoint() -> str:
  """The URL gcsfs sends gs:// requests to: STORAGE_EMULATOR_HOST when set (tests/gcs_emulator.py),
  else Google Cloud Storage (gcsfs's own choice, universe domain included)."""
  emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
  if emulator not in ("", "default"):
    return emulator if emulator.startswith(("http://", "https://")) else f"http://{emulator}"
  try:
    from gcsfs.core import _location
    return _location()
  except Exception:  # noqa: BLE001  another gcsfs version: its documented default
    return "https://storage.googleapis.com"


@functools.lru_cache(maxsize=None)
def _connect(endpoint: str) -> None:
  """Opens (and closes) one TCP connection to `endpoint`; raises OSError when that fails. Only
  successes are cached (lru_cache keeps no exceptions): a later call tries again."""
  url = urllib.parse.urlsplit(endpoint)
  port = url.port or (443 if url.scheme == "https" else 80)
  socket.create_connection((url.hostname, port), timeout=CONNECT_TIMEOUT_S).close()


def check_reachable(path: str) -> None:
  """For a gs:// path: a UserError within seconds when the storage endpoint cannot be reached (no
  network, DNS failure, emulator down). Without this check gcsfs retries the connection six times
  with backoff (about a minute) and then logs a page-long traceback per call. Other schemes pass."""
  if not is_remote(path) or str(path).split("://", 1)[0] not in GCS_PROTOCOLS:
    return
  endpoint = storage_endpoint()
  try:
    _connect(endpoint)
  except OSError as e:
    raise UserError(
        f"cannot reach the storage endpoint {endpoint} for {path} ({e.strerror or e}). Check the "
        f"network connection (and, for a private bucket, credentials: `gcloud auth "
        f"application-default login`), or give a local path instead: copy the file or folder to "
        f"local disk and name that copy (e.g. --gin.VOCABULARY_PATH=\"'/path/to/spiece.model'\" "
        f"instead of mT5's gs:// vocabulary).") from None


def _with_scheme(like: str, stripped: str) -> str:
  """A path fsspec gave without its scheme, written as `like` writes paths (memory:// keeps a
  leading "/" internally that the URL does not show)."""
  scheme, rest = str(like).split("://", 1)
  return f"{scheme}://{stripped if rest.startswith('/') else stripped.lstrip('/')}"


# ---- Hugging Face Hub ids ---------------------------------------------------------------------------

# ---- names ------------------------------------------------------------------------------------------

def abspath(path: str) -> str:
  """Local paths made absolute (`~` expanded); URLs unchanged (os.path.abspath would mangle them)."""
  return str(path) if is_remote(path) else os.path.abspath(os.path.expanduser(path))


def join(path: str, *parts: str) -> str:
  return posixpath.join(str(path), *parts) if is_remote(path) else os.path.join(path, *parts)


def dirname(path: str) -> str:
  if is_remote(path):
    scheme, rest = str(path).split("://", 1)
    return f"{scheme}://{posixpath.dirname(rest.rstrip('/'))}"
  return os.path.dirname(path)


def basename(path: str) -> str:
  """The last name of `path`, trailing slashes ignored."""
  if is_remote(path):
    return posixpath.basename(str(path).rstrip("/"))
  return os.path.basename(os.path.normpath(path))


# ---- queries ----------------------------------------------------------------------------------------

def exists(path: str) -> bool:
  if not is_remote(path):
    return os.path.exists(os.path.expanduser(path))
  fs, p = _fs(path)
  return fs.exists(p)


def isdir(path: str) -> bool:
  """On a bucket: some object lies under `path/` (buckets have no empty folders)."""
  if not is_remote(path):
    return os.path.isdir(os.path.expanduser(path))
  fs, p = _fs(path)
  return fs.isdir(p)


def isfile(path: str) -> bool:
  if not is_remote(path):
    return os.path.isfile(os.path.expanduser(path))
  fs, p = _fs(path)
  return fs.isfile(p)


def getsize(path: str) -> int:
  if not is_remote(path):
    return os.path.getsize(os.path.expanduser(path))
  fs, p = _fs(path)
  return int(fs.size(p))


def fingerprint(path: str) -> str:
  """Size and modification time of a file: changes whenever its content is replaced (cache keys)."""
  if not is_remote(path):
    st = os.stat(os.path.expanduser(path))
    return f"{st.st_size}:{st.st_mtime_ns}"
  fs, p = _fs(path)
  info = fs.info(p)
  stamp = info.get("generation") or info.get("mtime") or info.get("updated") or ""
  return f"{info.get('size')}:{stamp}"


def listdir(path: str) -> list[str]:
  """Sorted names (not paths) of the entries of a folder."""
  if not is_remote(path):
    return sorted(os.listdir(os.path.expanduser(path)))
  fs, p = _fs(path)
  return sorted({posixpath.basename(e.rstrip("/")) for e in fs.ls(p, detail=False)
                 if e.rstrip("/") != p.rstrip("/")})


def subfolders(path: str) -> list[str]:
  """Sorted names of the folders in a folder (one listing on a bucket, not one request per entry)."""
  if not is_remote(path):
    return sorted(e.name for e in os.scandir(os.path.expanduser(path)) if e.is_dir())
  fs, p = _fs(path)
  return sorted({posixpath.basename(e["name"].rstrip("/")) for e in fs.ls(p, detail=True)
                 if e["type"] == "directory" and e["name"].rstrip("/") != p.rstrip("/")})


def glob(pattern: str) -> list[str]:
  """Sorted paths matching a shell pattern (`gs://b/xP3/*/merged_*.jsonl`), with their scheme."""
  if not is_remote(pattern):
    return sorted(_glob.glob(os.path.expanduser(pattern)))
  fs, p = _fs(pattern)
  return sorted(_with_scheme(pattern, match) for match in fs.glob(p))


def has_magic(pattern: str) -> bool:
  return _glob.has_magic(str(pattern))


def escape(path: str) -> str:
  """`path` with glob characters quoted (for a pattern inside a literal folder)."""
  return _glob.escape(path)


# ---- reading ----------------------------------------------------------------------------------------

def open(path: str, mode: str = "r", encoding: Optional[str] = None,
         newline: Optional[str] = None) -> IO:  # noqa: A001 (the layer's open)
  """A file object for `path`; text modes default to UTF-8. Remote writes upload on close (one
  object, so readers see the old object or the whole new one). No append mode on buckets."""
  text = "b" not in mode
  if text and encoding is None:
    encoding = "utf-8"
  if not is_remote(path):
    import builtins
    return builtins.open(os.path.expanduser(path), mode, encoding=encoding, newline=newline)
  if "a" in mode or "+" in mode:
    raise ValueError(f"mode {mode!r} is not supported on buckets ({path}); rewrite the whole file")
  fs, p = _fs(path)
  handle = fs.open(p, mode.replace("t", "").replace("b", "") + "b")
  return io.TextIOWrapper(handle, encoding=encoding, newline=newline) if text else handle


def read_text(path: str) -> str:
  with open(path, "r") as f:
    return f.read()


def read_bytes(path: str) -> bytes:
  if not is_remote(path):
    with open(path, "rb") as f:
      return f.read()
  fs, p = _fs(path)
  return fs.cat_file(p)


def read_range(path: str, start: int, end: int) -> bytes:
  """Bytes [start, end) of a file: one ranged request on a bucket (safetensors tensors)."""
  if not is_remote(path):
    with open(path, "rb") as f:
      f.seek(start)
      return f.read(end - start)
  fs, p = _fs(path)
  return fs.cat_file(p, start=start, end=end)


# ---- writing ----------------------------------------------------------------------------------------

def makedirs(path: str) -> None:
  """Creates a local folder (and parents); nothing on a bucket, where folders are name prefixes."""
  if not is_remote(path):
    os.makedirs(os.path.expanduser(path), exist_ok=True)


def write_bytes(path: str, data: bytes) -> None:
  """Writes `path` atomically: readers see the old content or all of the new (a temporary file and
  a rename locally; one object upload on a bucket). Creates local parent folders."""
  if is_remote(path):
    fs, p = _fs(path)
    fs.pipe_file(p, bytes(data))
    return
  path = os.path.expanduser(path)
  if os.path.dirname(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def append_text(path: str, text: str) -> None:
  """Appends to a local file; rewrites the whole object on a bucket (objects cannot grow), so callers
  batch their appends there (reporting.MetricsLog)."""
  if not is_remote(path):
    with open(path, "a") as f:
      f.write(text)
    return
  write_text(path, (read_text(path) if exists(path) else "") + text)


@contextlib.contextmanager
def atomic_writer(path: str, mode: str = "w") -> Iterator[IO]:
  """`with atomic_writer(p) as f:` writes all of `p` or none of it (see write_bytes)."""
  buffer = io.StringIO() if "b" not in mode else io.BytesIO()
  yield buffer
  data = buffer.getvalue()
  write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)


def save_figure(figure, path: str, **savefig_kwargs) -> None:
  """A matplotlib figure rendered in memory, then written with write_bytes (PNG unless `path` ends
  otherwise): savefig itself only writes local files."""
  buffer = io.BytesIO()
  figure.savefig(buffer, format=os.path.splitext(str(path))[1][1:] or "png", **savefig_kwargs)
  write_bytes(path, buffer.getvalue())


def remove(path: str) -> None:
  if not is_remote(path):
    os.remove(os.path.expanduser(path))
    return
  fs, p = _fs(path)
  fs.rm_file(p)


def rmtree(path: str, missing_ok: bool = False) -> None:
  if missing_ok and not exists(path):
    return
  if not is_remote(path):
    shutil.rmtree(os.path.expanduser(path))
    return
  fs, p = _fs(path)
  fs.rm(p, recursive=True)


def rename(source: str, target: str) -> None:
  """Moves a file or folder. Local: one atomic rename (replacing a file `target`). Bucket: a copy and
  a delete per object, so a folder appears object by object; publish folders with a marker file
  written last (hf.export writes config.json last)."""
  if is_remote(source) != is_remote(target):
    raise ValueError(f"cannot rename between a bucket and the local disk: {source} -> {target}")
  if not is_remote(source):
    os.replace(os.path.expanduser(source), os.path.expanduser(target))
    return
  fs, p = _fs(source)
  fs.mv(p, _fs(target)[1], recursive=isdir(source))


def cache_dir() -> str:
  """Where local copies of remote files live: $XMTF_CACHE_DIR or ~/.cache/xmtf_jax (never the cwd)."""
  return os.environ.get("XMTF_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache",
                                                          "xmtf_jax")


def cached_local_copy(path: str) -> str:
  """A local file with the content of `path`: `path` itself when local; for a URL, a copy under
  cache_dir()/files, downloaded again when the object's size changed. For readers that only take
  local files (SentencePiece through seqio, which reads with tf.io.gfile)."""
  if not is_remote(path):
    return path
  import hashlib
  size = getsize(path)
  digest = hashlib.sha1(str(path).encode("utf-8")).hexdigest()[:16]
  local = os.path.join(cache_dir(), "files", f"{digest}-{basename(path)}")
  if not (os.path.exists(local) and os.path.getsize(local) == size):
    write_bytes(local, read_bytes(path))
  return local


def copy_to_local(path: str, local: str) -> None:
  """Downloads a file or a folder (tests, tools that need a real file); a plain copy when local."""
  if not is_remote(path):
    if os.path.isdir(path):
      shutil.copytree(path, local, dirs_exist_ok=True)
    else:
      shutil.copyfile(path, local)
    return
  fs, p = _fs(path)
  if not fs.isdir(p):
    fs.get_file(p, local)
    return
  for name in fs.find(p):
    target = os.path.join(local, os.path.relpath(name, p))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fs.get_file(name, target)


def upload(local: str, path: str) -> None:
  """Copies a local file or folder (its files, recursively) to `path`, a bucket or a local path."""
  if not is_remote(path):
    copy_to_local(local, path)
    return
  fs, p = _fs(path)
  if not os.path.isdir(local):
    fs.put_file(local, p)
    return
  for folder, _, names in os.walk(local):
    for name in names:
      relative = os.path.relpath(os.path.join(folder, name), local).replace(os.sep, "/")
      fs.put_file(os.path.join(folder, name), posixpath.join(p, relative))
