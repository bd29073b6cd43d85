"""The search's order, skips and time limit (xmtf_jax/train/search_run.py): which candidates are
compiled against a hand-made memory and step-time table, and a real worker process killed at its limit
on cpu:8."""
import dataclasses
import json
import types

import gin
import pytest

from xmtf_jax.cli import plan as plan_cli
from xmtf_jax.errors import UserError
from xmtf_jax.model.config import T5Config
from xmtf_jax.train import plan_search, search_report, search_run

BASE = ["--gin_file=gin/models/mt5_tiny.gin", "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 16}",
        "--gin.BATCH_SIZE=16", "--topology=cpu:8"]

# (model, fsdp, remat) -> {micro-batches: (fits, estimated s/step, estimated model-axis s)}; a count
# missing from a ladder does not fit.
TABLE = {
    (2, True, "minimal"): {2: (True, 1.0, 0.6)},
    (2, True, "dots"): {2: (True, 0.9, 0.5)},
    (4, True, "minimal"): {1: (True, 2.0, 1.5)},
    (4, True, "dots"): {},
    (2, False, "minimal"): {2: (True, 0.8, 0.6)},
    (2, False, "dots"): {4: (True, 0.85, 0.5)},
    (4, False, "minimal"): {1: (True, 0.1, 1.5)},  # would win, but its sibling's model axis says no
    (4, False, "dots"): {1: (True, 0.1, 0.1)},
}


class _Base:
  def fingerprint(self):
    return "fake"


def test_ladders_start_where_less_memory_fit_and_skip_what_cannot_fit_or_win(monkeypatch):
  compiled = []

  def fake_compile(base, c):
    compiled.append((c.model, c.fsdp, c.remat, c.microbatches))
    return {"fake": True}

  def fake_row(c, result, cached, chip):
    fits, seconds, model_s = TABLE[(c.model, c.fsdp, c.remat)].get(c.microbatches, (False, 5.0, 0.0))
    plan = types.SimpleNamespace(fits=fits, peak_bytes=2**30, parameter_bytes=0, optimizer_state_bytes=0, compile_error="",
                                 hbm_bytes=2**31)
    estimate = types.SimpleNamespace(seconds_overlapped=seconds, mfu_overlapped=0.5,
                                     communication_seconds={"model": model_s}, seconds=seconds, mfu=0.5)
    return plan_search.Row(c, plan=plan, estimate=estimate, cached=cached)
  monkeypatch.setattr(plan_search, "compile_candidate", fake_compile)
  monkeypatch.setattr(plan_search, "_row", fake_row)
  config = T5Config(vocab_size=64, d_model=64, d_ff=64, num_heads=8)
  space = plan_search.parse_space("model=2,4;fsdp=on,off;remat=dots,minimal;microbatches=1,2,4")
  groups = plan_search.candidate_groups(space, config, 8, 16)
  lines = []
  rows = search_run.run_search(_Base(), groups, chip=None, progress=lines.append)
  # By hand: FSDP ladders first, 'minimal' before 'dots', model 2 before 4. (2, on, dots) starts at 2
  # micro-batches (where (2, on, minimal) first fit); (4, on, dots) fits nowhere; (2, off, minimal)
  # starts at 2 and its sibling's model axis (0.6 s) is below the best (0.9 s), so it compiles;
  # (4, off, minimal): its sibling's 1.5 s is not below the best 0.8 s (cannot win); (4, off, dots):
  # (4, on, dots) fits nowhere (cannot fit); (2, off, dots) starts at 2 (both dominators fit at 2).
  assert compiled == [(2, True, "minimal", 1), (2, True, "minimal", 2), (4, True, "minimal", 1),
                      (2, True, "dots", 2), (4, True, "dots", 1), (4, True, "dots", 2), (4, True, "dots", 4),
                      (2, False, "minimal", 2), (2, False, "dots", 2), (2, False, "dots", 4)]
  skipped = {(r.candidate.model, r.candidate.fsdp, r.candidate.remat, r.candidate.microbatches): r.skipped
             for r in rows if r.skipped}
  assert set(skipped) == ({(2, True, "dots", 1), (2, False, "minimal", 1), (2, False, "dots", 1)}
                          | {(4, False, r, k) for r in ("minimal", "dots") for k in (1, 2, 4)})
  assert skipped[(2, True, "dots", 1)].startswith("cannot fit: 4 x 2 fsdp=on remat=minimal keeps less memory "
                                                  "and needs 2 micro-batches")
  assert skipped[(4, False, "minimal", 1)].startswith("cannot win: 2 x 4 fsdp=on remat=minimal spends 1.5 s")
  assert "fits at no micro-batch count tried" in skipped[(4, False, "dots", 4)]
  assert len(rows) == len(compiled) + len(skipped)
  assert len(lines) == len(compiled) + 5  # one line per skipped ladder or part of one (5 above)
  assert (rows[0].candidate.model, rows[0].candidate.fsdp, rows[0].estimate.seconds_overlapped) == (2, False, 0.8)
  assert all(r.skipped for r in rows[-len(skipped):])  # skipped rows last
  text = search_report.render_table(rows, "cpu:8", "TPU v4")
  assert f"{len(skipped)} skipped" in text and "skipped, cannot win" in text

  # --search_exhaustive compiles every rung of every ladder and skips nothing.
  compiled.clear()
  rows = search_run.run_search(_Base(), groups, chip=None, exhaustive=True)
  assert len(compiled) == len(rows) == 8 * 3 and not any(r.skipped for r in rows)


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_a_compile_past_the_time_limit_is_killed_and_recorded(clean_gin, tmp_path):
  out = tmp_path / "search.json"
  argv = BASE + ["--search_space=model=2;fsdp=off;remat=minimal;microbatches=1,2", "--search_workers=1",
                 f"--output_json={out}"]
  # 0.5 s: the worker process cannot even import jax in that time.
  text, rows, best = plan_cli.search(argv + ["--search_timeout_s=0.5"])
  assert best is None and len(rows) == 1  # the ladder stops at a time-out
  assert rows[0].error == "timed out after 0.5 s" and not rows[0].cached
  assert "timed out" in text.splitlines()[3] and "rank 1: timed out after 0.5 s" in text
  saved = json.loads((tmp_path / "search.candidates" / "d4-m2-nofsdp-minimal-mb1.json").read_text())
  assert saved["result"]["timed_out_s"] == 0.5
  assert json.loads(out.read_text())["rows"][0]["error"] == "timed out after 0.5 s"
  # The same limit again: the time-out comes from the cache; a longer one compiles it (in a worker).
  gin.clear_config()
  _, rows, _ = plan_cli.search(argv + ["--search_timeout_s=0.5"])
  assert rows[0].cached and rows[0].error.startswith("timed out")
  gin.clear_config()
  _, rows, best = plan_cli.search(argv + ["--search_timeout_s=600"])
  assert not rows[0].cached and best is rows[0] and rows[0].plan.mesh == {"data": 4, "model": 2}
  gin.clear_config()
  with pytest.raises(UserError, match="--search_timeout_s=-1"):
    plan_cli.search(argv + ["--search_timeout_s=-1"])


def test_ladders_that_keep_more_memory_than_a_timed_out_one_are_not_compiled(monkeypatch):
  compiled = []

  def fake_compile(base, c):
    compiled.append((c.fsdp, c.remat, c.microbatches))
    return {"fake": True}

  def fake_row(c, result, cached, chip):
    if c.fsdp and c.remat == "minimal":
      return plan_search.Row(c, error="timed out after 300 s")
    plan = types.SimpleNamespace(fits=True, peak_bytes=2**30, parameter_bytes=0, optimizer_state_bytes=0,
                                 hbm_bytes=2**31, compile_error="")
    estimate = types.SimpleNamespace(seconds_overlapped=1.0, mfu_overlapped=0.5, seconds=1.0, mfu=0.5,
                                     communication_seconds={"model": 0.1})
    return plan_search.Row(c, plan=plan, estimate=estimate)
  monkeypatch.setattr(plan_search, "compile_candidate", fake_compile)
  monkeypatch.setattr(plan_search, "_row", fake_row)
  config = T5Config(vocab_size=64, d_model=64, d_ff=64, num_heads=8)
  space = plan_search.parse_space("model=2;fsdp=on,off;remat=minimal,dots;microbatches=1,2")
  rows = search_run.run_search(_Base(), plan_search.candidate_groups(space, config, 8, 16), chip=None)
  # (on, minimal) timed out at 1 micro-batch (its ladder stops); (on, dots) and (off, minimal) keep
  # more memory than it, and (off, dots) more than those: none compiles, every rung is a skipped row.
  assert compiled == [(True, "minimal", 1)]
  assert len(rows) == 1 + 3 * 2 and rows[0].error == "timed out after 300 s"
  direct = "not compiled: 4 x 2 fsdp=on remat=minimal keeps less memory and timed out"
  assert sum(r.skipped.startswith(direct) for r in rows) == 4  # (on, dots) and (off, minimal)
  assert all(r.skipped.startswith("not compiled: 4 x 2 fsdp=") for r in rows[1:])


def test_run_gins_that_differ_only_in_searched_fields_share_a_cache():
  from xmtf_jax.parallel import partitioning
  from xmtf_jax.train import losses, optim
  from xmtf_jax.train import plan as train_plan
  config = T5Config(vocab_size=64, d_model=64, d_ff=64, num_heads=8)
  shape = train_plan.StepShape(16, {"inputs": 32, "targets": 16})

  def base(num_partitions, remat, microbatches, dropout=0.1):
    settings = dataclasses.replace(shape.settings, num_microbatches=microbatches)
    return plan_search.SearchBase(config.replace(remat_policy=remat, dropout_rate=dropout), optim.OptimizerConfig(),
                                  losses.LossConfig(), partitioning.PartitioningConfig(num_partitions=num_partitions),
                                  dataclasses.replace(shape, settings=settings), "cpu:8", 2**30)
  assert base(4, "dots", 2).fingerprint() == base(2, "minimal", 1).fingerprint()
  assert base(4, "dots", 2).fingerprint() != base(4, "dots", 2, dropout=0.0).fingerprint()
