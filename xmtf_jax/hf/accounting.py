"""What every family's tensor accounting shares: our per-layer shapes, and the two refusals (names the
config does not explain, shapes it does not give) worded once.

A family's `account_tensors(source, config, origin) -> (plan, uses)` (hf/mt5_tensors.py,
hf/bloom_tensors.py) checks a folder's names and shapes before any data is read. plan: [(our path,
folder tensor to read, layout, our per-layer shape)]; uses: {every folder tensor: "read", "tied copy
of X" (checked equal), "unused" (a warning) or "ignored" (as transformers ignores it)}.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from xmtf_jax.errors import UserError
from xmtf_jax.hf.mapping import tree_get
from xmtf_jax.model import family

Path = tuple[str, ...]


def our_shapes(config: Any, parameter_mapping: Callable) -> dict[Path, tuple[int, ...]]:
  """Per-layer shape of every mapped parameter (whatever config.scan_layers says); abstract."""
  shapes = family.model_for(config.replace(scan_layers=False)).abstract_params()
  return {path: tuple(tree_get(shapes, path).shape) for path, _, _ in parameter_mapping(config)}


def first_names(names: list[str], count: int = 3) -> str:
  more = f" and {len(names) - count} more" if len(names) > count else ""
  return ", ".join(names[:count]) + more


def refuse_names(origin: str, summary: str, missing: list[str], unexpected: list[str]) -> None:
  """Raises when tensors the config implies are missing or the folder holds ones it does not."""
  if missing or unexpected:
    raise UserError(
        f"{origin}: the weights do not hold the tensors that config.json ({summary}) implies: "
        + "; ".join(f"{what} tensors: {first_names(names)}"
                    for what, names in (("missing", missing), ("unexpected", unexpected)) if names)
        + ". Either config.json belongs to another model (keep the one saved with these weights) or the "
        "weights are incomplete (download or export the folder again).")


def refuse_shapes(origin: str, summary: str, source: Any, want: Mapping[str, tuple[int, ...]]) -> None:
  """Raises naming the first folder tensor whose shape is not the one `want` gives it."""
  mismatches = [name for name, shape in want.items() if tuple(source.shapes[name]) != tuple(shape)]
  if mismatches:
    name = mismatches[0]
    others = f" ({len(mismatches) - 1} more tensors differ too)" if len(mismatches) > 1 else ""
    raise UserError(
        f"{origin}: the weights do not match config.json ({summary}): shape mismatch for {name} "
        f"(in {source.origin[name]}): expected {list(want[name])} from the config, got "
        f"{list(source.shapes[name])}{others}. The config.json and the weights come from different "
        "models; keep the config.json that was saved with these weights.")
