"""`python -m xmtf_jax.data_report`: numbers match a recount; JSON, markdown and PNG are written."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece as spm

import mixtures
from xmtf_jax.cli import data_report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_report_numbers_match_a_recount(xp3_fixture, data_spm_path, tmp_path):
  lengths = {"inputs": 24, "targets": 6}
  report = data_report.make_report("fx_xp3", lengths, output_dir=str(tmp_path),
                                   max_examples_per_task=None)
  sp = spm.SentencePieceProcessor(model_file=data_spm_path)
  rows = {r["task"]: r for r in report["tasks"]}
  rates = xp3_fixture["info"].rates()
  for lang, splits in xp3_fixture["expected"].items():
    row = rows[f"fx_xp3_{lang}"]
    records = splits["train"]
    n_in = np.array([len(sp.encode(r["inputs"])) for r in records])
    n_out = np.array([len(sp.encode(r["targets"])) + 1 for r in records])  # + EOS
    assert row["examples_read"] == row["examples_in_files"] == len(records)
    assert row["language"] == lang and row["mixing_rate"] == pytest.approx(rates[row["task"]])
    assert row["inputs_tokens"] == {"mean": pytest.approx(n_in.mean()), "p50": np.percentile(n_in, 50),
                                    "p95": pytest.approx(np.percentile(n_in, 95)), "max": n_in.max()}
    assert row["targets_tokens"]["max"] == n_out.max()
    assert row["inputs_truncated_share"] == pytest.approx(np.mean(n_in > 24))
    assert row["targets_truncated_share"] == pytest.approx(np.mean(n_out > 6))
    # unpacked: one example per row, so efficiency is the trimmed tokens over the slots
    trimmed = np.minimum(n_in, 24).sum() + np.minimum(n_out, 6).sum()
    assert row["packing"]["unpacked"]["efficiency"] == pytest.approx(trimmed / (len(records) * 30))
    assert row["packing"]["packed"]["efficiency"] >= row["packing"]["unpacked"]["efficiency"]
  assert sum(r["inputs_truncated_share"] > 0 for r in rows.values()) >= 2
  on_disk = json.loads((tmp_path / "report.json").read_text())
  assert on_disk["tasks"][0]["task"] == report["tasks"][0]["task"]
  table = (tmp_path / "report.md").read_text()
  assert "| fx_xp3_zh | zh | 3 |" in table
  assert (tmp_path / "language_shares.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_samples_and_shows_bad_lines(tmp_path, data_spm_path):
  from tests import data_fixtures
  root = tmp_path / "xp3"
  data_fixtures.write_jsonl(str(root / "en" / "merged_en.jsonl"),
                            [data_fixtures.record("en", i) for i in range(20)],
                            raw_lines=[b'{"inputs": "x", "targets": ""}'])
  config = mixtures.DataConfig(vocabulary_path=data_spm_path, strict=False,
                               line_counts_cache_dir=str(tmp_path / "counts"))
  mixtures.register_variant("xp3", config, data_dir=str(root), name="fx_report_bad", overwrite=True)
  report = data_report.build_report("fx_report_bad", {"inputs": 64, "targets": 16},
                                    max_examples_per_task=5)
  row = report["tasks"][0]
  assert row["examples_read"] == 5 and row["examples_in_files"] == 21
  report = data_report.build_report("fx_report_bad", {"inputs": 64, "targets": 16},
                                    max_examples_per_task=None)
  assert report["bad_lines_total"] == 1 and report["tasks"][0]["bad_lines"] == {"empty_target": 1}
  assert "empty_target" in data_report.markdown(report)


def test_command_line_on_the_demo(tmp_path):
  out = tmp_path / "report"
  result = subprocess.run(  # one task of the demo keeps this quick; mixtures are covered above
      [sys.executable, "-m", "xmtf_jax.data_report", "--gin_file=gin/mixtures/demo.gin",
       "--gin.MIXTURE_OR_TASK_NAME='demo_te'",
       f"--gin.DATA_REPORT_DIR='{out}'", "--gin.DATA_REPORT_MAX_EXAMPLES=40",
       "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 8}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "[1/1] demo_te" in result.stderr  # progress
  report = json.loads((out / "report.json").read_text())
  assert report["task_feature_lengths"] == {"inputs": 16, "targets": 8}
  assert [(r["task"], r["examples_read"], r["mixing_rate"]) for r in report["tasks"]] == [
      ("demo_te", 40, 1.0)]
  assert report["tasks"][0]["inputs_truncated_share"] > 0
  assert "| demo_te |" in result.stdout


def test_report_builds_the_line_index_the_training_pipeline_then_finds(xp3_fixture, tmp_path):
  from xmtf_jax.data import indexed_pipeline, line_index
  index_dir = str(tmp_path / "line_index")
  data_report.make_report("fx_xp3", {"inputs": 24, "targets": 6}, output_dir=str(tmp_path / "r"),
                          max_examples_per_task=10, line_index_dir=index_dir)
  files = data_report.data_files("fx_xp3", "train")
  assert files and len(os.listdir(index_dir)) == len(files)
  built = line_index.load_index
  try:  # the pipeline must only load what the report built
    line_index.build_offsets, original = None, line_index.build_offsets
    it = indexed_pipeline.make_indexed_batches("fx_xp3", {"inputs": 24, "targets": 6}, "train", 4,
                                               use_packing=False, seed=0, process_index=0,
                                               process_count=1, index_dir=index_dir)
    assert sum(t.size for t in it.reader.tasks) == sum(built(f, index_dir).num_lines for f in files)
    it.close()
  finally:
    line_index.build_offsets = original


def test_a_mixture_of_your_own_reports_and_logs_its_own_rates_and_languages(xp3_fixture, data_spm_path,
                                                                            tmp_path, caplog):
  """Issue 19 item 14: a mixture holding an xP3-family mixture and a task of your own: the report's
  rates are the mixture's (the family's shares scaled by its rate), languages come from the family,
  the task of your own shows '-' with a note; training logs the same rates, not the sub-mixture's."""
  import logging
  import seqio
  from tests import data_fixtures
  from xmtf_jax.data import batch_source, source_factory
  path = str(tmp_path / "qa" / "train.jsonl")
  data_fixtures.write_jsonl(path, [data_fixtures.record("en", i) for i in range(6)])
  mixtures.add_jsonl_task("fx_my_qa", {"train": [path]},
                          vocab=seqio.SentencePieceVocabulary(data_spm_path), overwrite=True)
  mixtures.add_mixture("fx_custom_mix", [("fx_xp3", 3.0), ("fx_my_qa", 1.0)], overwrite=True)
  family = xp3_fixture["info"]
  report = data_report.build_report("fx_custom_mix", {"inputs": 64, "targets": 16},
                                    max_examples_per_task=3)
  rows = {r["task"]: r for r in report["tasks"]}
  assert set(rows) == set(family.task_languages) | {"fx_my_qa"}
  assert rows["fx_my_qa"]["language"] is None and rows["fx_my_qa"]["mixing_rate"] == pytest.approx(0.25)
  for task, language in family.task_languages.items():
    assert rows[task]["language"] == language
    assert rows[task]["mixing_rate"] == pytest.approx(0.75 * family.rates()[task])
  table = data_report.markdown(report)
  assert "| fx_my_qa | - | 3 | 0.2500 |" in table and "| fx_xp3_zh | zh |" in table
  assert "lang `-`: a task of your own" in table

  caplog.set_level(logging.INFO)
  source = source_factory.make_batch_source(
      batch_source.SourceConfig("fx_custom_mix", {"inputs": 64, "targets": 16}, batch_size=8), "train",
      process_index=0, process_count=1)
  source.close()
  logged = [r.getMessage() for r in caplog.records if "rates" in r.getMessage()]
  assert len(logged) == 1, logged
  assert logged[0].startswith(f"mixing rates of fx_custom_mix ({len(rows)} tasks): ")
  assert "fx_my_qa 25.00%" in logged[0] and "fx_xp3_zh (zh) " in logged[0]
