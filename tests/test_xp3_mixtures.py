"""The xP3 family's layouts load as seqio tasks/mixtures; counts and the three rate schemes match hand
computations; registration is lazy and follows gin / the environment."""
import json
import logging
import math
import os

import gin
import pytest
import seqio

import mixtures
from mixtures import xp3
from xmtf_jax.data import tasks as data_tasks
from tests import data_fixtures
from xmtf_jax.data import line_counts
from xmtf_jax.data import mixing_rates
from xmtf_jax.data import xp3_layouts


def read(task_name, split):
  """(inputs, targets) strings of a task's split, in file order, untrimmed."""
  task = seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1)
  return [(ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode())
          for ex in ds.as_numpy_iterator()]


def as_pairs(records):
  return sorted((r["inputs"], r["targets"]) for r in records)


def test_xp3_layout_tasks_read_exactly_the_expected_records(xp3_fixture):
  expected = xp3_fixture["expected"]
  info = xp3_fixture["info"]
  assert info.task_languages == {f"fx_xp3_{l}": l for l in ["ar", "code", "en", "hi", "zh"]}
  mixture = seqio.get_mixture_or_task("fx_xp3")
  assert sorted(t.name for t in mixture.tasks) == sorted(info.task_languages)
  for lang, splits in expected.items():
    task = seqio.get_mixture_or_task(f"fx_xp3_{lang}")
    assert sorted(task.splits) == sorted(splits)
    for split, records in splits.items():
      # en trains on its 12 per-prompt train lines: not merged_en.jsonl (15, with the 3 validation
      # lines), and never both
      assert sorted(read(f"fx_xp3_{lang}", split)) == as_pairs(records), (lang, split)
  # One task per per-prompt file, named after the file (hyphens made safe).
  assert info.prompt_tasks["fx_xp3_en"] == [
      "fx_xp3_en.glue_mrpc_train_same_meaning",
      "fx_xp3_en.paws_labeled_final_train_task_description_no_label",
      "fx_xp3_en.paws_labeled_final_validation_task_description_no_label"]
  assert info.prompt_tasks["fx_xp3_code"] == []  # merged file only
  assert len(read("fx_xp3_en.glue_mrpc_train_same_meaning", "train")) == 7
  assert read("fx_xp3_en.paws_labeled_final_validation_task_description_no_label",
              "validation") == [(r["inputs"], r["targets"]) for r in expected["en"]["validation"]]


def test_xp3_validation_split_is_disjoint_from_training(xp3_fixture):
  """xP3's merged_{lang}.jsonl holds every line of the folder, validation included (facts §4)."""
  for lang in ("en", "hi"):
    train = set(read(f"fx_xp3_{lang}", "train"))
    validation = set(read(f"fx_xp3_{lang}", "validation"))
    assert len(validation) > 0 and len(train) > 0 and not train & validation, lang
  with open(os.path.join(xp3_fixture["root"], "en/merged_en.jsonl")) as f:
    merged = {(r["inputs"], r["targets"]) for r in map(json.loads, f)}
  assert len(merged) == 15 and set(read("fx_xp3_en", "validation")) < merged
  assert len(read("fx_xp3_en", "train")) == 12


def test_merged_file_with_validation_but_no_train_files_warns(tmp_path, caplog):
  root = tmp_path / "xp3"
  val = [data_fixtures.record("en", i, "[val] ") for i in range(2)]
  data_fixtures.write_jsonl(str(root / "sw/merged_sw.jsonl"), val + [data_fixtures.record("en", 9)])
  data_fixtures.write_jsonl(str(root / "sw/xp3_x_y_validation_t.jsonl"), val)
  with caplog.at_level(logging.WARNING):
    (sw,) = xp3_layouts.scan(str(root), "xp3").languages
  assert sw.train == (f"{root}/sw/merged_sw.jsonl",)
  assert sw.validation == (f"{root}/sw/xp3_x_y_validation_t.jsonl",)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and "validation overlaps training" in warnings[0]
  # Without validation files the merged file is the train split, silently.
  (root / "sw/xp3_x_y_validation_t.jsonl").unlink()
  caplog.clear()
  (sw,) = xp3_layouts.scan(str(root), "xp3").languages
  assert sw.train == (f"{root}/sw/merged_sw.jsonl",) and sw.validation == ()
  assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_non_latin_and_code_round_trip_through_the_vocabulary(xp3_fixture, data_spm_path):
  vocab = mixtures.vocabulary(data_spm_path)
  for lang in ("zh", "hi", "code", "ar"):
    task = seqio.get_mixture_or_task(f"fx_xp3_{lang}")
    ex = next(task.get_dataset(sequence_length=None, split="train", shuffle=False,
                               num_epochs=1).as_numpy_iterator())
    assert vocab.decode(ex["inputs"].tolist()) == ex["inputs_pretokenized"].decode()
    assert ex["targets"][-1] == 1 and 1 not in ex["inputs"]  # EOS on targets only


def test_counts_per_task_and_cache(xp3_fixture):
  info = xp3_fixture["info"]
  assert info.sizes("train") == {f"fx_xp3_{l}": n for l, n in data_fixtures.EXPECTED_XP3_TRAIN.items()}
  assert info.sizes("validation") == {"fx_xp3_en": 3, "fx_xp3_hi": 2, "fx_xp3_ar": 0,
                                      "fx_xp3_zh": 0, "fx_xp3_code": 0}
  assert seqio.get_mixture_or_task("fx_xp3_ar").num_input_examples("train") == 10
  # Cached next to the data (the fixture root is writable), keyed by relative path, with sizes.
  with open(os.path.join(xp3_fixture["root"], "counts.json")) as f:
    cached = json.load(f)["files"]
  assert cached["code/merged_code.jsonl"]["lines"] == 9
  assert cached["en/xp3_glue_mrpc_train_same-meaning.jsonl"]["bytes"] == os.path.getsize(
      os.path.join(xp3_fixture["root"], "en/xp3_glue_mrpc_train_same-meaning.jsonl"))


def test_counts_fall_back_to_a_local_cache_when_the_root_is_not_writable(tmp_path):
  root, cache = tmp_path / "data", tmp_path / "cache"
  data_fixtures.write_jsonl(str(root / "en/merged_en.jsonl"), [data_fixtures.record("en", 0)] * 4)
  (root / "counts.json").mkdir()  # makes writing counts.json next to the data fail
  counts = line_counts.LineCounts(str(root), str(cache))
  assert counts.total([str(root / "en/merged_en.jsonl")]) == 4
  cached = list(cache.iterdir())
  assert len(cached) == 1 and json.loads(cached[0].read_text())["files"]["en/merged_en.jsonl"]["lines"] == 4
  # A fresh reader uses the cache (and would recount if the file changed size).
  assert line_counts.LineCounts(str(root), str(cache)).counts([str(root / "en/merged_en.jsonl")]) == {
      str(root / "en/merged_en.jsonl"): 4}


def test_count_lines_handles_a_missing_final_newline(tmp_path):
  path = tmp_path / "x.jsonl"
  path.write_bytes(b'{"a": 1}\n{"a": 2}')
  assert line_counts.count_lines(str(path)) == 2


HAND_RATES = {
    # sizes en 12, ar 10, zh 3, hi 8, code 9 (total 42)
    "proportional": {"en": 12 / 42, "ar": 10 / 42, "zh": 3 / 42, "hi": 8 / 42, "code": 9 / 42},
    # capped at 9: 9 + 9 + 3 + 8 + 9 = 38
    "capped": {"en": 9 / 38, "ar": 9 / 38, "zh": 3 / 38, "hi": 8 / 38, "code": 9 / 38},
    # T = 2: sqrt of the sizes, normalised
    "temperature": {l: math.sqrt(n) / (math.sqrt(12) + math.sqrt(10) + math.sqrt(3) + math.sqrt(8) + 3)
                    for l, n in {"en": 12, "ar": 10, "zh": 3, "hi": 8, "code": 9}.items()},
    # BLOOMZ weights of the five languages, renormalised (sum 0.5957)
    "bloomz": {"en": 0.3925 / 0.5957, "ar": 0.0493 / 0.5957, "zh": 0.0483 / 0.5957,
               "hi": 0.0463 / 0.5957, "code": 0.0593 / 0.5957},
}
SCHEMES = {
    "proportional": dict(mixing_scheme="examples_proportional"),
    "capped": dict(mixing_scheme="examples_proportional", mixing_cap=9),
    "temperature": dict(mixing_scheme="temperature", mixing_temperature=2.0),
    "bloomz": dict(mixing_scheme="explicit", mixing_weights="bloomz"),
}


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_mixing_rates_match_hand_computation(xp3_fixture, scheme, data_spm_path):
  config = mixtures.DataConfig(vocabulary_path=data_spm_path, **SCHEMES[scheme])
  name = f"fx_rates_{scheme}"
  info = mixtures.register_variant("xp3", config, data_dir=xp3_fixture["root"], name=name,
                                   overwrite=True)
  expected = {f"{name}_{l}": r for l, r in HAND_RATES[scheme].items()}
  assert info.rates() == pytest.approx(expected, rel=1e-9)
  mixture = seqio.get_mixture_or_task(name)  # seqio sees the same (normalised) rates
  assert {t.name: mixture.get_rate(t) for t in mixture.tasks} == pytest.approx(expected, rel=1e-9)
  assert mixtures.language_rates(name) == pytest.approx(HAND_RATES[scheme], rel=1e-9)


def test_explicit_weights_name_the_languages_they_lack():
  with pytest.raises(ValueError, match=r"no entry for languages \['eng_Latn'\]"):
    mixing_rates.explicit_weights({"t": "eng_Latn", "u": "en"}, "bloomz")
  # the 46 published values sum to 1.0134 (the source rounds the total to 1.0137)
  assert sum(mixing_rates.BLOOMZ_LANGUAGE_WEIGHTS.values()) == pytest.approx(1.0134, abs=1e-9)
  assert len(mixing_rates.BLOOMZ_LANGUAGE_WEIGHTS) == 46


def test_xp3x_layout(xp3x_fixture):
  expected = xp3x_fixture["expected"]
  info = xp3x_fixture["info"]
  assert info.sizes() == {f"fx_xp3x_{k}": v for k, v in data_fixtures.EXPECTED_XP3X_TRAIN.items()}
  for code, splits in expected.items():
    name = "fx_xp3x_" + code.replace("-", "_")
    assert sorted(read(name, "train")) == as_pairs(splits["train"])
  # file names with '?' and ',' (as in xP3x) become their own tasks too
  assert "fx_xp3x_eng_Latn.imdb_plain_text_train_Reviewer_Enjoyment_" in info.prompt_tasks["fx_xp3x_eng_Latn"]


def test_xp3x_paths_json_listing_a_missing_file(tmp_path, data_spm_path):
  root = str(tmp_path)
  data_fixtures.make_xp3x(root)
  os.remove(f"{root}/data/python/xp3x_codeparrot_apps_all_train_solve.jsonl")
  config = mixtures.DataConfig(vocabulary_path=data_spm_path)
  with pytest.raises(xp3.xp3_layouts.jsonl_source.BadDataError,
                     match=r"paths.json lists .*data/python/xp3x_codeparrot_apps_all_train_solve.jsonl"):
    mixtures.register_variant("xp3x", config, data_dir=root, name="fx_missing", overwrite=True)


def test_p3_layout_reads_the_zip(p3_fixture):
  expected = p3_fixture["expected"]["en"]
  assert sorted(read("fx_p3_en", "train")) == as_pairs(expected["train"])
  assert sorted(read("fx_p3_en", "validation")) == as_pairs(expected["validation"])
  assert p3_fixture["info"].sizes() == {"fx_p3_en": 11}


def test_registration_is_explicit_and_follows_the_environment(xp3_fixture, monkeypatch):
  assert "xp3mt" not in seqio.MixtureRegistry.names()  # import mixtures registered no family member
  monkeypatch.setenv("XP3_DATA_DIR", xp3_fixture["root"])
  mixtures.register_for("xp3mt_zh")
  task = seqio.get_mixture_or_task("xp3mt_zh")  # seqio's own lookup finds it
  assert task.name == "xp3mt_zh" and "xp3mt" in seqio.MixtureRegistry.names()
  assert "xp3" not in seqio.MixtureRegistry.names()  # only the variant asked for


def test_registration_follows_gin(xp3x_fixture):
  from xmtf_jax.cli import gin_flags, runtime
  gin.clear_config()
  try:
    gin_flags.parse_gin(["--gin_file=gin/mixtures/xp3x.gin",
                         f"--gin.XP3_DATA_DIR='{xp3x_fixture['root']}'",
                         "--gin.MIXING_RATE='temperature'", "--gin.MIXING_TEMPERATURE=2.0"])
    assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "xp3x"
    runtime.register_tasks("xp3x")
    info = mixtures.mixture_info("xp3x")
    assert info.root == xp3x_fixture["root"]
    sizes = data_fixtures.EXPECTED_XP3X_TRAIN
    norm = sum(math.sqrt(n) for n in sizes.values())
    assert info.rates() == pytest.approx({f"xp3x_{k}": math.sqrt(n) / norm for k, n in sizes.items()})
  finally:
    gin.clear_config()


def test_missing_data_root_says_how_to_set_it(monkeypatch):
  monkeypatch.delenv("XP3_DATA_DIR", raising=False)
  with pytest.raises(ValueError, match="XP3_DATA_DIR"):
    mixtures.DataConfig().root_for("p3")
  with pytest.raises(xp3.xp3_layouts.jsonl_source.BadDataError, match="does not exist"):
    xp3.xp3_layouts.scan("/nonexistent/xp3")


def test_user_task_next_to_a_family_mixture(xp3_fixture, data_spm_path, tmp_path):
  # the README's example: a task of one's own mixed with xP3 at 10%
  path = str(tmp_path / "my_qa" / "train.jsonl")
  data_fixtures.write_jsonl(path, [{"inputs": f"Swali {i}?", "targets": f"Jibu {i}"} for i in range(6)])
  mixtures.add_jsonl_task("my_qa_sw", {"train": [path]}, vocab=mixtures.vocabulary(data_spm_path),
                          overwrite=True)
  mixture = mixtures.add_mixture("fx_xp3_plus_my_qa", [("fx_xp3", 0.9), ("my_qa_sw", 0.1)],
                                 overwrite=True)
  rates = {t.name: mixture.get_rate(t) / mixture.total_rate for t in mixture.tasks}
  expected = {f"fx_xp3_{l}": 0.9 * r for l, r in HAND_RATES["proportional"].items()}
  assert rates == pytest.approx(dict(expected, my_qa_sw=0.1))
  assert len(read("my_qa_sw", "train")) == 6


def test_a_non_local_filesystem_works_like_a_bucket(xp3_fixture, data_spm_path):
  # fsspec's in-memory filesystem stands in for gs:// (everything goes through xmtf_jax.paths; the
  # GCS emulator run is tests/test_gcs_end_to_end.py).
  from xmtf_jax import paths
  local = xp3_fixture["root"]
  remote = "memory://bucket/xP3"
  paths.upload(local, remote)
  if paths.exists(remote + "/counts.json"):
    paths.remove(remote + "/counts.json")
  config = mixtures.DataConfig(vocabulary_path=data_spm_path)
  info = mixtures.register_variant("xp3", config, data_dir=remote, name="fx_ram", overwrite=True)
  assert info.sizes() == {f"fx_ram_{l}": n for l, n in data_fixtures.EXPECTED_XP3_TRAIN.items()}
  assert paths.exists(remote + "/counts.json")
  assert sorted(read("fx_ram_zh", "train")) == as_pairs(xp3_fixture["expected"]["zh"]["train"])
  # A file list may name files by pattern.
  source = data_tasks.JsonlDataSource("fx_glob", {"train": [remote + "/*/merged_*.jsonl"]})
  assert source.files("train") == (remote + "/code/merged_code.jsonl", remote + "/en/merged_en.jsonl")


def test_unknown_names_get_suggestions():
  with pytest.raises(ValueError, match=r"no seqio task or mixture named 'demo_heldot'; did you mean \['demo_heldout'"):
    data_tasks.get_mixture_or_task("demo_heldot")


def test_eos_on_inputs_is_configurable(xp3_fixture, data_spm_path):
  config = mixtures.DataConfig(vocabulary_path=data_spm_path, add_eos_to_inputs=True)
  mixtures.register_variant("xp3", config, data_dir=xp3_fixture["root"], name="fx_eos", overwrite=True)
  task = seqio.get_mixture_or_task("fx_eos_zh")
  for ex in task.get_dataset({"inputs": 8, "targets": 4}, split="train", shuffle=False,
                             num_epochs=1).as_numpy_iterator():
    assert len(ex["inputs"]) == 8 and ex["inputs"][-1] == 1  # trimmed, EOS kept last
    assert len(ex["targets"]) <= 4 and ex["targets"][-1] == 1
