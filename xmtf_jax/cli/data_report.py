"""`python -m xmtf_jax.data_report --gin_file=gin/mixtures/demo.gin [--gin.TASK_FEATURE_LENGTHS=...]`

Per task of a mixture (or for one task): examples, token lengths, truncation, mixing rate, packing
efficiency and bad lines (`xmtf_jax.data.report`), written to `output_dir` as report.json, report.md
and language_shares.png. On big data set `DATA_REPORT_MAX_EXAMPLES` (examples read per task):
statistics are then over a sample.

gin macros that matter: MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, XP3_DATA_DIR, DATA_STRICT,
DATA_REPORT_MAX_EXAMPLES; data_report.make_report.output_dir (gin/runs/data_report.gin);
data_report.make_report.line_index_dir (also build the indexed pipeline's line offsets there);
data_report.make_report.input_pipeline (whose packing is measured: 'indexed', the default, or
'tf_data').
"""
from __future__ import annotations

import json
from typing import Mapping, Optional

import gin

from xmtf_jax import paths
from xmtf_jax.cli import gin_flags, runtime
from xmtf_jax.data import jsonl_source, line_index
from xmtf_jax.data import tasks as data_tasks
from xmtf_jax.data.report import build_report, markdown, plot_language_shares
from xmtf_jax.progress import to_stderr


@gin.configurable(module="data_report")
def make_report(mixture_or_task_name: str = gin.REQUIRED,
                task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
                output_dir: str = "runs/data_report", split: str = "train",
                max_examples_per_task: Optional[int] = 10_000,
                line_index_dir: Optional[str] = None, input_pipeline: str = "indexed",
                feature_layout: str = "encoder_decoder") -> dict:
  """Builds the report and writes report.json, report.md and language_shares.png to output_dir.

  line_index_dir: also build the line offsets the indexed training pipeline reads, for every file of
  the split, into this folder (e.g. gs://bucket/line_index, then TrainConfig.line_index_dir).
  input_pipeline: the training pipeline whose packing the report measures ('indexed' | 'tf_data').
  feature_layout: how the model family lays examples out: 'encoder_decoder' (mT5) or 'decoder_only'
    (BLOOM: inputs ++ " " targets ++ EOS in one row of inputs + targets positions).
  """
  runtime.register_tasks(mixture_or_task_name)
  if line_index_dir:
    files = data_files(mixture_or_task_name, split)
    lines = line_index.index_files(files, line_index_dir)
    to_stderr(f"line index: {len(files)} files, {lines} lines in {line_index_dir}")
  report = build_report(mixture_or_task_name, task_feature_lengths, split, max_examples_per_task,
                        input_pipeline, feature_layout=feature_layout)
  paths.makedirs(output_dir)
  paths.write_text(paths.join(output_dir, "report.json"),
                   json.dumps(report, indent=1, ensure_ascii=False))
  paths.write_text(paths.join(output_dir, "report.md"), markdown(report))
  plot_language_shares(report, paths.join(output_dir, "language_shares.png"))
  to_stderr(f"wrote report.json, report.md, language_shares.png to {output_dir} "
            f"({report['seconds']:.1f}s)")
  return report


def data_files(mixture_or_task_name: str, split: str) -> list[str]:
  provider = data_tasks.get_mixture_or_task(mixture_or_task_name)
  found = []
  for task in getattr(provider, "tasks", [provider]):
    if split in task.splits and isinstance(task.source, jsonl_source.JsonlDataSource):
      found += [f for f in task.source.existing_files(split) if not f.endswith(".zip")]
  return sorted(set(found))


def main(argv=None) -> None:
  gin_flags.parse_gin_only(argv, default_files=["gin/runs/data_report.gin"])
  report = make_report()
  print(markdown(report))

