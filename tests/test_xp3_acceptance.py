"""Acceptance of the xP3 builder (issue 23) against files written by hand.

The raw datasets of tests/xp3_fixtures.py (Hub column layouts, six on-disk formats) are built with
the real promptsource trees (`../shared/promptsource_xp3/{tr13,xp3mt}`) per tests/data/*_spec.yaml
and compared byte for byte with tests/data/xp3*_expected*/ (tests/data/xp3_expected.md says how
each line was rendered by hand). Per-template files are compared exactly: they are sorted by
`inputs` and no cap cuts a split of more than 5 x cap rows, so they do not depend on the seed.
Train-mode merged files are shuffled with the seed: they are compared as sorted lines (which is
exactly `LC_ALL=C sort -u` of the folder); validation-mode merged files exactly.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests import xp3_fixtures
from xmtf_jax import paths
from xmtf_jax.errors import UserError
from xmtf_jax.xp3build import build as xp3build
from xmtf_jax.xp3build import spec as xp3spec

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO_ROOT, "tests", "data")
TR13 = os.path.join(REPO_ROOT, "..", "shared", "promptsource_xp3", "tr13")
XP3MT = os.path.join(REPO_ROOT, "..", "shared", "promptsource_xp3", "xp3mt")
MINI_SPEC = os.path.join(DATA, "xp3_mini_spec.yaml")
XP3MT_SPEC = os.path.join(DATA, "xp3mt_mini_spec.yaml")
HELDOUT_UNIT = {"dataset": "xnli", "subset": "en", "templates": ["GPT-3 style"]}

pytestmark = pytest.mark.skipif(
    not (os.path.isdir(TR13) and os.path.isdir(XP3MT)),
    reason="the promptsource template trees are not at ../shared/promptsource_xp3/{tr13,xp3mt}")


def language_files(root: str) -> dict:
  """{"lang/file": bytes} of the language folders (not the .build/ markers or the build report)."""
  found = {}
  for lang in sorted(os.listdir(root)):
    folder = os.path.join(root, lang)
    if lang.startswith(".") or not os.path.isdir(folder):
      continue
    for name in sorted(os.listdir(folder)):
      with open(os.path.join(folder, name), "rb") as f:
        found[f"{lang}/{name}"] = f.read()
  return found


def assert_as_expected(built: dict, expected, shuffled_merged: bool) -> None:
  """`expected`: a folder or its language_files(); shuffled merged files are compared sorted."""
  expected = language_files(expected) if isinstance(expected, str) else expected
  assert sorted(built) == sorted(expected)
  for name, want in expected.items():
    got = built[name]
    if shuffled_merged and os.path.basename(name).startswith("merged_"):
      lines = got.splitlines(keepends=True)
      assert len(lines) == len(set(lines)), f"{name} holds duplicate lines"
      got = b"".join(sorted(lines))
    assert got.decode("utf-8") == want.decode("utf-8"), name


def build(spec, output_dir, raw_dir, templates=TR13, **kwargs):
  """In this process (one worker: no fork of a process that has imported JAX)."""
  return xp3build.build(spec, templates_root=templates, data_dir=raw_dir, output_dir=output_dir,
                        workers=1, print_fn=None, **kwargs)


def cli(*args, check=True):
  env = {**os.environ, "PYTHONPATH": REPO_ROOT, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-m", "xmtf_jax.build_xp3", *args], cwd=REPO_ROOT, env=env,
                        text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
  if check and proc.returncode != 0:
    raise AssertionError(f"exit {proc.returncode}:\n{proc.stdout[-5000:]}")
  return proc


def build_args(raw_dir, output_dir, spec=MINI_SPEC, templates=TR13):
  return [f"--spec={spec}", f"--templates={templates}", f"--data_dir={raw_dir}",
          f"--output_dir={output_dir}", "--seed=0"]


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
  return xp3_fixtures.write_raw(str(tmp_path_factory.mktemp("xp3_raw")))


@pytest.fixture(scope="module")
def built(tmp_path_factory, raw_dir):
  """The mini spec built in train mode with seed 0: (output folder, BuildResult)."""
  output_dir = str(tmp_path_factory.mktemp("xp3_built"))
  return output_dir, build(xp3spec.load_spec(MINI_SPEC), output_dir, raw_dir)


def test_train_build_equals_the_hand_written_files(built):
  output_dir, result = built
  files = language_files(output_dir)
  assert_as_expected(files, os.path.join(DATA, "xp3_expected"), shuffled_merged=True)
  # 18 lines in en's per-template files, one pair of them equal (paws-x rows 2 and 3): 17 merged.
  assert result.languages == {"en": 18, "sw": 4, "ig": 12, "code": 8}
  assert result.merged == {"en": 17, "sw": 4, "ig": 12, "code": 8}
  merged_en = files["en/merged_en.jsonl"].splitlines()
  assert merged_en != sorted(merged_en)  # train mode shuffles the merged file
  counts = {c.path: c for c in result.files}
  paraphrase = counts["en/xp3_paws-x_en_train_paraphrase-task.jsonl"]
  assert (paraphrase.rows_read, paraphrase.dropped, paraphrase.written) == (4, {"blank render": 2}, 2)
  capped = counts["en/xp3_xquad_xquad.en_validation_xp3longchar.jsonl"]
  assert (capped.rows_read, capped.written, capped.capped) == (4, 2, True)
  rest = counts["sw/xp3_GEM_xlsum_swahili_train_xp3longrest.jsonl"]
  assert (rest.dropped, rest.written) == ({"empty targets": 2}, 1)
  # Rows with nothing left write no file, but are counted (boolq's hidden test labels: the template
  # guards `{% if label != -1 %}`, so the target renders empty).
  empty = {c.path: c.dropped for c in result.files if not c.written}
  assert empty == {"sw/xp3_GEM_xlsum_swahili_test_xp3longrest.jsonl": {"empty targets": 1},
                   "en/xp3_super_glue_boolq_test_I_wonder….jsonl": {"empty targets": 1}}
  report = json.loads(open(os.path.join(output_dir, "build_report.json"), encoding="utf-8").read())
  assert report["totals"]["files"] == 24 and report["totals"]["rows"] == 42
  assert report["totals"]["merged_lines"] == 41 and report["totals"]["dropped"] == 8
  assert "facebook/flores/aka_Latn-ibo_Latn" in json.dumps(report)  # the train/eval overlap


def test_validation_mode_builds_only_validation_splits(tmp_path, raw_dir):
  """Only datasets with a validation split and another one (not xquad, Flores); merged sorted."""
  spec = xp3spec.load_spec(MINI_SPEC, split_mode="validation")
  build(spec, str(tmp_path), raw_dir)
  assert_as_expected(language_files(str(tmp_path)), os.path.join(DATA, "xp3_expected_validation"),
                     shuffled_merged=False)


def test_xp3mt_mode_uses_the_translated_templates(tmp_path, raw_dir):
  spec = xp3spec.load_spec(XP3MT_SPEC, prompt_language="native")
  assert spec.units[0].prompt_subset == "swahili"
  build(spec, str(tmp_path), raw_dir, templates=XP3MT)
  assert_as_expected(language_files(str(tmp_path)), os.path.join(DATA, "xp3mt_expected"),
                     shuffled_merged=True)


def test_a_heldout_set_is_built_only_when_asked(tmp_path, raw_dir, built):
  with open(MINI_SPEC, encoding="utf-8") as f:
    data = yaml.safe_load(f)
  data["units"].append(HELDOUT_UNIT)
  spec_path = str(tmp_path / "with_xnli.yaml")
  with open(spec_path, "w", encoding="utf-8") as f:
    yaml.safe_dump(data, f, allow_unicode=True)
  with pytest.raises(UserError, match="held-out"):
    xp3spec.load_spec(spec_path)
  # The mini spec itself has no held-out unit, so its build (fixture `built`) has no xnli file.
  assert not any("xnli" in name for name in language_files(built[0]))
  build(xp3spec.load_spec(spec_path, include_heldout=True), str(tmp_path / "out"), raw_dir)
  # The extra files are exactly the held-out ones; merged_en.jsonl holds their lines too.
  heldout = language_files(os.path.join(DATA, "xp3_expected_heldout"))
  expected = language_files(os.path.join(DATA, "xp3_expected"))
  lines = set(expected["en/merged_en.jsonl"].splitlines(keepends=True))
  lines |= {line for data in heldout.values() for line in data.splitlines(keepends=True)}
  expected.update(heldout, **{"en/merged_en.jsonl": b"".join(sorted(lines))})
  assert_as_expected(language_files(str(tmp_path / "out")), expected, shuffled_merged=True)


def test_a_template_the_tree_lacks_is_an_error(tmp_path, raw_dir):
  spec_path = tmp_path / "typo.yaml"
  spec_path.write_text('units: [{dataset: paws-x, subset: en, templates: ["PAWS-ANLI GPT-3"]}]\n')
  with pytest.raises(UserError, match="PAWS-ANLI GPT-3"):
    build(xp3spec.load_spec(str(spec_path)), str(tmp_path / "out"), raw_dir)


def test_same_seed_gives_identical_bytes(tmp_path, raw_dir, built):
  """Again, by the command with two worker processes: identical. Seed 1: the same per-template files
  (no cap cuts a split of more than 5 x cap rows), merged files in another order."""
  output_dir, _ = built
  reference = language_files(output_dir)
  cli(*build_args(raw_dir, str(tmp_path / "again")), "--workers=2")
  assert language_files(str(tmp_path / "again")) == reference
  build(xp3spec.load_spec(MINI_SPEC), str(tmp_path / "seed1"), raw_dir, seed=1)
  other = language_files(str(tmp_path / "seed1"))
  assert sorted(other) == sorted(reference)
  for name, data in reference.items():
    if "merged_" not in name:
      assert other[name] == data, name
    else:
      assert sorted(other[name].splitlines()) == sorted(data.splitlines()), name
  assert other["en/merged_en.jsonl"] != reference["en/merged_en.jsonl"]


def test_a_build_that_failed_midway_reruns_to_identical_bytes(tmp_path, raw_dir, built):
  """The command stops on a damaged parquet file (mbpp's test split) after the jobs before it
  finished (one worker: the spec's order); the rerun with the file repaired skips those jobs and
  ends with the bytes of the unbroken build. (A kill inside a job: the next test.)"""
  data = str(tmp_path / "raw")
  shutil.copytree(raw_dir, data)
  damaged = os.path.join(data, "Muennighoff", "mbpp", "sanitized", "test-00000-of-00001.parquet")
  with open(damaged, "rb") as f:
    good = f.read()
  with open(damaged, "wb") as f:
    f.write(good[:len(good) // 2])
  output_dir = str(tmp_path / "out")
  failed = cli(*build_args(data, output_dir), "--workers=1", check=False)
  assert failed.returncode != 0 and "cannot be read as parquet" in failed.stdout, failed.stdout
  finished = len(os.listdir(os.path.join(output_dir, ".build")))
  assert 7 <= finished < 12  # paws-x 2, xquad 1, xlsum 2, flores 2 (+ mbpp's splits before test)
  assert not os.path.exists(os.path.join(output_dir, "en", "merged_en.jsonl"))
  with open(damaged, "wb") as f:
    f.write(good)
  result = build(xp3spec.load_spec(MINI_SPEC), output_dir, data)
  assert (result.jobs, result.jobs_skipped) == (12, finished)
  assert language_files(output_dir) == language_files(built[0])


def test_a_job_killed_between_its_files_is_redone(tmp_path, raw_dir, built):
  """A kill inside a job leaves some of its files and no marker; merged files come last."""
  output_dir = str(tmp_path / "out")
  shutil.copytree(built[0], output_dir)
  lost = "ig/xp3_facebook_flores_aka_Latn-ibo_Latn_dev_prev-aka_Latn-ibo_Latn.jsonl"
  markers = os.path.join(output_dir, ".build")
  owners = []
  for name in os.listdir(markers):
    with open(os.path.join(markers, name), encoding="utf-8") as f:
      if any(entry["path"] == lost for entry in json.load(f)["files"]):
        owners.append(name)
  assert len(owners) == 1, os.listdir(markers)
  os.remove(os.path.join(markers, owners[0]))
  os.remove(os.path.join(output_dir, lost))
  for lang in ("en", "ig"):
    os.remove(os.path.join(output_dir, lang, f"merged_{lang}.jsonl"))
  result = build(xp3spec.load_spec(MINI_SPEC), output_dir, raw_dir)
  assert (result.jobs, result.jobs_skipped) == (12, 11)
  assert language_files(output_dir) == language_files(built[0])


def test_output_on_a_bucket_equals_the_local_build(gcs_bucket, tmp_path, raw_dir, built):
  """Raw data read from the bucket and the output written there: the same bytes as on disk."""
  remote_raw, remote_out = f"{gcs_bucket}/xp3_raw", f"{gcs_bucket}/xp3_mini"
  paths.upload(raw_dir, remote_raw)
  build(xp3spec.load_spec(MINI_SPEC), remote_out, remote_raw)
  paths.copy_to_local(remote_out, str(tmp_path / "download"))
  assert language_files(str(tmp_path / "download")) == language_files(built[0])
  assert paths.exists(f"{remote_out}/build_report.json")


def test_check_passes_on_the_build_and_fails_on_a_damaged_copy(tmp_path, built):
  """Without the raw data a template counts as present when a file of any split exists."""
  output_dir, _ = built
  check = [f"--spec={MINI_SPEC}", f"--templates={TR13}"]
  passed = cli(f"--check={output_dir}", *check)
  assert "24 files, 42 rows; 0 missing, 0 unexpected, 0 malformed lines" in passed.stdout, (
      passed.stdout)
  damaged = str(tmp_path / "damaged")
  shutil.copytree(output_dir, damaged)
  flores = os.path.join(damaged, "ig",
                        "xp3_facebook_flores_aka_Latn-ibo_Latn_dev_ab-aka_Latn-ibo_Latn.jsonl")
  with open(flores, "rb") as f:
    lines = f.read().splitlines(keepends=True)
  with open(flores, "wb") as f:
    f.write(b"".join(lines[:2]) + b'{"inputs":"no targets"}\n')  # still 3 lines, one malformed
  for split in ("train", "test", "prompt"):  # every file of one template
    os.remove(os.path.join(damaged, "code", f"xp3_Muennighoff_mbpp_sanitized_{split}_function_solved.jsonl"))
  shutil.copyfile(os.path.join(damaged, "en", "xp3_paws-x_en_test_paraphrase-task.jsonl"),
                  os.path.join(damaged, "en", "xp3_paws-x_en_test_Meaning.jsonl"))  # not in the spec
  failed = cli(f"--check={damaged}", *check, check=False)
  assert failed.returncode != 0
  assert "22 files, 39 rows; 1 missing, 1 unexpected, 1 malformed lines" in failed.stdout, failed.stdout
  assert "code/xp3_Muennighoff_mbpp_sanitized_*_function_solved.jsonl" in failed.stdout
  assert "en/xp3_paws-x_en_test_Meaning.jsonl" in failed.stdout
  assert "xp3_facebook_flores_aka_Latn-ibo_Latn_dev_ab-aka_Latn-ibo_Latn.jsonl:3" in failed.stdout


def test_check_with_the_raw_data_passes_on_the_build(built, raw_dir):
  output_dir, _ = built
  passed = cli(f"--check={output_dir}", f"--spec={MINI_SPEC}", f"--templates={TR13}",
               f"--data_dir={raw_dir}", check=False)
  assert passed.returncode == 0, passed.stdout


def test_build_then_train_three_steps_then_data_report(tmp_path, raw_dir, data_spm_path):
  """The command's output is an `xp3` mixture as it stands: train 3 steps on it, then report it."""
  output_dir = str(tmp_path / "xp3")
  cli(*build_args(raw_dir, output_dir), "--workers=2")
  env = {**os.environ, "PYTHONPATH": REPO_ROOT, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  data_flags = [f"--gin.XP3_DATA_DIR='{output_dir}'", f"--gin.VOCABULARY_PATH='{data_spm_path}'",
                "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 16}"]
  model_dir = str(tmp_path / "run")
  train = subprocess.run(
      [sys.executable, "-m", "xmtf_jax.train", "--gin_file=gin/models/mt5_tiny.gin",
       "--gin_file=gin/runs/pretrain.gin", "--gin_file=gin/mixtures/xp3.gin", *data_flags,
       f"--gin.MODEL_DIR='{model_dir}'", "--gin.VOCAB_SIZE=512", "--gin.TRAIN_STEPS=3",
       "--gin.CHECKPOINT_PERIOD=3", "--gin.LOG_PERIOD=1", "--gin.EVAL_BATCHES=0",
       "--gin.BATCH_SIZE=4", "--gin.T5Config.num_encoder_layers=1",
       "--gin.T5Config.num_decoder_layers=1"],
      cwd=REPO_ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      timeout=600)
  assert train.returncode == 0, train.stdout[-5000:]
  from xmtf_jax.train import reporting
  losses = {r["step"]: r["loss"] for r in reporting.read_metrics(model_dir, "train")}
  assert sorted(losses) == [1, 2, 3] and all(0 < v < 100 for v in losses.values()), losses
  report_dir = str(tmp_path / "report")
  report = subprocess.run(
      [sys.executable, "-m", "xmtf_jax.data_report", "--gin_file=gin/mixtures/xp3.gin", *data_flags,
       f"--gin.DATA_REPORT_DIR='{report_dir}'", "--gin.DATA_REPORT_MAX_EXAMPLES=None"],
      cwd=REPO_ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      timeout=600)
  assert report.returncode == 0, report.stdout[-5000:]
  rows = json.loads(open(os.path.join(report_dir, "report.json"), encoding="utf-8").read())["tasks"]
  in_files = {r["language"]: r["examples_in_files"] for r in rows if r["task"].count(".") == 0}
  # en: its per-template files but xquad's (named *_validation_*, the layout's validation split);
  # the other folders: their merged files.
  assert in_files == {"en": 14, "sw": 4, "ig": 12, "code": 8}, rows
