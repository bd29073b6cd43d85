"""Bad data never passes silently: strict mode names file and line, lenient mode skips and counts."""
import json
import os

import pytest
import tensorflow as tf

import mixtures
from tests import data_fixtures
from xmtf_jax.data import pipeline as input_pipeline
from xmtf_jax.data import jsonl_source, stats
from xmtf_jax.data import xp3_layouts
from xmtf_jax.data.jsonl_source import BadDataError, JsonlDataSource

# (bad line, reason counted in lenient mode, what the strict error says)
BAD_LINES = {
    "malformed_json": (b'{"inputs": "a", "targets": ', "malformed_json", "malformed JSON"),
    "blank_line": (b"", "malformed_json", "malformed JSON: empty line"),
    "not_an_object": (b'["inputs", "targets"]', "not_an_object", "expected a JSON object, got an array"),
    "missing_field": (b'{"inputs": "a"}', "missing_field", "missing field 'targets'"),
    "non_string_field": (b'{"inputs": 3, "targets": "b"}', "non_string_field",
                         "field 'inputs' must be a string, got a number"),
    "null_field": (b'{"inputs": "a", "targets": null}', "non_string_field",
                   "field 'targets' must be a string, got null"),
    "empty_target": (b'{"inputs": "a", "targets": " "}', "empty_target", "field 'targets' is empty"),
    "invalid_utf8": (b'{"inputs": "caf\xe9", "targets": "b"}', "invalid_utf8", "invalid UTF-8 at byte 15"),
    "lone_surrogate": (b'{"inputs": "\\ud800", "targets": "b"}', "invalid_utf8", "unpaired surrogate"),
}


def write_with_bad_line(path, bad_line):
  """Lines 1-3 and 5 are good; line 4 is `bad_line`."""
  good = [data_fixtures.record("en", i) for i in range(4)]
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    for i, r in enumerate(good):
      if i == 3:
        f.write(bad_line + b"\n")
      f.write(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n")
  return good


def read_all(source, split="train", sink=None):
  """Every record of `source`'s split; lenient skips are counted in `sink` (a DataStats)."""
  try:
    with stats.collecting(sink):
      ds = source.get_dataset(split, shuffle=False)
    return list(ds.as_numpy_iterator())
  except tf.errors.OpError as e:
    raise jsonl_source.unwrap_tf_error(e) from None


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_strict_mode_names_file_and_line(tmp_path, kind):
  line, _, message = BAD_LINES[kind]
  path = str(tmp_path / "en" / "xp3_test_train_prompt.jsonl")
  write_with_bad_line(path, line)
  source = JsonlDataSource(f"strict_{kind}", {"train": [path]}, strict=True)
  with pytest.raises(BadDataError) as error:
    read_all(source)
  text = str(error.value)
  assert text.startswith(f"{path}, line 4: ") and message in text
  assert "DATA_STRICT = False" in text  # says what to do


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_lenient_mode_skips_and_counts(tmp_path, kind):
  line, reason, _ = BAD_LINES[kind]
  path = str(tmp_path / "xp3_test_train_prompt.jsonl")
  good = write_with_bad_line(path, line)
  name = f"lenient_{kind}"
  source = JsonlDataSource(name, {"train": [path]}, strict=False)
  sink = stats.DataStats("train")
  examples = read_all(source, sink=sink)
  assert [e["inputs"].decode() for e in examples] == [r["inputs"] for r in good]
  assert sink.bad_lines.counts(name) == {reason: 1}
  assert sink.bad_lines.examples(name) == [f"{path}:4 ({reason})"]
  read_all(source, sink=sink)  # a second epoch does not count the same line twice
  assert sink.bad_lines.counts(name) == {reason: 1}


def test_answer_choices_are_checked(tmp_path):
  schema = mixtures.demo.HELDOUT_SCHEMA
  path = str(tmp_path / "heldout.jsonl")
  meta = {"dataset": "d", "language": "en", "template": "t"}
  data_fixtures.write_jsonl(path, [
      dict(inputs="q1", targets="a", answer_choices=["a", "b"], **meta),
      dict(inputs="q2", targets="c", answer_choices=["a", "b"], **meta),   # gold not a choice
      dict(inputs="q3", targets="a", answer_choices=[], **meta),           # no choices
      dict(inputs="q4", targets="a", answer_choices=["a", 2], **meta),     # non-string choice
  ])
  with pytest.raises(BadDataError, match=r"line 2: targets 'c' is not one of answer_choices"):
    read_all(JsonlDataSource("choices_strict", {"train": [path]}, schema=schema))
  sink = stats.DataStats("train")
  examples = read_all(JsonlDataSource("choices_lenient", {"train": [path]}, schema=schema,
                                      strict=False), sink=sink)
  assert [e["inputs"] for e in examples] == [b"q1"]
  assert list(examples[0]["answer_choices"]) == [b"a", b"b"]
  assert sink.bad_lines.counts("choices_lenient") == {"bad_answer_choices": 3}


def test_strict_error_surfaces_unwrapped_from_the_batch_iterator(tmp_path, data_spm_path):
  root = tmp_path / "xp3"
  write_with_bad_line(str(root / "en" / "merged_en.jsonl"), BAD_LINES["missing_field"][0])
  for strict in (True, False):
    config = mixtures.DataConfig(vocabulary_path=data_spm_path, strict=strict,
                                 line_counts_cache_dir=str(tmp_path / "counts"))
    name = f"fx_bad_{strict}"
    mixtures.register_variant("xp3", config, data_dir=str(root), name=name, overwrite=True)
    it = input_pipeline.make_batch_iterator(name, {"inputs": 32, "targets": 16}, "train", 2,
                                            shuffle=False, repeat=False, shard_index=0, num_shards=1)
    if strict:
      with pytest.raises(BadDataError, match=r"merged_en.jsonl, line 4: missing field 'targets'"):
        list(it)
    else:
      batches = list(it)
      assert sum(int((b["decoder_loss_weights"].sum(1) > 0).sum()) for b in batches) == 4
      assert it.stats()["bad_lines"][f"{name}_en"] == {"missing_field": 1}


def test_empty_and_missing_language_folders(tmp_path, data_spm_path):
  root = tmp_path / "xp3"
  data_fixtures.write_jsonl(str(root / "en" / "merged_en.jsonl"), [data_fixtures.record("en", 0)])
  (root / "sw").mkdir()  # empty language folder
  with pytest.raises(BadDataError, match=r"language folder .*/sw holds no .jsonl files"):
    xp3_layouts.scan(str(root), "xp3")
  with pytest.raises(BadDataError, match=r"language folder .*/fr is missing"):
    xp3_layouts.scan(str(root), "xp3", languages=["en", "fr"], strict=True)
  layout = xp3_layouts.scan(str(root), "xp3", languages=["en", "fr", "sw"], strict=False,
                            source="fx_folders")
  assert [l.language for l in layout.languages] == ["en"]
  assert layout.problems.counts("fx_folders") == {"missing_folder": 1, "empty_folder": 1}
  (root / "en" / "merged_en.jsonl").unlink()
  with pytest.raises(BadDataError, match="no usable language folders"):
    xp3_layouts.scan(str(root), "xp3", strict=False, source="fx_folders2")



def _tiny_task(name, files, vocab_path, **kw):
  from xmtf_jax.data import tasks
  return tasks.add_jsonl_task(name, {"train": files}, vocab=tasks.vocabulary(vocab_path),
                              overwrite=True, **kw)


def _first_batch(name, with_source=False):
  from xmtf_jax.data import pipeline
  it = pipeline.make_batch_iterator(name, {"inputs": 16, "targets": 8}, "train", 2, shuffle=False,
                                    seed=0, shard_index=0, num_shards=1, repeat=True)
  return (next(it), it) if with_source else next(it)


def test_missing_files_and_empty_globs_name_the_task_and_split(tmp_path, data_spm_path):
  _tiny_task("t_missing_file", [str(tmp_path / "nope.jsonl")], data_spm_path, strict=True)
  with pytest.raises(jsonl_source.BadDataError,
                     match=r"task 't_missing_file', split 'train': data file .*nope.jsonl does not exist"):
    _first_batch("t_missing_file")
  _tiny_task("t_empty_glob", [str(tmp_path / "*.jsonl")], data_spm_path, strict=True)
  with pytest.raises(jsonl_source.BadDataError, match=r"\*.jsonl matches no file"):
    _first_batch("t_empty_glob")


def test_globs_expand_and_lenient_tasks_skip_missing_files(tmp_path, data_spm_path):
  for i in range(2):
    (tmp_path / f"part{i}.jsonl").write_text(json.dumps({"inputs": f"q{i}", "targets": f"a{i}"}) + "\n")
  _tiny_task("t_glob_ok", [str(tmp_path / "part*.jsonl"), str(tmp_path / "gone.jsonl")],
             data_spm_path, strict=False)
  batch, it = _first_batch("t_glob_ok", with_source=True)
  assert (batch["encoder_input_tokens"][:, 0] > 0).all()  # both rows come from the two parts
  assert it.stats()["bad_lines"] == {"t_glob_ok": {jsonl_source.MISSING_FILE: 1}}


def test_strict_none_follows_the_run_setting(tmp_path, data_spm_path):
  _tiny_task("t_follows", [str(tmp_path / "nope.jsonl"), str(tmp_path / "ok.jsonl")], data_spm_path)
  (tmp_path / "ok.jsonl").write_text(json.dumps({"inputs": "q", "targets": "a"}) + "\n")
  with pytest.raises(jsonl_source.BadDataError, match="does not exist"):
    _first_batch("t_follows")  # strict until a run says otherwise
  mixtures.register_for("t_follows", mixtures.DataConfig(strict=False))  # DATA_STRICT = False
  assert _first_batch("t_follows")["encoder_input_tokens"].shape == (2, 16)
  mixtures.register_for("t_follows", mixtures.DataConfig(strict=True))
  with pytest.raises(jsonl_source.BadDataError, match="does not exist"):
    _first_batch("t_follows")


def test_an_empty_task_or_mixture_member_is_named(tmp_path, data_spm_path):
  from xmtf_jax.data import tasks
  (tmp_path / "empty.jsonl").write_text("")
  _tiny_task("t_empty_task", [str(tmp_path / "empty.jsonl")], data_spm_path)
  with pytest.raises(ValueError, match=r"tasks with no examples in split 'train': t_empty_task"):
    _first_batch("t_empty_task")
  (tmp_path / "one.jsonl").write_text(json.dumps({"inputs": "q", "targets": "a"}) + "\n")
  _tiny_task("t_one_line", [str(tmp_path / "one.jsonl")], data_spm_path)
  tasks.add_mixture("t_mix_with_empty", [("t_one_line", 1.0), ("t_empty_task", 1.0)], overwrite=True)
  with pytest.raises(ValueError, match=r"no examples in split 'train': t_empty_task"):
    _first_batch("t_mix_with_empty")
