"""build_report.{json,md,png} next to a built folder: rows per language, dataset and template, drops
with their reasons, caps hit, missing data, the Flores train/eval overlap and, given a vocabulary,
tokens per language.
"""
from __future__ import annotations

import json
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)

from xmtf_jax import paths  # noqa: E402
from xmtf_jax.xp3build import spec as xp3spec  # noqa: E402
from xmtf_jax.xp3build.lines import decode_line  # noqa: E402

REPORT_FILES = ("build_report.json", "build_report.md", "build_report.png")


def _add(table: dict, key: str, value: int) -> None:
  table[key] = table.get(key, 0) + value


def count_tokens(result, vocabulary) -> dict[str, dict[str, int]]:
  """{lang: {"inputs": n, "targets": m}} over the per-template files (before deduplication)."""
  tokens: dict[str, dict[str, int]] = {}
  for count in result.files:
    if not count.written:
      continue
    per = tokens.setdefault(count.language, {"inputs": 0, "targets": 0})
    with paths.open(paths.join(result.output_dir, count.path), "rb") as f:
      for line in f:
        row = decode_line(line)
        per["inputs"] += len(vocabulary.encode(row["inputs"]))
        per["targets"] += len(vocabulary.encode(row["targets"]))
  return tokens


def summary(result, spec, vocabulary=None) -> dict[str, Any]:
  """The report as a JSON-ready dict."""
  datasets: dict[str, int] = {}
  drops: dict[str, int] = {}
  for count in result.files:
    _add(datasets, f"{count.dataset}/{count.subset}" if count.subset else count.dataset, count.written)
    for reason, n in count.dropped.items():
      _add(drops, reason, n)
  report = {
      "spec": result.spec_name, "seed": result.seed, "split_mode": result.split_mode,
      "prompt_language": spec.prompt_language, "include_heldout": spec.include_heldout,
      "output_dir": result.output_dir,
      "totals": {"files": sum(1 for c in result.files if c.written), "rows": sum(result.languages.values()),
                 "merged_lines": sum(result.merged.values()),
                 "rows_read": sum(c.rows_read for c in result.files),
                 "dropped": sum(drops.values()), "empty_templates": sum(1 for c in result.files
                                                                        if not c.written),
                 "jobs": result.jobs, "jobs_finished_before": result.jobs_skipped},
      "languages": {lang: {"rows": rows, "merged_lines": result.merged.get(lang, 0)}
                    for lang, rows in sorted(result.languages.items())},
      "datasets": dict(sorted(datasets.items())),
      "drops": dict(sorted(drops.items(), key=lambda kv: (-kv[1], kv[0]))),
      "caps_hit": [c.path for c in result.files if c.capped],
      "failed_templates": {c.path: c.failed for c in result.files if c.failed},
      "missing": list(result.missing),
      "skipped_templates": list(result.skipped_templates),
      "flores_overlap": xp3spec.flores_overlap(spec),
      "templates": [{"path": c.path, "read": c.rows_read, "rendered": c.rendered, "written": c.written,
                     "dropped": dict(sorted(c.dropped.items())), "capped": c.capped}
                    for c in result.files],
      "seconds": round(result.seconds, 3), "rows_per_second": round(result.rows_per_second, 1),
  }
  if vocabulary is not None:
    for lang, per in count_tokens(result, vocabulary).items():
      report["languages"][lang]["tokens"] = per
  return report


def markdown(report: dict) -> str:
  totals = report["totals"]
  out = [f"# xP3 build report: {report['spec']}", "",
         f"seed {report['seed']}, {report['split_mode']} splits, {report['prompt_language']} prompts; "
         f"{totals['rows']:,} rows in {totals['files']:,} files, {totals['merged_lines']:,} merged lines; "
         f"{totals['rows_read']:,} rows read, {totals['dropped']:,} dropped; "
         f"{totals['empty_templates']} templates wrote no file; {report['rows_per_second']:,.0f} rows/s.",
         "", "## Languages", "", "| language | rows | merged lines | tokens (inputs + targets) |",
         "| --- | ---: | ---: | ---: |"]
  for lang, per in report["languages"].items():
    tokens = per.get("tokens")
    shown = f"{tokens['inputs']:,} + {tokens['targets']:,}" if tokens else "-"
    out.append(f"| {lang} | {per['rows']:,} | {per['merged_lines']:,} | {shown} |")
  out += ["", "## Datasets", "", "| dataset | rows |", "| --- | ---: |"]
  out += [f"| {name} | {rows:,} |" for name, rows in report["datasets"].items()]
  out += ["", "## Drops", "", "| reason | rows |", "| --- | ---: |"]
  out += [f"| {reason} | {n:,} |" for reason, n in report["drops"].items()] or ["| (none) | 0 |"]
  out += ["", f"## Caps hit ({len(report['caps_hit'])})", ""]
  out += [f"- {path}" for path in report["caps_hit"]] or ["none"]
  for title, key in (("Failed templates", "failed_templates"), ("Missing raw data", "missing"),
                     ("Skipped templates (SKIP_PROMPTS)", "skipped_templates")):
    items = report[key]
    if items:
      out += ["", f"## {title} ({len(items)})", ""]
      out += ([f"- {k}: {v}" for k, v in items.items()] if isinstance(items, dict)
              else [f"- {item}" for item in items])
  out += ["", "## Flores train/eval overlap", "", "```", json.dumps(report["flores_overlap"], indent=1,
                                                                      ensure_ascii=False), "```"]
  out += ["", "## Templates", "", "| file | read | rendered | written | capped |",
          "| --- | ---: | ---: | ---: | --- |"]
  out += [f"| {t['path']} | {t['read']:,} | {t['rendered']:,} | {t['written']:,} | "
          f"{'yes' if t['capped'] else ''} |" for t in report["templates"]]
  return "\n".join(out) + "\n"


def plot(report: dict, path: str) -> None:
  """Rows per language (log scale) and drops by reason, side by side."""
  figure, (left, right) = plt.subplots(1, 2, figsize=(14, 5))
  languages = sorted(report["languages"].items(), key=lambda kv: -kv[1]["rows"])
  left.bar([lang for lang, _ in languages], [per["rows"] for _, per in languages], color="tab:blue")
  rows = [per["rows"] for _, per in languages if per["rows"]]
  if rows and max(rows) > 100 * min(rows):  # xP3's languages span 4 orders of magnitude
    left.set_yscale("log")
  left.set_title(f"rows per language ({report['totals']['rows']:,} in all)")
  left.tick_params(axis="x", rotation=90)
  drops = list(report["drops"].items())
  right.barh([reason for reason, _ in drops] or ["(none)"], [n for _, n in drops] or [0],
             color="tab:red")
  right.set_title(f"dropped rows by reason ({report['totals']['dropped']:,} in all)")
  figure.tight_layout()
  paths.save_figure(figure, path, dpi=100)
  plt.close(figure)


def write_report(result, spec, vocabulary=None) -> dict:
  """Writes build_report.json, .md and .png into the build's folder; returns the report."""
  report = summary(result, spec, vocabulary)
  folder = result.output_dir
  paths.write_text(paths.join(folder, REPORT_FILES[0]), json.dumps(report, indent=1, ensure_ascii=False)
                   + "\n")
  paths.write_text(paths.join(folder, REPORT_FILES[1]), markdown(report))
  plot(report, paths.join(folder, REPORT_FILES[2]))
  return report
