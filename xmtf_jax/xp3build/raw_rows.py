"""Rows of the raw datasets an xP3 build reads, from whatever the user has on disk or in a bucket.

Layout: `{data_dir}/{dataset}/{subset}/` (no subset level when the unit has none) holds either a
`datasets` `save_to_disk` folder (`dataset_dict.json` plus one folder of Arrow files per split) or
files per split: `{split}.jsonl`, `{split}.json` (JSON lines or one array), `{split}.parquet`,
`{split}.csv`, Hub-parquet shards `{split}-00000-of-00002.parquet` or a folder `{split}/*.parquet`.
Arrow, parquet and CSV become one Arrow table per split and rows are taken by index from it, so a
build that keeps 500k of 10M rows never turns the other rows into Python objects; JSON lines are
kept as bytes and parsed when asked for. No network: `hub_name` and `download_hint` only say how to
fetch a missing dataset (the 2022 names the presets use are not all accepted by the Hub today).
"""
from __future__ import annotations

import json
import re
from typing import Iterator, Optional, Sequence

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from xmtf_jax import paths
from xmtf_jax.errors import MissingPathError, UserError

BATCH_ROWS = 1000  # rows turned into Python objects at a time
FILE_FORMATS = ("jsonl", "json", "parquet", "csv")
SHARD = re.compile(r"^(?P<split>.+?)-\d+-of-\d+.*\.parquet$")

# Datasets the Hub moved under an owner since 2022: bare ids are now rejected ("Repository id must be
# 'namespace/name'"; the first four as fixed in lm-evaluation-harness #3852/#3870, the others are the
# canonical ids their old names redirected to). Builds keep the 2022 name for folders and file names
# (byte compatibility with the published xP3); this is only for fetching. Unknown names pass unchanged.
HUB_NAMES = {
    "xnli": "facebook/xnli", "paws-x": "google-research-datasets/paws-x", "xquad": "google/xquad",
    "xcopa": "cambridgeltl/xcopa", "mlqa": "facebook/mlqa", "paws": "google-research-datasets/paws",
    "glue": "nyu-mll/glue", "super_glue": "aps/super_glue", "ai2_arc": "allenai/ai2_arc",
    "kilt_tasks": "facebook/kilt_tasks", "trivia_qa": "mandarjoshi/trivia_qa",
    "web_questions": "stanfordnlp/web_questions", "wiki_qa": "microsoft/wiki_qa",
    "adversarial_qa": "UCLNLP/adversarial_qa", "duorc": "ibm/duorc", "ropes": "allenai/ropes",
    "squad_v2": "rajpurkar/squad_v2", "quoref": "allenai/quoref", "cos_e": "Salesforce/cos_e",
    "cosmos_qa": "allenai/cosmos_qa", "openbookqa": "allenai/openbookqa", "qasc": "allenai/qasc",
    "quarel": "allenai/quarel", "quartz": "allenai/quartz", "race": "ehovy/race",
    "sciq": "allenai/sciq", "social_i_qa": "allenai/social_i_qa", "wiqa": "allenai/wiqa",
    "piqa": "ybisk/piqa", "amazon_polarity": "fancyzhx/amazon_polarity",
    "imdb": "stanfordnlp/imdb", "rotten_tomatoes": "cornell-movie-review-data/rotten_tomatoes",
    "yelp_review_full": "Yelp/yelp_review_full", "common_gen": "allenai/common_gen",
    "cnn_dailymail": "abisee/cnn_dailymail", "gigaword": "Harvard/gigaword",
    "multi_news": "alexfabbri/multi_news", "samsum": "Samsung/samsum", "xsum": "EdinburghNLP/xsum",
    "ag_news": "fancyzhx/ag_news", "dbpedia_14": "fancyzhx/dbpedia_14", "trec": "CogComp/trec",
    "winogrande": "allenai/winogrande", "anli": "facebook/anli", "hellaswag": "Rowan/hellaswag",
    "multi_eurlex": "coastalcph/multi_eurlex",
}
# Not public or not downloadable by name: the user supplies the files.
MANUAL_DOWNLOAD = ("story_cloze", "Muennighoff/xstory_cloze")


class MissingDatasetError(MissingPathError):
  """A unit's raw data is not under the data folder (a build with skip_missing passes over it)."""


def hub_name(dataset: str) -> str:
  """The Hub id to fetch a dataset the presets name by its 2022 id (`xnli` -> `facebook/xnli`)."""
  return HUB_NAMES.get(dataset, dataset)


def unit_folder(data_dir: str, unit) -> str:
  parts = unit.dataset.split("/") + ([unit.subset] if unit.subset is not None else [])
  return paths.join(data_dir, *parts)


def download_hint(unit, data_dir: str = "DATA_DIR") -> str:
  """One or two sentences telling the user how to put a unit's rows where the build looks."""
  folder = unit_folder(data_dir, unit)
  if unit.dataset in MANUAL_DOWNLOAD:
    return (f"{unit.dataset} is not downloadable by name (manual download, see its dataset card); "
            f"write its splits as {folder}/<split>.jsonl or .csv.")
  args = repr(hub_name(unit.dataset)) + (f", {unit.subset!r}" if unit.subset is not None else "")
  return (f"With network: python -c \"import datasets; datasets.load_dataset({args})"
          f".save_to_disk('{folder}')\". If `datasets` says dataset scripts are no longer supported, "
          f"download the Hub's parquet export instead (revision refs/convert/parquet) into "
          f"{folder}/<split>/*.parquet.")


def fetch_from_hub(data_dir: str, unit, load_dataset=None) -> str:
  """Downloads a missing unit from the Hub under its current id (`hub_name`) and saves it where the
  build looks (`save_to_disk` into its folder), so this and every later build read a local copy.

  load_dataset: `datasets.load_dataset` unless given (tests pass a stand-in: no network there).
  A dataset the Hub cannot give (manual download, a loading script `datasets` 4+ refuses, no network)
  is a MissingDatasetError with the reason and the manual way."""
  folder = unit_folder(data_dir, unit)
  if unit.dataset in MANUAL_DOWNLOAD:
    raise MissingDatasetError(f"cannot download {unit.dataset}: {download_hint(unit, data_dir)}")
  if load_dataset is None:
    import datasets  # heavy; only when something is downloaded
    load_dataset = datasets.load_dataset
  name = hub_name(unit.dataset)
  try:
    loaded = load_dataset(name, unit.subset) if unit.subset is not None else load_dataset(name)
  except Exception as error:  # noqa: BLE001  (network, unknown id, refused loading script: the user's to fix)
    raise MissingDatasetError(
        f"could not download {unit.dataset} {unit.subset} from the Hub as {name!r}: "
        f"{type(error).__name__}: {error}. {download_hint(unit, data_dir)}") from error
  partial = folder + ".partial"
  if paths.exists(partial):
    paths.rmtree(partial)
  loaded.save_to_disk(partial)  # then renamed: a killed download never looks like a dataset
  paths.rename(partial, folder)
  return folder


# ---- one split -------------------------------------------------------------------------------------

class _TableSplit:
  """A split read as one Arrow table (save_to_disk Arrow files, parquet, CSV), loaded on first use."""

  def __init__(self, files: list[str], kind: str):
    self.files, self.kind, self._table = files, kind, None

  def table(self) -> pa.Table:
    if self._table is None:
      tables = [self._read(f) for f in self.files]
      self._table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else (
          tables[0])
    return self._table

  def _read(self, path: str) -> pa.Table:
    try:
      if self.kind == "arrow":
        source = pa.memory_map(path) if not paths.is_remote(path) else pa.BufferReader(
            paths.read_bytes(path))
        try:
          return pa.ipc.open_stream(source).read_all()  # what save_to_disk writes
        except pa.ArrowInvalid:
          source.seek(0)
          return pa.ipc.open_file(source).read_all()
      with paths.open(path, "rb") as f:
        return pq.read_table(f) if self.kind == "parquet" else pa_csv.read_csv(f)
    except (pa.ArrowInvalid, OSError) as e:
      raise UserError(f"{path}: cannot be read as {self.kind} ({e}). Replace the file with a "
                      f"complete one.") from None

  def num_rows(self) -> int:
    return self.table().num_rows

  def rows(self, indices: Optional[Sequence[int]]) -> Iterator[dict]:
    table = self.table()
    if indices is None:
      for batch in table.to_batches(max_chunksize=BATCH_ROWS):
        yield from batch.to_pylist()
      return
    for start in range(0, len(indices), BATCH_ROWS):
      yield from table.take(pa.array(indices[start:start + BATCH_ROWS], pa.int64())).to_pylist()


class _JsonSplit:
  """JSON lines (or one JSON array) kept as raw lines; a row is parsed when it is asked for."""

  def __init__(self, path: str):
    self.path, self._lines = path, None

  def lines(self) -> list[tuple[int, object]]:
    """(1-based line number, bytes) of each non-blank line; an array gives (item number, item)."""
    if self._lines is None:
      data = paths.read_bytes(self.path)
      if data.lstrip()[:1] == b"[":
        try:
          items = json.loads(data)
        except ValueError as e:
          raise UserError(f"{self.path}: not a valid JSON array ({e}). Fix the file, or write one "
                          f"JSON object per line.") from None
        self._lines = list(enumerate(items, 1))  # already parsed: (item number, object)
      else:
        self._lines = [(number, line) for number, line in enumerate(data.split(b"\n"), 1)
                       if line.strip()]
    return self._lines

  def num_rows(self) -> int:
    return len(self.lines())

  def rows(self, indices: Optional[Sequence[int]]) -> Iterator[dict]:
    lines = self.lines()
    for index in (range(len(lines)) if indices is None else indices):
      number, line = lines[index]
      try:
        row = json.loads(line) if isinstance(line, bytes) else line
      except ValueError as e:
        raise UserError(f"{self.path}:{number}: not a JSON object ({e}). Fix or delete that "
                        f"line.") from None
      if not isinstance(row, dict):
        raise UserError(f"{self.path}:{number}: a row must be a JSON object with the dataset's "
                        f"fields, got {type(row).__name__}. Fix or delete that line.")
      yield row


class RawDataset:
  """The splits of one unit's raw data: names, sizes and rows by index."""

  def __init__(self, folder: str, splits: dict):
    self.folder, self._splits = folder, splits

  def splits(self) -> list[str]:
    return list(self._splits)

  def _split(self, split: str):
    if split not in self._splits:
      raise UserError(f"{self.folder} has no split {split!r} (it has {', '.join(self._splits)}).")
    return self._splits[split]

  def num_rows(self, split: str) -> int:
    return self._split(split).num_rows()

  def rows(self, split: str, indices: Optional[Sequence[int]] = None) -> Iterator[dict]:
    """The rows at `indices` of the split, in that order (all rows, in file order, for None)."""
    return self._split(split).rows(indices)


# ---- finding the splits ----------------------------------------------------------------------------

def open_raw(data_dir: str, unit) -> RawDataset:
  """The raw rows of `unit` under `data_dir`; MissingDatasetError (a UserError) saying what was
  looked for, and how to fetch it, when there are none."""
  folder = unit_folder(data_dir, unit)
  if not paths.isdir(folder):
    raise MissingDatasetError(
        f"no raw data for {unit.dataset} {unit.subset}: {folder} does not exist. The build looks "
        f"there for a `datasets` save_to_disk folder or files per split ({_looked_for()}). "
        f"{download_hint(unit, data_dir)} Or pass --download to fetch it, or --skip_missing to "
        "build without it.")
  if paths.exists(paths.join(folder, "dataset_dict.json")):
    splits = _saved_dataset_dict(folder)
  elif paths.exists(paths.join(folder, "state.json")):
    splits = {_saved_split_name(folder): _TableSplit(_arrow_files(folder), "arrow")}
  else:
    splits = _split_files(folder)
  if not splits:
    raise MissingDatasetError(
        f"no raw data for {unit.dataset} {unit.subset}: {folder} holds none of {_looked_for()}. "
        f"{download_hint(unit, data_dir)} Or pass --skip_missing to build without it.")
  return RawDataset(folder, splits)


def _looked_for() -> str:
  return ("dataset_dict.json, <split>.jsonl, <split>.json, <split>.parquet, <split>.csv, "
          "<split>-00000-of-00001.parquet, <split>/*.parquet")


def _read_json(path: str) -> dict:
  try:
    return json.loads(paths.read_text(path))
  except ValueError as e:
    raise UserError(f"{path}: not valid JSON ({e}); save the dataset again with save_to_disk.") from None


def _saved_dataset_dict(folder: str) -> dict:
  manifest = paths.join(folder, "dataset_dict.json")
  names = _read_json(manifest).get("splits")
  if not isinstance(names, list) or not names:
    raise UserError(f"{manifest} lists no `splits`; save the DatasetDict again with save_to_disk.")
  return {name: _TableSplit(_arrow_files(paths.join(folder, name)), "arrow") for name in names}


def _saved_split_name(folder: str) -> str:
  return _read_json(paths.join(folder, "state.json")).get("_split") or "train"


def _arrow_files(split_folder: str) -> list[str]:
  """The Arrow files of one saved split, in the order state.json lists them."""
  state = paths.join(split_folder, "state.json")
  if paths.exists(state):
    files = [paths.join(split_folder, f["filename"]) for f in _read_json(state).get("_data_files", [])]
  else:
    files = paths.glob(paths.join(paths.escape(split_folder), "*.arrow"))
  missing = [f for f in files if not paths.exists(f)]
  if not files or missing:
    raise UserError(f"{split_folder}: the saved split's Arrow files are missing "
                    f"({', '.join(missing) or 'none listed'}); save the dataset again with save_to_disk.")
  return files


def _split_files(folder: str) -> dict:
  """Split name -> reader for the per-split files of a folder; the same split twice is an error."""
  found: dict[str, tuple[str, object]] = {}

  def add(split: str, what: str, reader) -> None:
    if split in found and found[split][0] != what:
      raise UserError(f"{folder}: split {split!r} is given twice ({found[split][0]} and {what}); "
                      f"keep one of them.")
    found.setdefault(split, (what, reader))

  shards: dict[str, list[str]] = {}
  folders = set(paths.subfolders(folder))  # one listing, not one request per entry on a bucket
  for name in paths.listdir(folder):
    path = paths.join(folder, name)
    stem, _, ext = name.rpartition(".")
    if name in folders:
      parquet = paths.glob(paths.join(paths.escape(path), "*.parquet"))
      if parquet:
        add(name, f"{name}/*.parquet", _TableSplit(parquet, "parquet"))
    elif SHARD.match(name):
      shards.setdefault(SHARD.match(name).group("split"), []).append(path)
    elif ext in ("jsonl", "json"):
      add(stem, name, _JsonSplit(path))
    elif ext in ("parquet", "csv"):
      add(stem, name, _TableSplit([path], ext))
  for split, files in shards.items():
    add(split, f"{split}-*.parquet", _TableSplit(sorted(files), "parquet"))
  return {split: reader for split, (_, reader) in sorted(found.items())}
