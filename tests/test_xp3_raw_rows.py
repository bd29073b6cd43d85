"""Raw rows for the xP3 builder: every on-disk format gives back the rows that were written (by
pyarrow, by hand in the `datasets` save_to_disk layout, and by `datasets` itself where installed),
locally and through a URL; bad files are user errors naming the file and line. Then the row
preparation of the original script (facts 1.9)."""
import json
import random

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from xmtf_jax.errors import MissingPathError, UserError
from xmtf_jax.xp3build import prepare, raw_rows
from xmtf_jax.xp3build.spec import Unit

ROWS = [{"id": i, "text": t, "label": i % 2} for i, t in
        enumerate(["a/b", "é ü", "line\nbreak", "", "last ||| one"])]
TEST_ROWS = [{"id": 9, "text": "t", "label": 0}]


def unit(dataset="paws-x", subset="fr"):
  return Unit(dataset, subset, dataset, subset)


def jsonl(rows):
  return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def save_to_disk_by_hand(folder, splits):
  """The layout `DatasetDict.save_to_disk` writes: dataset_dict.json, per split an Arrow stream file,
  state.json naming it, dataset_info.json."""
  folder.mkdir(parents=True)
  (folder / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
  for split, rows in splits.items():
    (folder / split).mkdir()
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(folder / split / "data-00000-of-00001.arrow"), "wb") as sink:
      with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    (folder / split / "state.json").write_text(json.dumps(
        {"_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_split": split}))
    (folder / split / "dataset_info.json").write_text("{}")


def write_formats(root):
  """One dataset folder per format under `root`, each with train = ROWS and test = TEST_ROWS."""
  def folder(name):
    path = root / name / "fr"
    path.mkdir(parents=True)
    return path
  f = folder("jsonl")
  (f / "train.jsonl").write_text(jsonl(ROWS) + "\n", encoding="utf-8")  # a trailing blank line
  (f / "test.jsonl").write_text(jsonl(TEST_ROWS), encoding="utf-8")
  f = folder("json_array")
  (f / "train.json").write_text(json.dumps(ROWS, ensure_ascii=False), encoding="utf-8")
  (f / "test.json").write_text(jsonl(TEST_ROWS), encoding="utf-8")  # .json holding JSON lines
  f = folder("parquet")
  pq.write_table(pa.Table.from_pylist(ROWS), str(f / "train.parquet"))
  pq.write_table(pa.Table.from_pylist(TEST_ROWS), str(f / "test.parquet"))
  f = folder("csv")
  pa_csv.write_csv(pa.Table.from_pylist(ROWS), str(f / "train.csv"))
  pa_csv.write_csv(pa.Table.from_pylist(TEST_ROWS), str(f / "test.csv"))
  f = folder("hub_shards")
  pq.write_table(pa.Table.from_pylist(ROWS[:2]), str(f / "train-00000-of-00002.parquet"))
  pq.write_table(pa.Table.from_pylist(ROWS[2:]), str(f / "train-00001-of-00002.parquet"))
  pq.write_table(pa.Table.from_pylist(TEST_ROWS), str(f / "test-00000-of-00001.parquet"))
  f = folder("hub_folders")
  (f / "train").mkdir()
  (f / "test").mkdir()
  pq.write_table(pa.Table.from_pylist(ROWS[:3]), str(f / "train" / "0000.parquet"))
  pq.write_table(pa.Table.from_pylist(ROWS[3:]), str(f / "train" / "0001.parquet"))
  pq.write_table(pa.Table.from_pylist(TEST_ROWS), str(f / "test" / "0000.parquet"))
  save_to_disk_by_hand(root / "saved" / "fr", {"train": ROWS, "test": TEST_ROWS})


FORMATS = ("jsonl", "json_array", "parquet", "csv", "hub_shards", "hub_folders", "saved")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("raw")
  write_formats(root)
  return root


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_gives_the_rows_back(data_dir, fmt):
  raw = raw_rows.open_raw(str(data_dir), unit(fmt))
  assert sorted(raw.splits()) == ["test", "train"]
  assert (raw.num_rows("train"), raw.num_rows("test")) == (5, 1)
  expected = ROWS  # CSV too: pyarrow keeps "" as "" (pandas would give NaN), types are inferred
  assert list(raw.rows("train")) == expected
  assert list(raw.rows("train", [4, 0, 4])) == [expected[4], expected[0], expected[4]]
  assert list(raw.rows("test", [])) == []
  assert list(raw.rows("test")) == TEST_ROWS


def test_rows_in_batches_keep_the_order(data_dir, monkeypatch):
  monkeypatch.setattr(raw_rows, "BATCH_ROWS", 2)
  for fmt in ("parquet", "saved", "jsonl"):
    raw = raw_rows.open_raw(str(data_dir), unit(fmt))
    assert [r["id"] for r in raw.rows("train", [3, 1, 4, 0, 2])] == [3, 1, 4, 0, 2]


def test_a_bucket_url_reads_the_same(data_dir):
  """Through fsspec (memory:// stands in for gs://; both go through xmtf_jax.paths)."""
  import fsspec
  fs = fsspec.filesystem("memory")
  for fmt in ("jsonl", "parquet", "saved", "hub_folders"):
    fs.put(str(data_dir / fmt), f"/raw_rows_test/{fmt}", recursive=True)
    raw = raw_rows.open_raw("memory://raw_rows_test", unit(fmt))
    assert sorted(raw.splits()) == ["test", "train"], fmt
    assert list(raw.rows("train", [1, 4])) == [ROWS[1], ROWS[4]], fmt
  fs.rm("/raw_rows_test", recursive=True)


def test_save_to_disk_written_by_datasets(tmp_path):
  datasets = pytest.importorskip("datasets")
  folder = tmp_path / "GEM" / "xlsum" / "swahili"
  datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                        "validation": datasets.Dataset.from_list(TEST_ROWS)}).save_to_disk(str(folder))
  raw = raw_rows.open_raw(str(tmp_path), unit("GEM/xlsum", "swahili"))
  assert raw.splits() == ["train", "validation"]
  assert list(raw.rows("train", [2])) == [ROWS[2]]


def test_no_subset_level_and_dataset_owner_folders(tmp_path):
  (tmp_path / "web_questions").mkdir()
  (tmp_path / "web_questions" / "train.jsonl").write_text(jsonl(ROWS[:1]))
  assert list(raw_rows.open_raw(str(tmp_path), unit("web_questions", None)).rows("train")) == ROWS[:1]
  assert raw_rows.unit_folder("gs://b/raw", unit("GEM/xlsum", "swahili")) == "gs://b/raw/GEM/xlsum/swahili"


def test_download_fetches_by_the_current_hub_id_and_saves_where_the_build_looks(tmp_path):
  """No network in tests: a stand-in for `datasets.load_dataset` records what it was asked for and
  gives a real DatasetDict, which must land as a save_to_disk folder open_raw reads."""
  datasets = pytest.importorskip("datasets")
  asked = []

  def load_dataset(*args):
    asked.append(args)
    return datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                                 "test": datasets.Dataset.from_list(TEST_ROWS)})

  folder = raw_rows.fetch_from_hub(str(tmp_path), unit("paws-x", "fr"), load_dataset=load_dataset)
  assert asked == [("google-research-datasets/paws-x", "fr")]
  assert folder == f"{tmp_path}/paws-x/fr" and not (tmp_path / "paws-x" / "fr.partial").exists()
  raw = raw_rows.open_raw(str(tmp_path), unit("paws-x", "fr"))
  assert raw.splits() == ["train", "test"] and list(raw.rows("train", [1])) == [ROWS[1]]

  def offline(*args):
    raise ConnectionError("no network")

  with pytest.raises(raw_rows.MissingDatasetError) as e:
    raw_rows.fetch_from_hub(str(tmp_path), unit("xnli", "de"), load_dataset=offline)
  assert "could not download xnli de from the Hub as 'facebook/xnli': ConnectionError: no network" in str(e.value)
  assert "refs/convert/parquet" in str(e.value) and not (tmp_path / "xnli").exists()
  with pytest.raises(raw_rows.MissingDatasetError, match="manual download"):
    raw_rows.fetch_from_hub(str(tmp_path), unit("Muennighoff/xstory_cloze", "sw"), load_dataset=offline)


# ---- errors ----------------------------------------------------------------------------------------

def test_missing_dataset_says_what_was_looked_for_and_how_to_fetch_it(tmp_path):
  with pytest.raises(raw_rows.MissingDatasetError) as e:
    raw_rows.open_raw(str(tmp_path), unit("xnli", "fr"))
  message = str(e.value)
  assert isinstance(e.value, MissingPathError) and isinstance(e.value, UserError)
  assert f"{tmp_path}/xnli/fr does not exist" in message
  assert "<split>.jsonl" in message and "--skip_missing" in message and "--download" in message
  assert (f"datasets.load_dataset('facebook/xnli', 'fr').save_to_disk('{tmp_path}/xnli/fr')"
          in message)
  (tmp_path / "xnli" / "fr").mkdir(parents=True)
  (tmp_path / "xnli" / "fr" / "README.md").write_text("x")
  with pytest.raises(raw_rows.MissingDatasetError, match="holds none of dataset_dict.json"):
    raw_rows.open_raw(str(tmp_path), unit("xnli", "fr"))


def test_hub_names_and_hints():
  assert [raw_rows.hub_name(n) for n in ("xnli", "paws-x", "xquad", "xcopa", "GEM/xlsum")] == [
      "facebook/xnli", "google-research-datasets/paws-x", "google/xquad", "cambridgeltl/xcopa",
      "GEM/xlsum"]
  assert "load_dataset('GEM/xlsum', 'swahili').save_to_disk('DATA_DIR/GEM/xlsum/swahili')" in (
      raw_rows.download_hint(unit("GEM/xlsum", "swahili")))
  assert "load_dataset('google/xquad')" in raw_rows.download_hint(unit("xquad", None))
  assert "manual download" in raw_rows.download_hint(unit("story_cloze", "2016"))


@pytest.mark.parametrize("content, message", [
    ('{"id": 1}\n\n{"id": 2,}\n', "train.jsonl:3: not a JSON object"),
    ('{"id": 1}\n[1, 2]\n', "train.jsonl:2: a row must be a JSON object"),
])
def test_a_bad_jsonl_line_is_named(tmp_path, content, message):
  folder = tmp_path / "paws-x" / "fr"
  folder.mkdir(parents=True)
  (folder / "train.jsonl").write_text(content)
  raw = raw_rows.open_raw(str(tmp_path), unit())
  assert raw.num_rows("train") == 2
  with pytest.raises(UserError) as e:
    list(raw.rows("train"))
  assert str(folder / message.split(":")[0]) in str(e.value) and message in str(e.value)


def test_other_bad_inputs(tmp_path):
  folder = tmp_path / "paws-x" / "fr"
  folder.mkdir(parents=True)
  (folder / "train.jsonl").write_text(jsonl(ROWS))
  (folder / "train.csv").write_text("id\n1\n")
  with pytest.raises(UserError, match="split 'train' is given twice"):
    raw_rows.open_raw(str(tmp_path), unit())
  (folder / "train.csv").unlink()
  (folder / "test.parquet").write_bytes(b"not parquet")
  raw = raw_rows.open_raw(str(tmp_path), unit())
  with pytest.raises(UserError, match=r"test.parquet: cannot be read as parquet"):
    raw.num_rows("test")
  with pytest.raises(UserError, match="has no split 'validation' \\(it has test, train\\)"):
    raw.num_rows("validation")
  (folder / "test.parquet").unlink()
  (folder / "test.json").write_text('[{"id": 1},')
  with pytest.raises(UserError, match="test.json: not a valid JSON array"):
    raw_rows.open_raw(str(tmp_path), unit()).num_rows("test")


# ---- preparing rows --------------------------------------------------------------------------------

def test_hyphens_in_field_names_become_underscores():
  row = {"gem-id": "x", "a-b-c": 1, "plain": 2}
  assert prepare.prepare(unit(), "train", row, random.Random(0)) == {"gem_id": "x", "a_b_c": 1, "plain": 2}
  assert row == {"gem-id": "x", "a-b-c": 1, "plain": 2}  # the raw row is left alone


def test_wiki_lingua_names_and_direction():
  rng = random.Random(0)
  row = {"source_language": "ar", "target_language": "en", "source": "s", "target": "t"}
  out = prepare.prepare(unit("GEM/wiki_lingua", "ar_en"), "train", row, rng)
  assert (out["source_language_name"], out["target_language_name"]) == ("Arabic", "English")
  other = {"source_language": "en", "target_language": "ar", "source": "s", "target": "t"}
  assert prepare.prepare(unit("GEM/wiki_lingua", "ar_en"), "train", other, rng) is None
  assert prepare.drop_reason(unit("GEM/wiki_lingua", "ar_en")) == "other direction"
  mono = {"source_language": "zh", "target_language": "zh", "source": "s", "target": "t"}
  assert prepare.prepare(unit("GEM/wiki_lingua", "zh"), "train", mono, rng)["target_language_name"] == "Chinese"
  with pytest.raises(UserError, match="source_language='xx'"):
    prepare.prepare(unit("GEM/wiki_lingua", "en"), "train", dict(mono, source_language="xx"), rng)


def test_xlcost_code_clean():
  code = 'def f ( x ) : NEW_LINE INDENT return x + 1 NEW_LINE DEDENT print ( " aSTRNEWLINEbTABSYMBOL " ) NEW_LINE'
  out = prepare.prepare(unit("codeparrot/xlcost-text-to-code", "Python-program-level"), "train",
                        {"text": "t", "code": code}, random.Random(0))
  assert out["code_clean"] == 'def f ( x ) :\n\treturn x + 1\nprint ( " a\nb\t " )\n'
  assert out["code"] == code


def test_apps_picks_one_solution_with_the_given_rng():
  apps = unit("codeparrot/apps", "all")
  row = {"question": "q", "solutions": json.dumps(["s0", "s1", "s2", "s3"])}
  picks = [prepare.prepare(apps, "train", row, random.Random(seed))["solution"] for seed in range(20)]
  assert picks == [prepare.prepare(apps, "train", row, random.Random(seed))["solution"] for seed in range(20)]
  assert set(picks) <= {"s0", "s1", "s2", "s3"} and len(set(picks)) > 1
  assert prepare.prepare(apps, "train", {"solutions": ""}, random.Random(0)) is None
  assert prepare.prepare(apps, "train", {"solutions": "[]"}, random.Random(0)) is None
  assert prepare.drop_reason(apps) == "no solution"
