"""Collectives of a compiled XLA program (`compiled.as_text()`): how many of each kind run per step, and
how many bytes they produce per device, by dtype.

What the text looks like and what is counted:
  - plain ops `%x = f32[..] all-reduce(...)` and tuple-shaped ones (several arrays in one op);
  - asynchronous pairs `all-gather-start` / `all-gather-done`: counted once, at the start, with the
    output part of the start's (operands, outputs, scratch) tuple;
  - XLA:TPU's reduce-scatter written as a `fusion(...), kind=kCustom, calls=%all-reduce-scatter...`:
    one reduce-scatter of the fusion's result shape (the all-reduce inside is not counted again);
  - ops inside `while` loops (scanned layers, micro-batches) multiplied by the loop's trip count, read
    from `known_trip_count` in its backend config or from the `compare(i, constant(N)), direction=LT`
    of its condition (1 when neither is there);
  - ops inside called computations (fusions, conditionals, calls) once per call.
Bytes are result sizes per device: for an all-reduce the reduced array, for an all-gather the gathered
one, for a reduce-scatter the scattered shard.

`collectives_by_axis` splits the same counts by the mesh axes each collective's device groups span, so
a step-time estimate can charge each to the bandwidth of its axis. Device ids in an SPMD program are
positions in the mesh's row-major device order (`use_global_device_ids`), so a group's ids unravelled
over the mesh shape show which axes vary within it. Three spellings of the groups are read: explicit
`{{0,1},{2,3}}`, iota `[2,4]<=[4,2]T(1,0)` (iota over the right shape, transposed, reshaped to
groups x members) and XLA's mesh form `mesh['axis_0'=4,'axis_1'=2] device_ids=([2,4]T(1,0)) {'axis_1'}`
(device ids laid out on a mesh of its own, groups along the named axes); a collective-permute's
`source_target_pairs` counts as groups of two.
"""
from __future__ import annotations

import collections
import math
import re
from typing import Mapping, Optional

import numpy as np

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all",
         "ragged-all-to-all", "collective-broadcast")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
               "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1,
               "f8e5m2": 1, "s4": 0.5, "u4": 0.5}
_ARRAY = re.compile(r"\b(pred|[sufc]\d+|bf16|f8e\w+?)\[([\d,]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([a-z][\w\-]*)\((.*)$")


def _arrays(shape: str) -> list[tuple[str, int]]:
  return [(dtype, math.prod(int(d) for d in dims.split(",") if d) if dims else 1)
          for dtype, dims in _ARRAY.findall(shape)]


def _top_level(shape: str) -> list[str]:
  """'((a, b), (c, d), u32[])' -> ['(a, b)', '(c, d)', 'u32[]']."""
  text = shape.strip()
  if not text.startswith("("):
    return [text]
  depth, current, parts = 0, "", []
  for ch in text[1:-1]:
    depth += ch in "({[" 
    depth -= ch in ")}]"
    if ch == "," and depth == 0:
      parts.append(current)
      current = ""
    else:
      current += ch
  parts.append(current)
  return [p.strip() for p in parts if p.strip()]


def _computations(text: str) -> tuple[dict[str, list[str]], str]:
  computations, current, entry = {}, None, None
  for line in text.splitlines():
    if current is None:
      match = _HEADER.match(line)
      if match:
        current = match.group(2)
        computations[current] = []
        if match.group(1):
          entry = current
    elif line.startswith("}"):
      current = None
    else:
      computations[current].append(line)
  return computations, entry


def _trip_count(condition: list[str], while_line: str) -> int:
  match = re.search(r'known_trip_count"?\s*[:=]\s*\{?"?n"?\s*[:=]\s*"?(\d+)', while_line)
  if match:
    return int(match.group(1))
  constants = {}
  for line in condition:
    parsed = _INSTRUCTION.match(line)
    if parsed and parsed.group(3) == "constant":
      value = re.match(r"\s*(-?\d+)\)", parsed.group(4))
      if value:
        constants[parsed.group(1)] = int(value.group(1))
  for line in condition:
    if " compare(" in line and "direction=LT" in line:
      for name, value in constants.items():
        if re.search(r"%" + re.escape(name) + r"\b", line):
          return value
  return 1


def count_collectives(text: str, loops: bool = True) -> dict[str, dict]:
  """{kind: {'count': int, 'bytes': int, 'dtypes': {dtype: bytes}}} per device and step."""
  return _walk(text, loops, lambda base, line: base)


def _walk(text: str, loops: bool, key) -> dict:
  """The per-step totals of the program's collectives under `key(kind, instruction line)`."""
  computations, entry = _computations(text)
  memo: dict[str, dict] = {}

  def visit(name: str) -> dict:
    if name in memo:
      return memo[name]
    totals = collections.defaultdict(lambda: {"count": 0, "bytes": 0, "dtypes": collections.Counter()})

    def add(kind, arrays, times=1):
      entry_ = totals[kind]
      entry_["count"] += times
      for dtype, n in arrays:
        nbytes = int(times * n * DTYPE_BYTES.get(dtype, 0))
        entry_["bytes"] += nbytes
        entry_["dtypes"][dtype] += nbytes

    def merge(sub, times):
      for kind, stats in sub.items():
        entry_ = totals[kind]
        entry_["count"] += times * stats["count"]
        entry_["bytes"] += times * stats["bytes"]
        for dtype, nbytes in stats["dtypes"].items():
          entry_["dtypes"][dtype] += times * nbytes

    for line in computations.get(name, []):
      parsed = _INSTRUCTION.match(line)
      if not parsed:
        continue
      _, shape, op, rest = parsed.groups()
      if op.endswith("-done"):
        continue
      base = op[:-len("-start")] if op.endswith("-start") else op
      if base in KINDS:
        arrays = _arrays(shape)
        if op.endswith("-start") and base in ("all-gather", "collective-permute", "all-to-all"):
          parts = _top_level(shape)  # (operands, outputs, scratch...)
          arrays = _arrays(parts[1]) if len(parts) >= 2 else arrays
        add(key(base, line), arrays)
        continue
      called = re.findall(r"(?:calls|body|to_apply)=%([\w.\-]+)", rest)
      if op == "fusion" and "kind=kCustom" in rest and called and called[0].startswith("all-reduce-scatter"):
        inner = " ".join(l for l in computations.get(called[0], []) if "replica_groups=" in l)
        add(key("reduce-scatter", inner or line), _arrays(shape))  # the groups are the inner op's
        continue
      if op == "while":
        body = re.search(r"body=%([\w.\-]+)", rest).group(1)
        condition = re.search(r"condition=%([\w.\-]+)", rest).group(1)
        merge(visit(body), _trip_count(computations.get(condition, []), line) if loops else 1)
        continue
      for sub in re.findall(r"(?:calls|branch_computations=\{|true_computation|false_computation)=?%([\w.\-]+)",
                            rest):
        if sub in computations and sub != name:
          merge(visit(sub), 1)
    memo[name] = {k: dict(v, dtypes=dict(v["dtypes"])) for k, v in totals.items()}
    return memo[name]

  return visit(entry) if entry else {}


def _iota(text: str) -> np.ndarray:
  """`[2,4]<=[4,2]T(1,0)` or `[4,2]T(1,0)` (no reshape) -> the device ids in the given shape."""
  match = re.match(r"\[([\d,]+)\](?:<=\[([\d,]+)\])?(?:T\(([\d,]+)\))?", text.strip())
  if not match:
    raise ValueError(f"not an iota device list: {text!r}")
  shape = [int(d) for d in match.group(1).split(",")]
  source = [int(d) for d in (match.group(2) or match.group(1)).split(",")]
  ids = np.arange(math.prod(source)).reshape(source)
  if match.group(3):
    ids = ids.transpose([int(d) for d in match.group(3).split(",")])
  return ids.reshape(shape)


def device_groups(line: str, num_devices: int) -> Optional[list[list[int]]]:
  """The device groups of one collective instruction, or None when its line names none it can read."""
  pairs = re.search(r"source_target_pairs=\{(\{[\d,{}\s]*)\}", line)
  if pairs:
    return [[int(x) for x in p.split(",")] for p in re.findall(r"\{(\d+\s*,\s*\d+)\}", pairs.group(1))]
  mesh = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*(?:,?\s*device_ids=\(([^)]*\)?)\))?\s*\{([^}]*)\}",
                   line)
  if mesh:
    axes = re.findall(r"'([^']+)'\s*=\s*(\d+)", mesh.group(1))
    if ":" in mesh.group(1) or ":" in mesh.group(3):
      return None  # sub-axes (`'a':(1)2`): not read
    names = [a for a, _ in axes]
    sizes = [int(n) for _, n in axes]
    ids = _iota(mesh.group(2)).reshape(sizes) if mesh.group(2) else np.arange(math.prod(sizes)).reshape(sizes)
    along = [names.index(a) for a in re.findall(r"'([^']+)'", mesh.group(3))]
    rest = [i for i in range(len(sizes)) if i not in along]
    ids = ids.transpose(rest + along).reshape(-1, math.prod(sizes[i] for i in along))
    return ids.tolist()
  iota = re.search(r"replica_groups=(\[[\d,]+\]<=\[[\d,]+\](?:T\([\d,]+\))?)", line)
  if iota:
    return _iota(iota.group(1)).tolist()
  explicit = re.search(r"replica_groups=\{((?:\{[\d,\s]*\},?\s*)*)\}", line)
  if explicit:
    groups = [[int(x) for x in g.split(",") if x.strip()] for g in re.findall(r"\{([\d,\s]*)\}", explicit.group(1))]
    return groups or [list(range(num_devices))]  # `{}`: one group of every device
  return None


def group_axes(groups: Optional[list[list[int]]], mesh_shape: Mapping[str, int]) -> tuple[str, int]:
  """(the mesh axes the groups span, joined by '+' in mesh order, or 'none'; the largest group size).
  ('?', 0) when the groups are unknown or name devices outside the mesh."""
  if groups is None:
    return "?", 0
  sizes = list(mesh_shape.values())
  varying = np.zeros(len(sizes), dtype=bool)
  for group in groups:
    if any(not 0 <= d < math.prod(sizes) for d in group):
      return "?", 0
    coords = np.array(np.unravel_index(np.array(group, dtype=np.int64), sizes)).reshape(len(sizes), -1)
    varying |= (coords != coords[:, :1]).any(axis=1)
  names = [name for name, on in zip(mesh_shape, varying) if on]
  return ("+".join(names) or "none"), max((len(g) for g in groups), default=0)


def collectives_by_axis(text: str, mesh_shape: Mapping[str, int], loops: bool = True) -> dict[str, dict]:
  """{axes: {kind: {'count', 'bytes', 'group_size'}}} per device and step; `axes` as `group_axes` names
  them ('model', 'data', 'data+model', 'none' for groups of one device, '?' for unread groups)."""
  num_devices = math.prod(mesh_shape.values())
  sizes: dict[tuple, int] = {}

  def key(kind: str, line: str) -> tuple:
    axes, size = group_axes(device_groups(line, num_devices), mesh_shape)
    sizes[(axes, kind)] = max(sizes.get((axes, kind), 0), size)
    return (axes, kind)

  out: dict[str, dict] = {}
  for (axes, kind), stats in _walk(text, loops, key).items():
    out.setdefault(axes, {})[kind] = {"count": stats["count"], "bytes": stats["bytes"],
                                      "group_size": sizes[(axes, kind)]}
  return out
