"""`python -m xmtf_jax.plan --search` on simulated CPUs: candidates, one compile each, the ranking, the
cache, and the best row's gin reproducing it through the normal plan."""
import json

import gin
import pytest

from xmtf_jax.cli import plan as plan_cli
from xmtf_jax.errors import UserError
from xmtf_jax.model.config import T5Config
from xmtf_jax.train import plan as train_plan
from xmtf_jax.train import plan_search, search_report

LENGTHS = {"inputs": 32, "targets": 16}
BASE = ["--gin_file=gin/models/mt5_tiny.gin", f"--gin.TASK_FEATURE_LENGTHS={LENGTHS!r}",
        "--gin.BATCH_SIZE=16", "--topology=cpu:8"]
# 2 meshes x 2 micro-batch counts, every one compiled.
SPACE = "--search_space=model=1,2;fsdp=off;remat=minimal;microbatches=1,2"


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_default_candidates_follow_the_model_and_the_batch():
  # mt5-xl: 32 heads, d_ff 5120, vocabulary 250112 on v4-128 (64 devices), batch 512.
  xl = T5Config(vocab_size=250112, d_model=2048, d_ff=5120, num_heads=32, remat_policy="dots")
  assert plan_search.model_axes(xl, 64, 512) == [1, 2, 4, 8, 16]
  # 6 heads: only 1, 2, 3 and 6 split them, and of those only 1 and 2 divide 8 devices.
  odd = T5Config(vocab_size=96, d_model=64, d_ff=96, num_heads=6)
  assert plan_search.model_axes(odd, 8, 16) == [1, 2]
  with pytest.raises(UserError, match="model=4: does not divide heads"):
    plan_search.model_axes(odd, 8, 16, requested=[4])
  # batch 12 on 8 devices: data 8 (model 1) does not divide 12; data 4, 2 and 1 do.
  assert plan_search.model_axes(T5Config(vocab_size=64, d_ff=64, num_heads=8), 8, 12) == [2, 4, 8]
  groups = plan_search.candidate_groups(plan_search.SearchSpace(), xl, 64, 512)
  # FSDP is skipped where data is 1 (model 64 is not offered) or does not divide d_model: 5 meshes x
  # 2 FSDP x remat {minimal, dots} ('full' is 'minimal').
  assert len(groups) == 5 * 2 * 2
  assert {g[0].remat for g in groups} == {"minimal", "dots"}
  # Micro-batch ladders keep whole rows per data shard: data 64 x 8 micro-batches = 512 rows.
  assert [c.microbatches for c in groups[0]] == [1, 2, 4, 8] and groups[0][0].data == 64
  space = plan_search.parse_space("model=2;fsdp=on;remat=full,dots;microbatches=2,4")
  assert space == plan_search.SearchSpace(model=(2,), fsdp=(True,), remat=("full", "dots"),
                                          microbatches=(2, 4))
  assert [[c.key for c in g] for g in plan_search.candidate_groups(space, xl, 64, 512)] == [
      ["d32-m2-fsdp-minimal-mb2", "d32-m2-fsdp-minimal-mb4"], ["d32-m2-fsdp-dots-mb2", "d32-m2-fsdp-dots-mb4"]]
  for bad in ("model=two", "mesh=2", "remat=everything", "microbatches=0"):
    with pytest.raises(UserError, match="--search_space"):
      plan_search.parse_space(bad)


def test_tiny_search_compiles_each_once_ranks_by_the_estimate_and_its_gin_reproduces_the_best(
    clean_gin, tmp_path, monkeypatch):
  compiled = []
  real = train_plan.plan_train_step

  def counting(model_config, opt, loss, mesh_config, shape, devices, **kw):
    compiled.append((mesh_config.num_partitions, model_config.remat_policy, shape.num_microbatches))
    return real(model_config, opt, loss, mesh_config, shape, devices, **kw)
  monkeypatch.setattr(train_plan, "plan_train_step", counting)
  out = tmp_path / "search.json"
  # Against 3.4 MiB per device (3.23 usable), the 8 x 1 meshes (1.76 MiB of parameters and optimizer
  # state per device, 2 rows each) do not fit; the 4 x 2 ones (1.07 MiB) do.
  argv = BASE + [SPACE, "--search_exhaustive", "--search_workers=1", f"--output_json={out}",
                 "--hbm_gib=0.0034"]
  lines = []
  text, rows, best = plan_cli.search(argv, progress=lines.append)
  assert sorted(compiled) == sorted((m, r, k) for m in (1, 2) for r in ("minimal",) for k in (1, 2))
  assert len(rows) == 4 and len(lines) == 5 and "ETA" in lines[-1]
  fitting = [row for row in rows if row.fits]
  assert len(fitting) == 2 and all(row.candidate.model == 2 for row in fitting), [(r.candidate.key, r.plan.peak_bytes) for r in rows]
  assert rows[:len(fitting)] == fitting  # those that fit first...
  seconds = [row.estimate.seconds_overlapped for row in fitting]
  assert seconds == sorted(seconds)  # ...by the estimate
  for row in rows[len(fitting):]:
    assert row.plan.peak_bytes > 0.95 * 0.0034 * 2**30 and row.candidate.model == 1
  assert best is fitting[0]
  assert "estimate s/step" in text and "estimate MFU" in text and "best as a gin file:" in text
  table = text.splitlines()[2:7]
  assert table[1].startswith("1 ") and best.candidate.mesh in table[1]
  assert [line.split()[8] for line in table[1:]] == ["yes"] * len(fitting) + ["no"] * (4 - len(fitting))
  saved = json.loads(out.read_text())
  assert saved["best"] == best.candidate.key and len(saved["rows"]) == 4
  assert [r["key"] for r in saved["rows"]] == [row.candidate.key for row in rows]
  assert saved["rows"][0]["estimate"]["label"] == "estimate"

  # A rerun reads every candidate from the cache next to the output: nothing compiles.
  gin.clear_config()
  compiled.clear()
  _, again, best_again = plan_cli.search(argv, progress=lines.append)
  assert compiled == [] and all(row.cached for row in again)
  assert best_again.candidate == best.candidate

  # The gin file body, through the normal plan, compiles the best row's setting.
  gin.clear_config()
  monkeypatch.setattr(train_plan, "plan_train_step", real)
  snippet = tmp_path / "best.gin"
  snippet.write_text(saved["gin_file"])
  plan = plan_cli.run([f"--gin_file={snippet}", "--topology=cpu:8", "--hbm_gib=0.0034"])
  c = best.candidate
  assert plan.mesh == {"data": c.data, "model": c.model}
  assert (plan.model["remat_policy"], plan.step["num_microbatches"]) == (c.remat, c.microbatches)
  assert plan.step["parameter_sharding_2d"] == c.fsdp
  assert plan.peak_bytes == best.plan.peak_bytes and plan.fits


def test_the_ladder_stops_at_the_first_count_that_fits(clean_gin, monkeypatch):
  compiled = []
  real = train_plan.plan_train_step

  def counting(model_config, opt, loss, mesh_config, shape, devices, **kw):
    compiled.append(shape.num_microbatches)
    return real(model_config, opt, loss, mesh_config, shape, devices, **kw)
  monkeypatch.setattr(train_plan, "plan_train_step", counting)
  # One mesh and remat, micro-batches 1, 2, 4: 1 fits with 32 GiB, so 2 and 4 are never compiled.
  _, rows, best = plan_cli.search(BASE + ["--search_space=model=2;fsdp=off;remat=none;microbatches=1,2,4",
                                          "--search_workers=1"])
  assert compiled == [1] and len(rows) == 1 and best.candidate.microbatches == 1


def test_bad_search_flags_are_user_errors(clean_gin):
  with pytest.raises(UserError, match="model=3: does not divide the 8 devices"):
    plan_cli.search(BASE + ["--search_space=model=3"])
  gin.clear_config()
  with pytest.raises(UserError, match="--search_workers=0"):
    plan_cli.search(BASE + ["--search_workers=0"])


def test_rendering_marks_estimates_and_puts_failures_last():
  fields = {f.name: 0 for f in plan_search.dataclasses.fields(train_plan.Plan)
            if f.default is plan_search.dataclasses.MISSING}
  fields.update(target="cpu:8", device_kind="cpu", mesh={}, model={}, step={}, collectives={},
                hbm_bytes=32 * 2**30, peak_bytes=40 * 2**30)
  big = plan_search.Row(plan_search.Candidate(8, 1, False, "none", 1), plan=train_plan.Plan(**fields))
  failed = plan_search.Row(plan_search.Candidate(4, 2, False, "none", 1), error="XlaRuntimeError: boom")
  rows = plan_search.sort_rows([failed, big])
  assert rows == [big, failed]
  text = search_report.render_table(rows, "cpu:8", "TPU v4")
  assert "are estimates for TPU v4" in text and "rank 2: XlaRuntimeError: boom" in text
  assert search_report.best_fitting(rows) is None
