"""What `python -m xmtf_jax.plan --search` prints: the ranked table and the best row as a gin file.

Step times and MFU are roofline estimates from each compiled program (`step_time.estimate`), and
every header that shows them says so.
"""
from __future__ import annotations

import json
from typing import Optional, Sequence

from xmtf_jax.train.plan_search import GIB, Row

HEADER = ("rank", "mesh data x model", "fsdp", "remat", "micro-batches", "peak GiB", "fits",
          "estimate s/step", "estimate MFU", "estimate s/step no overlap")


def _cells(rank: int, row: Row) -> tuple[str, ...]:
  c = row.candidate
  if row.plan is None:
    peak, fits = "-", ("skipped" if row.skipped else "timed out" if row.error.startswith("timed out") else "-")
  else:
    gib = row.plan.peak_bytes / GIB
    peak = (f"{gib:.2f}" if gib >= 0.1 else f"{gib:.5f}") + (" (XLA refused)" if row.plan.compile_error else "")
    fits = "yes" if row.fits else "no"
  est = row.estimate
  seconds = f"{est.seconds_overlapped:.4g}" if est is not None else "-"
  mfu = f"{100 * est.mfu_overlapped:.1f}%" if est is not None else "-"
  serial = f"{est.seconds:.4g}" if est is not None else "-"
  return (str(rank), c.mesh, "on" if c.fsdp else "off", c.remat, str(c.microbatches), peak, fits, seconds,
          mfu, serial)


def render_table(rows: Sequence[Row], target: str, chip_name: str) -> str:
  """Rows as `plan_search.sort_rows` ordered them, aligned; failures follow with their error."""
  body = [HEADER] + [_cells(i + 1, row) for i, row in enumerate(rows)]
  widths = [max(len(line[i]) for line in body) for i in range(len(HEADER))]
  fitting = sum(row.fits for row in rows)
  cached = sum(row.cached for row in rows)
  skipped = sum(bool(row.skipped) for row in rows)
  lines = [f"search for {target}: {len(rows)} candidates ({cached} from the cache, {skipped} skipped), {fitting} fit; "
           f"step time (compute, HBM and collectives overlapped) and MFU are estimates for {chip_name}, "
           "sorted by the estimate among those that fit"]
  lines += ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in body]
  lines += [f"  rank {i + 1}: {row.error}" for i, row in enumerate(rows) if row.error]
  lines += [f"  rank {i + 1}: skipped, {row.skipped}" for i, row in enumerate(rows) if row.skipped]
  return "\n".join(lines)


def gin_body(best: Row, files: Sequence[str], bindings: Sequence[str], config_name: str,
             command: str) -> str:
  """A gin file that runs `best`: the run's own files and bindings, then the search's choice."""
  est = best.estimate
  lines = [f"# The fastest fitting setting `{command}` found "
           f"(estimate {est.seconds_overlapped:.4g} s/step, MFU {100 * est.mfu_overlapped:.1f}%; "
           f"peak {best.plan.peak_bytes / GIB:.2f} GiB per device)." if est is not None else
           f"# The fitting setting `{command}` found (no step-time estimate)."]
  lines += [f"include {f!r}" for f in files]
  lines += [b.replace("=", " = ", 1) if " = " not in b else b for b in bindings]
  lines += best.candidate.bindings(config_name)
  return "\n".join(lines) + "\n"


def gin_flags(best: Row, config_name: str) -> str:
  """The same choice as command-line flags to add to the run's own."""
  flags = []
  for binding in best.candidate.bindings(config_name):
    name, value = (part.strip() for part in binding.split("=", 1))
    flags.append(f"--gin.{name}={json.dumps(value) if value.startswith(chr(39)) else value}")
  return " ".join(flags)


def best_fitting(rows: Sequence[Row]) -> Optional[Row]:
  return next((row for row in rows if row.fits), None)
