"""Reading t5x checkpoints (google-research/t5x) without t5x: where the step is, which format it is
in, the parameter names and shapes, and one array (or one slice of it) at a time.

A model path may name a t5x model dir (its newest `checkpoint_<step>`, or `step`), one
`checkpoint_<step>` directory, or that directory's msgpack `checkpoint` file; local or gs://. Formats:

  legacy  `checkpoint_<step>/checkpoint`: msgpack {"version": 3|2, "optimizer": {"target", "state"}}
          (version 0: the state dict itself). A leaf is inline (flax's msgpack ext types 1 and 3,
          bfloat16 included; arrays over 1 GiB as `__msgpack_chunked_array__` dicts) or a tensorstore
          spec dict naming a zarr directory beside the file (gzip or zstd; version 2 stored bfloat16
          as uint16). The directory is found by its name in the step directory, whatever the spec's
          driver (file, gfile, gcs with t5x's dummy bucket) or path field (`kvstore.path`, `path`).
  orbax   `checkpoint_<step>/state/_METADATA` (t5x since 2023): the same {"target", "state"} tree
          as zarr arrays named `target.encoder...`, in an OCDBT store (or one directory each).

Names are '/'-joined paths under `target` (e.g. `encoder/layers_0/attention/query/kernel`); shapes
are the stored ones. `checkpoint/t5x_names.py` maps them onto our parameters. The facts behind this
reader: shared/facts/t5x_checkpoints.md §1.
"""
from __future__ import annotations

import ast
import json
import logging
import re
from typing import Any, Optional

import ml_dtypes
import msgpack
import numpy as np

from xmtf_jax import paths
from xmtf_jax.errors import UserError

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint"  # the legacy format's msgpack (also the file a user may name)
ORBAX_ITEM = "state"            # the Orbax format's train-state item
GIN_FILE = "config.gin"         # the operative gin t5x writes into the model dir
_STEP_DIR = re.compile(r"checkpoint_(\d+)$")
_CHUNKED = "__msgpack_chunked_array__"


def step_of_name(name: str) -> Optional[int]:
  """The step of a t5x step directory's name; None for others (`checkpoint_5.tmp-1700000000`)."""
  match = _STEP_DIR.match(name)
  return int(match.group(1)) if match else None


def is_step_listing(names) -> bool:
  """Whether a folder holding `names` is a t5x step: a legacy `checkpoint` file or an Orbax `state/`
  (our own steps hold params/ and metadata/ instead)."""
  names = set(names or ())
  return "params" not in names and (CHECKPOINT_FILE in names or ORBAX_ITEM in names)


def _listdir(path: str) -> Optional[set]:
  try:
    return set(paths.listdir(path))
  except (FileNotFoundError, NotADirectoryError):
    return None


def find_step_dir(path: str, names: Optional[frozenset], step: Optional[int]) -> Optional[tuple[str, int]]:
  """(step directory, step) when `path` is a t5x model dir, step directory or `checkpoint` file;
  None otherwise. A model dir gives its newest step (or `step`)."""
  if paths.basename(path) == CHECKPOINT_FILE and not names and paths.isfile(path):
    path, names = paths.dirname(path), frozenset(paths.listdir(paths.dirname(path)))
  if names is None:
    return None
  if is_step_listing(names):
    own = step_of_name(paths.basename(path.rstrip("/")))
    if step is not None and own is not None and own != step:
      raise UserError(f"--step={step} given with the t5x step directory {path}; pass its model dir instead")
    return path, own if own is not None else -1
  steps = sorted(s for s in map(step_of_name, names) if s is not None)
  for candidate in ([step] if step is not None else reversed(steps)):
    if candidate in steps and is_step_listing(_listdir(paths.join(path, f"checkpoint_{candidate}"))):
      return paths.join(path, f"checkpoint_{candidate}"), candidate
    if step is not None:
      return None
  return None


# ---- the legacy msgpack ------------------------------------------------------------------------------

def _dtype(name: str) -> np.dtype:
  return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def _ext_hook(code: int, data: bytes) -> Any:
  """flax.serialization's ext types: 1 ndarray, 3 numpy scalar (both (shape, dtype, C bytes)), 2 complex."""
  if code in (1, 3):
    shape, dtype, buffer = msgpack.unpackb(data, raw=False)
    array = np.frombuffer(buffer, dtype=_dtype(dtype)).reshape(shape)
    return array if code == 1 else array[()]
  if code == 2:
    real, imag = msgpack.unpackb(data, raw=False)
    return complex(real, imag)
  return msgpack.ExtType(code, data)


def _unchunk(node: Any) -> Any:
  """flax's chunked array dict -> the array; other dicts are walked."""
  if not isinstance(node, dict):
    return node
  if node.get(_CHUNKED):
    shape = tuple(node["shape"][str(i)] for i in range(len(node["shape"])))
    chunks = [node["chunks"][str(i)] for i in range(len(node["chunks"]))]
    return np.concatenate([np.ravel(c) for c in chunks]).reshape(shape)
  return {key: _unchunk(value) for key, value in node.items()}


def _is_spec(node: Any) -> bool:
  return isinstance(node, dict) and node.get("driver") in ("zarr", "zarr3", "n5")


def _flatten(node: Any, prefix: tuple = ()) -> dict[str, Any]:
  if isinstance(node, dict) and not _is_spec(node):
    out: dict[str, Any] = {}
    for key, value in node.items():
      out.update(_flatten(value, prefix + (str(key),)))
    return out
  return {"/".join(prefix): node}


def _kvstore(path: str) -> dict:
  """A tensorstore kvstore for a local or gs:// folder."""
  if paths.is_remote(path):
    if not path.startswith("gs://"):
      raise UserError(f"{path}: t5x checkpoints are read from local or gs:// paths only")
    bucket, _, rest = path[len("gs://"):].partition("/")
    return {"driver": "gcs", "bucket": bucket, "path": rest.rstrip("/") + "/"}
  return {"driver": "file", "path": paths.abspath(path).rstrip("/") + "/"}


def empty_aligned(shape: tuple, dtype: Any) -> np.ndarray:
  """np.empty aligned to 64 bytes, which jax's CPU backend can hold without copying it
  (`jax.device_put(x, may_alias=True)`): a loaded array then is not held twice."""
  dtype = np.dtype(dtype)
  size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  raw = np.empty(size + 64, np.uint8)
  start = -raw.ctypes.data % 64
  return raw[start:start + size].view(dtype).reshape(shape)


def release_freed_memory() -> None:
  """Hands the heap memory freed by the last read back to the system (glibc's malloc_trim; elsewhere
  a no-op): tensorstore decodes chunks on its own threads, whose malloc arenas otherwise keep the
  freed chunk buffers, and they add up over a checkpoint's arrays (a part stays: an arena's top)."""
  import ctypes
  try:
    ctypes.CDLL(None).malloc_trim(0)
  except (AttributeError, OSError, TypeError):  # no glibc (macOS, musl; Windows: no CDLL(None))
    pass


# ---- one checkpoint ----------------------------------------------------------------------------------

class T5xCheckpoint:
  """One t5x step directory. `names()` maps each target name to its shape (no array read); `read`
  returns one array (or the slice `index` of it, read alone where the storage allows) in its stored
  dtype; `state` names the non-target leaves (step, Adafactor slots) the same way."""

  def __init__(self, step_dir: str, step: Optional[int] = None):
    self.step_dir = paths.abspath(step_dir).rstrip("/")
    self.step = step
    self.model_dir = paths.dirname(self.step_dir)
    listing = _listdir(self.step_dir) or set()
    self.format = "orbax" if ORBAX_ITEM in listing and CHECKPOINT_FILE not in listing else "legacy"
    self.version: Optional[int] = None
    self._arrays: dict = {}             # opened tensorstore arrays, by (where, name)
    self._leaves: dict[str, Any] = {}   # full name ("target/...", "state/...") -> inline array or spec
    if self.format == "legacy":
      self._read_msgpack()
    else:
      self._read_orbax_metadata()

  def _origin(self) -> str:
    return paths.join(self.step_dir, CHECKPOINT_FILE if self.format == "legacy" else ORBAX_ITEM)

  def _read_msgpack(self) -> None:
    file = paths.join(self.step_dir, CHECKPOINT_FILE)
    raw = paths.read_bytes(file)
    if raw.startswith(b"model_checkpoint_path"):
      raise UserError(f"{file} is a TensorFlow (Mesh TensorFlow) checkpoint index, not a t5x checkpoint")
    try:
      tree = msgpack.unpackb(raw, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as error:
      raise UserError(f"{file}: not a t5x msgpack checkpoint ({error})") from error
    if not isinstance(tree, dict):
      raise UserError(f"{file}: not a t5x msgpack checkpoint (its top level is not a dict)")
    self.version = int(tree.get("version", 0))
    if self.version == 1:
      raise UserError(f"{file}: t5x checkpoint version 1 is not supported (t5x itself refuses it); "
                      "re-save it with t5x")
    state = tree["optimizer"] if "optimizer" in tree else tree  # version 0: the state dict itself
    if "target" not in state:
      raise UserError(f"{file}: no `target` parameter tree (keys: {sorted(state)[:8]})")
    self._leaves = _flatten(_unchunk(state))

  def _read_orbax_metadata(self) -> None:
    file = paths.join(self.step_dir, ORBAX_ITEM, "_METADATA")
    if not paths.exists(file):
      raise UserError(f"{paths.join(self.step_dir, ORBAX_ITEM)}: no _METADATA; an Orbax t5x checkpoint "
                      "holds state/_METADATA (an older Orbax layout is not supported)")
    metadata = json.loads(paths.read_text(file))
    self._ocdbt = bool(metadata.get("use_ocdbt", False))
    self._zarr3 = bool(metadata.get("use_zarr3", False))
    for key, entry in metadata.get("tree_metadata", {}).items():
      keys = ([k["key"] for k in entry["key_metadata"]] if "key_metadata" in entry
              else list(ast.literal_eval(key)))
      value_type = entry.get("value_metadata", {}).get("value_type")
      self._leaves["/".join(map(str, keys))] = {"orbax": ".".join(map(str, keys)), "value_type": value_type}

  # -- names --

  def names(self) -> dict[str, tuple[int, ...]]:
    """{target name: stored shape}."""
    return {name[len("target/"):]: self.shape(name[len("target/"):])
            for name in self._leaves if name.startswith("target/")}

  def state_names(self) -> list[str]:
    """The other leaves: `state/step`, `state/param_states/<name>/<slot>`, `flax_mutables/...`."""
    return [name for name in self._leaves if not name.startswith("target/")]

  def shape(self, name: str, where: str = "target") -> tuple[int, ...]:
    leaf = self._leaf(name, where)
    if isinstance(leaf, (np.ndarray, np.generic, int, float)):
      return tuple(np.shape(leaf))
    if "orbax" not in leaf and leaf.get("metadata", {}).get("shape") is not None:
      return tuple(leaf["metadata"]["shape"])
    return tuple(self._open(name, where).shape)

  def _leaf(self, name: str, where: str) -> Any:
    try:
      return self._leaves[f"{where}/{name}"]
    except KeyError:
      raise UserError(f"{self._origin()}: no array {where}/{name}") from None

  # -- arrays --

  def _open(self, name: str, where: str):
    if (where, name) not in self._arrays:
      self._arrays[(where, name)] = self._open_store(name, where)
    return self._arrays[(where, name)]

  def _open_store(self, name: str, where: str):
    import tensorstore as ts  # only needed for arrays stored outside the msgpack
    leaf = self._leaf(name, where)
    if "orbax" in leaf:
      item = paths.join(self.step_dir, ORBAX_ITEM)
      key = leaf["orbax"] + "/"
      kvstore = ({"driver": "ocdbt", "base": _kvstore(item), "path": key} if self._ocdbt
                 else dict(_kvstore(paths.join(item, key))))
      spec = {"driver": "zarr3" if self._zarr3 else "zarr", "kvstore": kvstore}
    else:  # t5x's spec: the array directory lies beside the msgpack, whatever the spec says
      given = (leaf.get("kvstore") or {}).get("path") or leaf.get("path")
      if not given:
        raise UserError(f"{self._origin()}: {where}/{name} names no array directory ({leaf})")
      spec = {"driver": leaf["driver"],
              "kvstore": _kvstore(paths.join(self.step_dir, given.rstrip("/").rsplit("/", 1)[-1]))}
    try:
      array = ts.open(spec, open=True, read=True).result()
    except ValueError as error:
      raise UserError(f"{self._origin()}: cannot open the array {where}/{name}: {error}") from error
    expected = (leaf.get("metadata") or {}).get("shape") if "orbax" not in leaf else None
    if expected is not None and tuple(expected) != tuple(array.shape):
      raise UserError(f"{self._origin()}: {where}/{name} is stored with shape {list(array.shape)}, its "
                      f"spec says {list(expected)}")
    return array

  def read(self, name: str, index: Any = (), where: str = "target", dtype: Any = None) -> np.ndarray:
    """One array, or `array[index]` (a tuple of ints/slices: only that part is read from storage), in
    its stored dtype or `dtype`: tensorstore then converts each chunk into the (aligned) output as it
    decodes it, so no whole array in the stored dtype is held beside the converted one."""
    leaf = self._leaf(name, where)
    inline = isinstance(leaf, (np.ndarray, np.generic, int, float))
    view = None if inline else self._open(name, where)
    view = view[index] if view is not None and index != () else view
    bits = not inline and self.version == 2 and view.dtype.numpy_dtype == np.uint16  # bfloat16 bits
    if inline or dtype is None or bits:
      data = np.asarray(leaf)[index] if inline else np.asarray(view.read().result())
      data = data.view(ml_dtypes.bfloat16) if bits else data
      if dtype is None:
        return data
      out = empty_aligned(data.shape, dtype)
      np.copyto(out, data)
      return out
    import tensorstore as ts
    out = empty_aligned(view.shape, dtype)
    source = view.translate_to[0] if view.rank else view
    if view.dtype.numpy_dtype != np.dtype(dtype):
      source = ts.cast(source, np.dtype(dtype))
    ts.array(out, copy=False, write=True).write(source).result()  # chunk by chunk into `out`
    return out

  def gin_text(self) -> Optional[str]:
    """The run's operative gin (`config.gin` in the model dir), if t5x wrote one."""
    gin = paths.join(self.model_dir, GIN_FILE)
    return paths.read_text(gin) if paths.exists(gin) else None

  def vocabulary_path(self) -> Optional[str]:
    """The SentencePiece model the run's config.gin names (`sentencepiece_model_file`), if any."""
    match = re.search(r"sentencepiece_model_file\s*=\s*['\"]([^'\"]+)['\"]", self.gin_text() or "")
    return match.group(1) if match else None

  def describe(self) -> str:
    version = f" version {self.version}" if self.format == "legacy" else ""
    return f"t5x {self.format}{version} checkpoint {self.step_dir}"
