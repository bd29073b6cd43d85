"""`build(spec, ...)`: raw datasets + promptsource templates -> an xP3-layout folder, deterministic
and resumable.

Jobs are (unit, split): a job reads its split once and renders every template of the unit's prompt
set. Per template (one output file): a permutation seeded by --seed and the file's name, the first
min(n, 5 x cap) rows of it, `prepare`, `render_xp3`, drops counted by reason, a stable sort by
`inputs` (code-point order), the first `cap` lines. The sort makes every file independent of the
permutation whenever n <= 5 x cap (facts 1.5), and the seed decides the rest. Jobs run in a process
pool; their results are merged in the spec's order, so nothing depends on scheduling.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import random
import time
from typing import Any, Callable, Optional

from xmtf_jax import paths
from xmtf_jax.errors import UserError
from xmtf_jax.progress import Progress, format_duration
from xmtf_jax.prompts.template_tree import TemplateTree
from xmtf_jax.prompts.xp3_render import Dropped, render_xp3
from xmtf_jax.xp3build import files, report
from xmtf_jax.xp3build import spec as xp3spec
from xmtf_jax.xp3build.languages import is_code, route
from xmtf_jax.xp3build.lines import encode_line
from xmtf_jax.xp3build.prepare import prepare
from xmtf_jax.xp3build.raw_rows import MissingDatasetError, fetch_from_hub, open_raw

BUFFER_FACTOR = 5  # rows rendered per kept row at most (the original's "5x buffer for empties")
OTHER_DIRECTION = "other direction"
NOT_UTF8 = "text with a lone surrogate (not UTF-8)"


@dataclasses.dataclass
class FileCount:
  """One (unit, split, template): what was read, rendered, dropped and written to `path`."""
  path: str  # relative to the output folder: {lang}/{file name}
  language: str
  dataset: str
  subset: Optional[str]
  split: str
  template: str
  rows_read: int = 0
  rendered: int = 0
  dropped: dict[str, int] = dataclasses.field(default_factory=dict)
  written: int = 0
  capped: bool = False
  failed: Optional[str] = None  # an exception that stopped the template (no file), as the original


@dataclasses.dataclass
class BuildResult:
  """What `build` did: per-file counts in the spec's order, rows per language, merged lines."""
  output_dir: str
  spec_name: str
  seed: int
  split_mode: str
  files: list[FileCount]
  languages: dict[str, int]  # rows in the per-template files
  merged: dict[str, int]  # lines of merged_{lang}.jsonl (after deduplication)
  jobs: int
  jobs_skipped: int  # finished by an earlier run
  missing: list[str]  # units whose raw data was not found (--skip_missing)
  skipped_templates: list[str]  # SKIP_PROMPTS: "{dataset}/{subset} {split} {template}"
  seconds: float
  rows_read: int  # by this run's jobs (not the skipped ones)

  @property
  def rows_per_second(self) -> float:
    return self.rows_read / max(self.seconds, 1e-9)


class _TemplateFailed(Exception):
  """A row whose error makes the original build skip the whole template (no file)."""


@dataclasses.dataclass(frozen=True)
class _Job:
  unit: Any
  split: str
  name: str  # the marker's name
  key: str  # what the marker must match: seed, unit, split and settings


@dataclasses.dataclass(frozen=True)
class _Settings:
  templates_root: str
  data_dir: str
  output_dir: str
  seed: int


def _job(unit, split: str, spec, seed: int) -> _Job:
  label = f"{unit.dataset}_{unit.subset}_{split}".replace("/", "_").replace(" ", "_")
  ident = json.dumps([unit.dataset, unit.subset, split])
  key = json.dumps({"seed": seed, "unit": dataclasses.asdict(unit), "split": split, "version": 1,
                    "split_mode": spec.split_mode, "prompt_language": spec.prompt_language},
                   sort_keys=True, default=list)
  digest = hashlib.sha256(ident.encode("utf-8")).hexdigest()[:10]
  return _Job(unit, split, f"{label}-{digest}", hashlib.sha256(key.encode("utf-8")).hexdigest())


def _templates(unit, templates_root: str) -> list:
  """The unit's prompt set in name order: its prompt dataset's templates (the spec decides which:
  the designated English subset for xP3, the unit's own subset in native prompt mode), narrowed to
  the spec's names when it lists some."""
  return unit_templates(TemplateTree(templates_root), unit)


def unit_templates(tree: TemplateTree, unit) -> list:
  """`_templates` on an open tree; a name the spec lists that the tree lacks (a typo, or an English
  name in native prompt mode) is a UserError naming the unit and what the tree has."""
  templates = tree.templates(unit.prompt_dataset, unit.prompt_subset)
  if unit.templates is not None:
    have = {t.name for t in templates}
    unknown = [name for name in unit.templates if name not in have]
    if unknown:
      folder = unit.prompt_key
      raise UserError(
          f"the spec asks for template(s) {unknown} of {unit.dataset}"
          f"{'/' + unit.subset if unit.subset else ''}, but the template folder {folder} under "
          f"{tree.root} has no template of that name; it has {sorted(have)}. Fix the names in the "
          "spec's `templates:` (in native prompt mode the names carry the `_{lang}mt` suffix).")
    templates = [t for t in templates if t.name in set(unit.templates)]
  return sorted(templates, key=lambda t: t.name)


def _render_file(unit, split: str, template, rows: list, count: FileCount, seed: int) -> list[bytes]:
  """The file's lines: prepare and render `rows`, count drops, sort by inputs, keep `cap`."""
  rng = random.Random(files.derived_seed(seed, count.path, "render"))
  code = is_code(count.language)
  kept = []
  for row in rows:
    count.rows_read += 1
    example = prepare(unit, split, dict(row), rng)
    result = Dropped(OTHER_DIRECTION) if example is None else render_xp3(template, example, code=code,
                                                                           rng=rng)
    if isinstance(result, Dropped):
      if result.skips_template:  # the original skipped the whole file on such an error
        raise _TemplateFailed(result.reason)
      count.dropped[result.reason] = count.dropped.get(result.reason, 0) + 1
      continue
    try:
      line = encode_line(result.inputs, result.targets)
    except UnicodeEncodeError:
      count.dropped[NOT_UTF8] = count.dropped.get(NOT_UTF8, 0) + 1
      continue
    count.rendered += 1
    kept.append((result.inputs, line))
  kept.sort(key=lambda pair: pair[0])  # stable: ties keep the seeded order
  count.capped = len(kept) > unit.cap
  return [line for _, line in kept[:unit.cap]]


def run_job(job: _Job, settings: _Settings) -> dict:
  """Writes every file of one (unit, split) and then its marker; returns the marker's record."""
  unit, split = job.unit, job.split
  raw = open_raw(settings.data_dir, unit)
  num_rows = raw.num_rows(split)
  take = min(num_rows, BUFFER_FACTOR * unit.cap)
  all_rows = list(raw.rows(split)) if take == num_rows else None  # read once, shared by templates
  counts, skipped = [], []
  for template in _templates(unit, settings.templates_root):
    if xp3spec.skip_template(unit, split, template.name):
      skipped.append(f"{unit.dataset}/{unit.subset} {split} {template.name}")
      continue
    language = route(unit, template.name)
    path = f"{language}/{xp3spec.file_name(unit, split, template.name)}"
    count = FileCount(path, language, unit.dataset, unit.subset, split, template.name)
    order = list(range(num_rows))
    random.Random(files.derived_seed(settings.seed, path)).shuffle(order)
    order = order[:take]
    rows = [all_rows[i] for i in order] if all_rows is not None else list(raw.rows(split, order))
    try:
      lines = _render_file(unit, split, template, rows, count, settings.seed)
    except UserError:
      raise
    except _TemplateFailed as failure:
      count.failed, lines = str(failure), []
    except Exception as error:  # noqa: BLE001  the original skips a template that raises, so do we
      count.failed, lines = f"{type(error).__name__}: {error}", []
    count.written = len(lines)
    if lines:
      files.write_file(paths.join(settings.output_dir, path), b"".join(lines))
    counts.append(count)
  record = {"key": job.key, "job": job.name, "files": [dataclasses.asdict(c) for c in counts],
            "skipped_templates": skipped}
  files.write_marker(settings.output_dir, job.name, record)
  return record


def _open_or_fetch(data_dir: str, unit, download: bool):
  try:
    return open_raw(data_dir, unit)
  except MissingDatasetError:
    if not download:
      raise
  fetch_from_hub(data_dir, unit)
  return open_raw(data_dir, unit)


def _plan(spec, data_dir: str, seed: int, skip_missing: bool,
          download: bool = False) -> tuple[list[_Job], list[str]]:
  """The jobs of the spec in its order (one per unit and selected split) and the missing units
  (downloaded first with `download`)."""
  jobs, missing, seen = [], [], set()
  for unit in spec.units:
    try:
      splits = _open_or_fetch(data_dir, unit, download).splits()
    except MissingDatasetError as error:
      if not skip_missing:
        raise
      missing.append(f"{unit.dataset}/{unit.subset}: {error}")
      continue
    for split in xp3spec.select_splits(unit, list(splits), spec.split_mode):
      job = _job(unit, split, spec, seed)
      if job.name not in seen:  # the original lists some units twice (mlqa)
        seen.add(job.name)
        jobs.append(job)
  return jobs, missing


def _run(todo: list[_Job], settings: _Settings, workers: int,
         on_done: Callable[[dict], None]) -> dict[str, dict]:
  """Runs jobs (in this process for one worker) and returns their records by job name."""
  records = {}
  if workers <= 1 or len(todo) <= 1:
    for job in todo:
      records[job.name] = run_job(job, settings)
      on_done(records[job.name])
    return records
  methods = multiprocessing.get_all_start_methods()
  context = multiprocessing.get_context("fork" if "fork" in methods else None)
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
    futures = {pool.submit(run_job, job, settings): job for job in todo}
    try:
      for future in concurrent.futures.as_completed(futures):
        records[futures[future].name] = future.result()
        on_done(records[futures[future].name])
    except BaseException:
      pool.shutdown(cancel_futures=True)
      raise
  return records


def build(spec, *, templates_root: str, data_dir: str, output_dir: str, seed: int = 0,
          workers: Optional[int] = None, vocabulary=None, skip_missing: bool = False,
          download: bool = False,
          print_fn: Optional[Callable[[str], None]] = print) -> BuildResult:
  """Builds `spec` into `output_dir` (local or gs://) and writes build_report.{json,md,png} there.

  Rerunning into the same folder skips the jobs whose markers match (same seed and settings) and
  redoes the others from scratch, so a killed build finishes with the same bytes as an unbroken one.
  vocabulary: a seqio vocabulary (`xmtf_jax.data.tasks.vocabulary(path)`) to count tokens per
  language in the report, or None. download: fetch units missing under `data_dir` from the Hub
  first (`raw_rows.fetch_from_hub`), else they are errors (or skipped with skip_missing)."""
  start = time.perf_counter()
  workers = workers or os.cpu_count() or 1
  settings = _Settings(templates_root, data_dir, output_dir, seed)
  paths.makedirs(output_dir)
  files.remove_stale_temporaries(output_dir)
  tree = TemplateTree(templates_root)
  for unit in spec.units:  # every named template exists, before any job runs
    unit_templates(tree, unit)
  jobs, missing = _plan(spec, data_dir, seed, skip_missing, download)
  finished = {job.name: files.read_marker(output_dir, job.name, job.key) for job in jobs}
  todo = [job for job in jobs if finished[job.name] is None]
  if print_fn:
    print_fn(f"{spec.name}: {len(jobs)} jobs, {len(jobs) - len(todo)} finished before, "
             f"{len(todo)} to run on {min(workers, max(len(todo), 1))} worker(s)")
  rows = [0]

  def detail() -> str:
    elapsed = time.perf_counter() - start
    return f"{rows[0]:,} rows read, {rows[0] / max(elapsed, 1e-9):,.0f} rows/s"

  progress = Progress(len(todo), print_fn, label="built", unit="jobs", detail=detail)

  def on_done(record: dict) -> None:
    rows[0] += sum(f["rows_read"] for f in record["files"])
    progress.update(1)

  records = _run(todo, settings, workers, on_done)
  records.update({name: record for name, record in finished.items() if record is not None})
  counts = [FileCount(**f) for job in jobs for f in records[job.name]["files"]]
  skipped = [s for job in jobs for s in records[job.name]["skipped_templates"]]
  languages: dict[str, int] = {}
  for count in counts:
    if count.written:
      languages[count.language] = languages.get(count.language, 0) + count.written
  merged = {}
  for language in sorted(languages):
    sources = sorted(paths.join(output_dir, c.path) for c in counts
                     if c.language == language and c.written)
    shuffle_seed = files.derived_seed(seed, f"merged_{language}") if spec.split_mode == "train" else None
    merged[language] = files.write_merged(
        paths.join(output_dir, language, f"merged_{language}.jsonl"), sources, shuffle_seed=shuffle_seed)
  result = BuildResult(output_dir, spec.name, seed, spec.split_mode, counts, languages, merged,
                       len(jobs), len(jobs) - len(todo), missing, skipped,
                       time.perf_counter() - start, rows[0])
  report.write_report(result, spec, vocabulary=vocabulary)
  if print_fn:
    print_fn(f"wrote {sum(languages.values()):,} rows in {sum(1 for c in counts if c.written)} files "
             f"and {len(merged)} merged files to {output_dir} in {format_duration(result.seconds)} "
             + (f"({result.rows_per_second:,.0f} rows/s read)" if todo else "(every job finished before)"))
  return result
