"""Aggregates rank-classification accuracies as the paper does and writes them for people to read.

Per prompt: accuracy. Per (dataset, language): the median over prompts (the paper's number), and the
mean, min and max (the HF model cards report the max). Per dataset: the plain mean over languages of
the per-language medians (and of the means). Written as `results.json`, `results.md` and one PNG per
dataset showing each language's median with the spread over prompts.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
from typing import Any, Iterable, Mapping, Sequence

from xmtf_jax import paths


@dataclasses.dataclass(frozen=True)
class PromptResult:
  """Accuracy of one prompt (one eval task) on one dataset and language."""
  task: str
  dataset: str
  language: str
  template: str
  num_examples: int
  num_correct: int
  prompt_variant: str = "en"
  num_choices: int | None = None     # for the chance level in plots (None: varies)
  not_applicable: int = 0             # examples the template's own conditions exclude

  @property
  def accuracy(self) -> float:
    return self.num_correct / self.num_examples if self.num_examples else float("nan")

  def to_dict(self) -> dict:
    return dict(dataclasses.asdict(self), accuracy=self.accuracy)


def _summary(values: Sequence[float]) -> dict:
  return dict(median=statistics.median(values), mean=statistics.fmean(values), min=min(values),
              max=max(values), num_prompts=len(values))


def aggregate(results: Iterable[PromptResult]) -> dict:
  """{dataset: {"languages": {lang: {median, mean, min, max, num_prompts}}, "mean_of_medians",
  "mean_of_means", "num_languages"}}, datasets and languages in sorted order."""
  grouped: dict[str, dict[str, list[float]]] = {}
  for r in results:
    if r.num_examples:
      grouped.setdefault(r.dataset, {}).setdefault(r.language, []).append(r.accuracy)
  table = {}
  for dataset in sorted(grouped):
    languages = {lang: _summary(accs) for lang, accs in sorted(grouped[dataset].items())}
    table[dataset] = dict(
        languages=languages,
        mean_of_medians=statistics.fmean(s["median"] for s in languages.values()),
        mean_of_means=statistics.fmean(s["mean"] for s in languages.values()),
        num_languages=len(languages))
  return table


def results_document(results: Sequence[PromptResult], metadata: Mapping[str, Any] | None = None) -> dict:
  """Everything `results.json` holds: run metadata, the per-prompt rows and the aggregate."""
  return dict(metadata=dict(metadata or {}),
              prompts=[r.to_dict() for r in sorted(results, key=lambda r: (r.dataset, r.language,
                                                                             r.template))],
              datasets=aggregate(results))


def _pct(x: float) -> str:
  return f"{100 * x:.1f}"


def markdown_report(document: Mapping[str, Any]) -> str:
  """A summary table (the paper's layout: median over prompts, mean over languages) then per-dataset
  tables per language and per prompt."""
  datasets = document["datasets"]
  lines = ["# Zero-shot evaluation (rank classification)", ""]
  metadata = document.get("metadata") or {}
  for key in sorted(metadata):
    lines.append(f"- {key}: {metadata[key]}")
  if metadata:
    lines.append("")
  lines += ["Accuracy in %. Per language: median over prompts; per dataset: mean over languages of "
            "those medians.", ""]
  names = sorted(datasets)
  lines += ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
  lines.append("| mean of medians | " + " | ".join(_pct(datasets[d]["mean_of_medians"])
                                                   for d in names) + " |")
  lines.append("| mean of means | " + " | ".join(_pct(datasets[d]["mean_of_means"])
                                                 for d in names) + " |")
  lines.append("| languages | " + " | ".join(str(datasets[d]["num_languages"]) for d in names) + " |")
  prompts = document.get("prompts", [])
  for dataset in names:
    lines += ["", f"## {dataset}", "", "| language | median | mean | min | max | prompts |",
              "|---|---|---|---|---|---|"]
    for lang, s in datasets[dataset]["languages"].items():
      lines.append(f"| {lang} | {_pct(s['median'])} | {_pct(s['mean'])} | {_pct(s['min'])} | "
                   f"{_pct(s['max'])} | {s['num_prompts']} |")
    lines += ["", "| language | prompt | accuracy | correct / examples |", "|---|---|---|---|"]
    for row in prompts:
      if row["dataset"] == dataset:
        lines.append(f"| {row['language']} | {row['template']} | {_pct(row['accuracy'])} | "
                     f"{row['num_correct']} / {row['num_examples']} |")
  return "\n".join(lines) + "\n"


def plot_dataset(document: Mapping[str, Any], dataset: str, path: str) -> None:
  """Bar per language (median over prompts), dots for each prompt, dashed line at chance."""
  import matplotlib
  matplotlib.use("Agg")  # files only; never needs a display
  import matplotlib.pyplot as plt

  languages = document["datasets"][dataset]["languages"]
  rows = [r for r in document["prompts"] if r["dataset"] == dataset and r["num_examples"]]
  names = list(languages)
  fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(names) + 1.5), 4.0))
  positions = range(len(names))
  ax.bar(positions, [100 * languages[n]["median"] for n in names], color="#8fb4d9",
         label="median over prompts")
  for i, lang in enumerate(names):
    accs = [100 * r["accuracy"] for r in rows if r["language"] == lang]
    ax.scatter([i] * len(accs), accs, s=12, color="#1f3b5c", zorder=3,
               label="one prompt" if i == 0 else None)
  choices = {r["num_choices"] for r in rows}
  if len(choices) == 1 and None not in choices:
    ax.axhline(100 / choices.pop(), color="grey", linestyle="--", linewidth=1, label="chance")
  ax.set_xticks(list(positions), names)
  ax.set_ylim(0, 100)
  ax.set_ylabel("accuracy (%)")
  ax.set_title(f"{dataset}: mean of medians {_pct(document['datasets'][dataset]['mean_of_medians'])}%")
  # Below the axes, so it never hides a bar.
  ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, frameon=False)
  fig.tight_layout()
  paths.save_figure(fig, path, dpi=120)
  plt.close(fig)


def write_results(output_dir: str, results: Sequence[PromptResult],
                  metadata: Mapping[str, Any] | None = None, plots: bool = True) -> dict:
  """Writes results.json, results.md and `{dataset}_accuracy.png`; returns the written paths."""
  paths.makedirs(output_dir)
  document = results_document(results, metadata)
  written = dict(json=paths.join(output_dir, "results.json"),
                 markdown=paths.join(output_dir, "results.md"))
  paths.write_text(written["json"], json.dumps(document, indent=2, ensure_ascii=False))
  paths.write_text(written["markdown"], markdown_report(document))
  if plots:
    for dataset in document["datasets"]:
      path = paths.join(output_dir, f"{dataset}_accuracy.png")
      plot_dataset(document, dataset, path)
      written[f"plot_{dataset}"] = path
  return written
