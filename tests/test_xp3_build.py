"""The xP3 builder's own contract on a tiny spec, with in-test stand-ins for the raw data, the
templates, routing and rendering (their real versions have their own tests; the end-to-end
acceptance against real template trees is tests/test_xp3_fixtures*.py): deterministic bytes,
resumable after a kill, caps and sort order, merged files, the report and the checker.
"""
import dataclasses
import json
import os
import random
import types

import pytest

from xmtf_jax.prompts.xp3_render import Dropped, Rendered
from xmtf_jax.xp3build import build as xp3_build
from xmtf_jax.xp3build import check as xp3_check
from xmtf_jax.xp3build import files as xp3_files
from xmtf_jax.xp3build import report as xp3_report


@dataclasses.dataclass(frozen=True)
class Unit:
  dataset: str
  subset: object
  prompt_dataset: str
  prompt_subset: object
  templates: object
  cap: int


@dataclasses.dataclass(frozen=True)
class Spec:
  name: str
  units: tuple
  split_mode: str = "train"
  prompt_language: str = "english"
  include_heldout: bool = False


@dataclasses.dataclass(frozen=True)
class Template:
  name: str
  prefix: str


# 20 train rows (2 with empty text), 4 test rows, 3 validation rows; "qa" in English and French.
WORDS = ["kiwi", "apple", "fig", "banana", "lime", "date", "plum", "cherry", "grape", "melon", "", "pear",
         "mango", "olive", "peach", "", "quince", "lemon", "guava", "nut/s"]
RAW = {
    ("qa", "en"): {"train": [{"text": w, "label": f"L{i % 3}"} for i, w in enumerate(WORDS)],
                   "test": [{"text": w, "label": "T"} for w in ("b", "a", "d", "c")],
                   "validation": [{"text": w, "label": "V"} for w in ("z", "y", "x")]},
    ("qa", "fr"): {"train": [{"text": w, "label": "oui"} for w in ("chat", "chien", "\u00e9t\u00e9", "chat")]},
}
TEMPLATES = {("qa", "en"): [Template("plain", "Q:"), Template("same", "Q:"), Template("skipme", "S:")],
             ("qa", "bad"): [Template("broken", "B:"), Template("plain", "Q:")]}


class Raw:
  def __init__(self, unit):
    self.data = RAW[(unit.dataset, unit.subset)]

  def splits(self):
    return sorted(self.data)

  def num_rows(self, split):
    return len(self.data[split])

  def rows(self, split, indices=None):
    rows = self.data[split]
    return iter(rows if indices is None else [rows[i] for i in indices])


class Tree:
  def __init__(self, root):
    self.root = root

  def templates(self, dataset, subset):
    return list(TEMPLATES[(dataset, subset)])


def render(template, example, *, code, rng):
  if template.name == "broken" and example["text"] == "cherry":
    return Dropped("render error: TypeError", skips_template=True)
  if not example["text"]:
    return Dropped("empty inputs")
  return Rendered(f"{template.prefix} {example['text']}", example["label"])


def fake_spec_module(skip_test=True):
  def file_name(unit, split, name):
    return f"xp3_{unit.dataset}_{unit.subset}_{split}_{name}.jsonl".replace("/", "_").replace(" ", "_")

  def select_splits(unit, available, split_mode):
    if split_mode == "validation":
      return ["validation"] if "validation" in available and len(available) > 1 else []
    return [s for s in available if not (s == "validation" and len(available) > 1)]

  return types.SimpleNamespace(
      file_name=file_name, select_splits=select_splits,
      skip_template=lambda unit, split, name: skip_test and name == "skipme" and split == "test",
      flores_overlap=lambda spec: {"pairs": []})


@pytest.fixture
def fakes(monkeypatch):
  module = fake_spec_module()
  for target in (xp3_build, xp3_check):
    monkeypatch.setattr(target, "TemplateTree", Tree)
    monkeypatch.setattr(target, "open_raw", lambda data_dir, unit: Raw(unit))
    monkeypatch.setattr(target, "route", lambda unit, name: unit.subset)
    monkeypatch.setattr(target, "xp3spec", module)
  monkeypatch.setattr(xp3_report, "xp3spec", module)
  monkeypatch.setattr(xp3_build, "render_xp3", render)
  monkeypatch.setattr(xp3_build, "is_code", lambda lang: lang == "code")
  monkeypatch.setattr(xp3_build, "prepare", lambda unit, split, example, rng: example)


SPEC = Spec("tiny", (Unit("qa", "en", "qa", "en", None, 5), Unit("qa", "fr", "qa", "en", ("plain",), 100)))


def run(tmp_path, name, spec=SPEC, seed=0, workers=1):
  out = str(tmp_path / name)
  result = xp3_build.build(spec, templates_root="T", data_dir="D", output_dir=out, seed=seed,
                           workers=workers, print_fn=None)
  return out, result


def tree_bytes(folder):
  found = {}
  for root, _, names in os.walk(folder):
    for name in names:
      if not name.startswith("build_report"):
        path = os.path.join(root, name)
        found[os.path.relpath(path, folder)] = open(path, "rb").read()
  return found


def lines(path):
  return open(path, "rb").read().decode("utf-8").splitlines()


def test_files_caps_sort_order_and_counts(fakes, tmp_path):
  out, result = run(tmp_path, "a")
  en = os.path.join(out, "en")
  assert sorted(os.listdir(en)) == ["merged_en.jsonl", "xp3_qa_en_test_plain.jsonl", "xp3_qa_en_test_same.jsonl",
                                    "xp3_qa_en_train_plain.jsonl", "xp3_qa_en_train_same.jsonl",
                                    "xp3_qa_en_train_skipme.jsonl"]
  # cap 5 of 18 renderable rows (20 read: 5 x cap covers them all), the 5 smallest inputs in order
  assert lines(os.path.join(en, "xp3_qa_en_train_plain.jsonl")) == [
      '{"inputs":"Q: apple","targets":"L1"}', '{"inputs":"Q: banana","targets":"L0"}',
      '{"inputs":"Q: cherry","targets":"L1"}', '{"inputs":"Q: date","targets":"L2"}',
      '{"inputs":"Q: fig","targets":"L2"}']
  by_path = {c.path: c for c in result.files}
  plain = by_path["en/xp3_qa_en_train_plain.jsonl"]
  assert (plain.rows_read, plain.rendered, plain.written, plain.capped) == (20, 18, 5, True)
  assert plain.dropped == {"empty inputs": 2}
  test_file = by_path["en/xp3_qa_en_test_plain.jsonl"]
  assert (test_file.written, test_file.capped) == (4, False)
  assert result.skipped_templates == ["qa/en test skipme"]
  assert lines(os.path.join(out, "fr", "xp3_qa_fr_train_plain.jsonl")) == [
      '{"inputs":"Q: chat","targets":"oui"}', '{"inputs":"Q: chat","targets":"oui"}',
      '{"inputs":"Q: chien","targets":"oui"}', '{"inputs":"Q: été","targets":"oui"}']
  # "plain" and "same" render the same lines: merged keeps each once (5 train + 4 test + 5 skipme)
  merged = lines(os.path.join(en, "merged_en.jsonl"))
  assert len(merged) == len(set(merged)) == 14 and result.merged == {"en": 14, "fr": 3}
  assert result.languages == {"en": 5 + 5 + 4 + 4 + 5, "fr": 4}


def test_template_error_skips_the_file_as_the_original(fakes, tmp_path):
  out, result = run(tmp_path, "b", Spec("bad", (Unit("qa", "en", "qa", "bad", None, 5),)))
  by_path = {c.path: c for c in result.files}
  broken = by_path["en/xp3_qa_en_train_broken.jsonl"]  # "cherry" fails: the whole file is skipped
  assert (broken.failed, broken.written) == ("render error: TypeError", 0)
  assert by_path["en/xp3_qa_en_test_broken.jsonl"].written == 4 and by_path["en/xp3_qa_en_train_plain.jsonl"].written == 5
  assert not os.path.exists(os.path.join(out, "en", "xp3_qa_en_train_broken.jsonl"))
  report = json.load(open(os.path.join(out, "build_report.json")))
  assert report["failed_templates"] == {"en/xp3_qa_en_train_broken.jsonl": "render error: TypeError"}


def test_same_seed_same_bytes_other_seed_same_multiset(fakes, tmp_path):
  spec = Spec("big-cap", (Unit("qa", "en", "qa", "en", ("plain",), 1000),))
  a, _ = run(tmp_path, "a", spec, seed=1)
  b, _ = run(tmp_path, "b", spec, seed=1, workers=2)
  c, _ = run(tmp_path, "c", spec, seed=2)
  assert tree_bytes(a) == tree_bytes(b)
  merged = "en/merged_en.jsonl"
  a_bytes, c_bytes = tree_bytes(a), tree_bytes(c)
  assert a_bytes[merged] != c_bytes[merged]  # shuffled with the seed (22 lines: 1 in 22! alike)
  assert sorted(a_bytes[merged].splitlines()) == sorted(c_bytes[merged].splitlines())
  assert a_bytes["en/xp3_qa_en_train_plain.jsonl"] == c_bytes["en/xp3_qa_en_train_plain.jsonl"]


def test_validation_mode_merged_is_sorted(fakes, tmp_path):
  spec = dataclasses.replace(SPEC, split_mode="validation")
  out, result = run(tmp_path, "v", spec)
  assert result.merged == {"en": 6}  # "plain" and "same" alike, "skipme" (S:) apart
  assert lines(os.path.join(out, "en", "merged_en.jsonl")) == [
      '{"inputs":"Q: x","targets":"V"}', '{"inputs":"Q: y","targets":"V"}', '{"inputs":"Q: z","targets":"V"}',
      '{"inputs":"S: x","targets":"V"}', '{"inputs":"S: y","targets":"V"}', '{"inputs":"S: z","targets":"V"}']


def test_killed_build_reruns_to_identical_bytes(fakes, tmp_path, monkeypatch):
  clean, _ = run(tmp_path, "clean", workers=2)
  write_file, written = xp3_files.write_file, []

  def dies_after_one_file(path, data):
    if written:
      raise KeyboardInterrupt("killed")
    written.append(path)
    write_file(path, data)

  monkeypatch.setattr(xp3_files, "write_file", dies_after_one_file)
  killed = str(tmp_path / "killed")
  with pytest.raises(KeyboardInterrupt):
    xp3_build.build(SPEC, templates_root="T", data_dir="D", output_dir=killed, workers=1, print_fn=None)
  monkeypatch.setattr(xp3_files, "write_file", write_file)
  assert len(written) == 1 and not os.path.exists(os.path.join(killed, ".build"))
  open(os.path.join(killed, "en", "xp3_qa_en_train_same.jsonl.tmp-999"), "wb").write(b"half a li")
  _, result = run(tmp_path, "killed")
  assert result.jobs_skipped == 0 and tree_bytes(killed) == tree_bytes(clean)
  # a third run finds every marker: nothing is rebuilt, the result is the same
  _, again = run(tmp_path, "killed")
  assert (again.jobs, again.jobs_skipped, again.rows_read) == (3, 3, 0)
  assert again.languages == result.languages and tree_bytes(killed) == tree_bytes(clean)
  # another seed does not reuse the markers
  _, reseeded = run(tmp_path, "killed", seed=5)
  assert reseeded.jobs_skipped == 0


def test_report_numbers(fakes, tmp_path):
  out, _ = run(tmp_path, "r")
  for name in xp3_report.REPORT_FILES:
    assert os.path.getsize(os.path.join(out, name)) > 0
  report = json.load(open(os.path.join(out, "build_report.json")))
  assert report["languages"] == {"en": {"rows": 23, "merged_lines": 14}, "fr": {"rows": 4, "merged_lines": 3}}
  assert report["drops"] == {"empty inputs": 6}  # 2 empty rows x 3 train templates
  assert report["caps_hit"] == ["en/xp3_qa_en_train_plain.jsonl", "en/xp3_qa_en_train_same.jsonl",
                                "en/xp3_qa_en_train_skipme.jsonl"]
  assert report["datasets"] == {"qa/en": 23, "qa/fr": 4} and report["flores_overlap"] == {"pairs": []}
  assert "| en | 23 | 14 | - |" in open(os.path.join(out, "build_report.md")).read()
  assert open(os.path.join(out, "build_report.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_tokens_per_language_with_a_vocabulary(fakes, tmp_path):
  words = types.SimpleNamespace(encode=lambda text: text.split())
  out = str(tmp_path / "t")
  xp3_build.build(SPEC, templates_root="T", data_dir="D", output_dir=out, vocabulary=words, print_fn=None)
  report = json.load(open(os.path.join(out, "build_report.json")))
  assert report["languages"]["fr"]["tokens"] == {"inputs": 8, "targets": 4}


def test_check_finds_removed_file_and_malformed_line(fakes, tmp_path):
  out, _ = run(tmp_path, "c")
  clean = xp3_check.check(out, SPEC, templates_root="T", print_fn=None)
  assert clean.problems == 0 and clean.files["en/xp3_qa_en_train_plain.jsonl"] == 5
  exact = xp3_check.check(out, SPEC, templates_root="T", data_dir="D", print_fn=None)
  assert exact.problems == 0 and len(exact.files) == 6
  os.remove(os.path.join(out, "en", "xp3_qa_en_test_same.jsonl"))
  with open(os.path.join(out, "fr", "xp3_qa_fr_train_plain.jsonl"), "ab") as f:
    f.write(b'{"inputs":"x"}\n')
  open(os.path.join(out, "fr", "xp3_other.jsonl"), "wb").write(b"")
  os.remove(os.path.join(out, "fr", "merged_fr.jsonl"))
  found = xp3_check.check(out, SPEC, templates_root="T", data_dir="D", print_fn=None)
  assert found.missing == {"en": ["xp3_qa_en_test_same.jsonl"]}
  assert found.unexpected == {"fr": ["xp3_other.jsonl"]}
  assert found.malformed == ["fr/xp3_qa_fr_train_plain.jsonl:5: no 'targets' field"]
  assert found.merged_missing == ["fr/merged_fr.jsonl"]
  # the appended line also makes the file disagree with the count build_report.json recorded
  assert found.count_mismatch == ["fr/xp3_qa_fr_train_plain.jsonl (5 rows, the report counted 4)"]
  assert found.problems == 5
  # without the raw data a template counts as present in any split: only the unexpected file,
  # the malformed line, the count and the merged file remain
  loose = xp3_check.check(out, SPEC, templates_root="T", print_fn=None)
  assert loose.missing == {} and loose.problems == 4
  assert "1 malformed lines" in loose.summary()


def test_merged_in_bounded_memory_equals_in_memory(tmp_path):
  rng = random.Random(0)
  sources = []
  for i in range(3):
    path = tmp_path / f"f{i}.jsonl"
    path.write_bytes(b"".join(f'{{"inputs":"{rng.randrange(40)}","targets":"t"}}\n'.encode() for _ in range(50)))
    sources.append(str(path))
  everything = b"".join(open(s, "rb").read() for s in sources).splitlines(keepends=True)
  expected = sorted(set(everything))  # LC_ALL=C sort -u
  small, big = str(tmp_path / "small"), str(tmp_path / "big")
  assert xp3_files.write_merged(small, sources, shuffle_seed=None, chunk_bytes=100) == len(expected)
  xp3_files.write_merged(big, sources, shuffle_seed=None)
  assert open(small, "rb").read() == open(big, "rb").read() == b"".join(expected)
  xp3_files.write_merged(small, sources, shuffle_seed=3, chunk_bytes=100)
  xp3_files.write_merged(big, sources, shuffle_seed=3)
  for path in (small, big):
    shuffled = open(path, "rb").read().splitlines(keepends=True)
    assert sorted(shuffled) == expected and shuffled != expected


def test_output_on_a_bucket_equals_local_and_resumes(fakes, tmp_path, gcs_bucket):
  from xmtf_jax import paths
  local, _ = run(tmp_path, "local")
  remote = f"{gcs_bucket}/xp3-build"
  for attempt in range(2):
    result = xp3_build.build(SPEC, templates_root="T", data_dir="D", output_dir=remote, workers=2,
                             print_fn=None)
    assert result.jobs_skipped == (0 if attempt == 0 else 3)
  downloaded = str(tmp_path / "downloaded")
  paths.copy_to_local(remote, downloaded)
  assert tree_bytes(downloaded) == tree_bytes(local)
  assert xp3_check.check(remote, SPEC, templates_root="T", print_fn=None).problems == 0


def test_command_names_what_is_missing(fakes, tmp_path):
  from xmtf_jax.cli import build_xp3 as cli
  from xmtf_jax.errors import UserError
  with pytest.raises(UserError, match="--preset=xp3|xp3mt|xp3all or --spec=FILE"):
    cli.main(["--templates=T", "--data_dir=D", f"--output_dir={tmp_path}"])
  with pytest.raises(UserError, match="--templates must be given"):
    cli.main(["--check", str(tmp_path), "--preset=xp3"])
