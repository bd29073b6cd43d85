"""Aggregation (median over prompts, mean over languages) on a hand-checked example, and the files."""
import json

import pytest

from xmtf_jax.evaluation.results import PromptResult, aggregate, write_results


def hand_checked_results():
  rows = []
  for lang, correct in (("en", [3, 5, 7, 4, 9]), ("fr", [2, 2, 8, 6, 6])):
    for i, c in enumerate(correct):
      rows.append(PromptResult(task=f"xnli_{lang}_{i}", dataset="xnli", language=lang,
                               template=f"prompt {i}", num_examples=10, num_correct=c, num_choices=3))
  for i, c in enumerate([1, 3, 2]):
    rows.append(PromptResult(task=f"xcopa_sw_{i}", dataset="xcopa", language="sw",
                             template=f"p{i}", num_examples=4, num_correct=c, num_choices=2,
                             not_applicable=1))
  return rows


def test_median_over_prompts_then_mean_over_languages():
  table = aggregate(hand_checked_results())
  en, fr = table["xnli"]["languages"]["en"], table["xnli"]["languages"]["fr"]
  # en: .3 .5 .7 .4 .9 → sorted .3 .4 .5 .7 .9; fr: .2 .2 .8 .6 .6 → sorted .2 .2 .6 .6 .8
  assert en["median"] == pytest.approx(0.5) and en["mean"] == pytest.approx(0.56)
  assert (en["min"], en["max"], en["num_prompts"]) == (pytest.approx(0.3), pytest.approx(0.9), 5)
  assert fr["median"] == pytest.approx(0.6) and fr["mean"] == pytest.approx(0.48)
  assert table["xnli"]["mean_of_medians"] == pytest.approx(0.55)
  assert table["xnli"]["mean_of_means"] == pytest.approx(0.52)
  assert table["xcopa"]["languages"]["sw"]["median"] == pytest.approx(0.5)
  assert table["xcopa"]["num_languages"] == 1
  assert list(table) == ["xcopa", "xnli"]


def test_writes_json_markdown_and_plots(tmp_path):
  paths = write_results(str(tmp_path), hand_checked_results(), metadata={"model": "toy"})
  document = json.loads((tmp_path / "results.json").read_text())
  assert document["metadata"] == {"model": "toy"}
  assert document["datasets"]["xnli"]["mean_of_medians"] == pytest.approx(0.55)
  first = document["prompts"][0]
  assert (first["dataset"], first["language"], first["accuracy"], first["not_applicable"]) == (
      "xcopa", "sw", 0.25, 1)
  markdown = (tmp_path / "results.md").read_text()
  assert "| | xcopa | xnli |" in markdown
  assert "| mean of medians | 50.0 | 55.0 |" in markdown
  assert "| fr | 60.0 | 48.0 | 20.0 | 80.0 | 5 |" in markdown
  assert "| en | prompt 4 | 90.0 | 9 / 10 |" in markdown
  for dataset in ("xnli", "xcopa"):
    with open(paths[f"plot_{dataset}"], "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
