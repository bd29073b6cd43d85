"""The data report's library part (`python -m xmtf_jax.data_report` writes it out).

Per task of a mixture (or for one task): examples, input/target token counts (mean, p50, p95, max,
EOS included where added), the share of examples truncated at the chosen lengths, the mixing rate,
the packing efficiency (non-pad share of tokens) without and with packing, and bad lines skipped in
lenient mode: `build_report` (a dict: report.json), `markdown`, `plot_language_shares`. Rates are
shares of the mixture named and languages come from xP3-family sub-mixtures (`mixture_shares`);
a task of your own has language null (`-` in the table). Packing is
measured by the batch source training uses (`source_factory.make_batch_source`, one pass): the
indexed pipeline packs next-fit per row, the tf.data one as seqio packs. On big data cap the
examples read per task: statistics are then over a sample.
"""
from __future__ import annotations

import time
from typing import Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

from xmtf_jax import paths
from xmtf_jax.data import batch_source, decoder_only, decoder_only_tf, jsonl_source, mixture_shares
from xmtf_jax.data import source_factory, stats
from xmtf_jax.data import xp3_family
from xmtf_jax.data import tasks as data_tasks
from xmtf_jax.progress import to_stderr

FEATURES = ("inputs", "targets")


def length_stats(lengths: np.ndarray) -> dict:
  if lengths.size == 0:
    return {"mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0}
  return {"mean": float(lengths.mean()), "p50": float(np.percentile(lengths, 50)),
          "p95": float(np.percentile(lengths, 95)), "max": int(lengths.max())}


def untrimmed_lengths(task: seqio.Task, split: str, max_examples: Optional[int],
                      label: str = "", feature_layout: str = decoder_only.ENCODER_DECODER
                      ) -> dict[str, np.ndarray]:
  """Token counts per example (EOS included where the task adds one), before any trimming; for the
  decoder-only layout as it tokenizes: inputs, and " " + targets plus EOS."""
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1,
                        trim_output_features=False)
  if max_examples:
    ds = ds.take(max_examples)
  lengths = {k: [] for k in FEATURES}
  start = time.time()
  vocab = decoder_only_tf.vocabulary_of(task)
  for i, ex in enumerate(ds.as_numpy_iterator(), start=1):
    if feature_layout == decoder_only.DECODER_ONLY:
      lengths["inputs"].append(len(vocab.encode(ex["inputs_pretokenized"].decode("utf-8"))))
      lengths["targets"].append(len(vocab.encode(decoder_only.target_text(
          ex["targets_pretokenized"].decode("utf-8")))) + 1)
      continue
    for k in FEATURES:
      lengths[k].append(len(ex[k]))
    if i % 5000 == 0:
      to_stderr(f"  {label}{task.name}: {i} examples ({i / (time.time() - start):.0f}/s)")
  return {k: np.asarray(v, np.int64) for k, v in lengths.items()}


def packing_pipeline(task: seqio.Task, split: str, pipeline: str) -> str:
  """The pipeline that measures packing for `task`: the one training uses, except that tasks the
  indexed pipeline cannot read by line offset (zip archives, other sources) are read as tf.data
  reads them."""
  source = task.source
  if pipeline == batch_source.INDEXED and not (
      isinstance(source, jsonl_source.JsonlDataSource)
      and not any(f.endswith(".zip") for f in source.files(split))):
    return batch_source.TF_DATA
  return pipeline


def packing_efficiency(task: seqio.Task, split: str, task_feature_lengths: Mapping[str, int],
                       max_examples: Optional[int], pack: bool,
                       pipeline: str = batch_source.INDEXED, rows_per_batch: int = 64,
                       feature_layout: str = decoder_only.ENCODER_DECODER) -> dict:
  """Non-pad share of the token slots of the rows training would build from (a sample of) the task:
  the batch source of `pipeline` in one pass (the indexed one packs next-fit per row, the tf.data
  one as seqio packs), rows holding no example left out. Decoder-only rows have one feature of
  inputs + targets slots: input positions (weight 0) and target positions are shares of those."""
  config = batch_source.SourceConfig(task.name, dict(task_feature_lengths), rows_per_batch,
                                     use_packing=pack,
                                     pipeline=packing_pipeline(task, split, pipeline),
                                     feature_layout=feature_layout)
  if feature_layout == decoder_only.DECODER_ONLY:
    return _decoder_only_efficiency(config, split, max_examples)
  source = source_factory.make_batch_source(config, split, single_pass=True, process_index=0,
                                            process_count=1)
  rows = examples = real_inputs = real_targets = 0
  try:
    for batch in source:
      weights = batch["decoder_loss_weights"]
      used = weights.sum(axis=1) > 0
      rows += int(used.sum())
      examples += int(batch["decoder_segment_ids"].max(axis=1).sum()) if pack else int(used.sum())
      real_inputs += int(np.count_nonzero(batch["encoder_input_tokens"]))
      real_targets += int(np.count_nonzero(weights))
      if max_examples and examples >= max_examples:
        break
  finally:
    source.close()
  slots_in, slots_out = rows * task_feature_lengths["inputs"], rows * task_feature_lengths["targets"]
  share = lambda a, b: a / b if b else 0.0  # noqa: E731
  return {"rows": rows, "examples": examples, "pipeline": config.pipeline,
          "efficiency": share(real_inputs + real_targets, slots_in + slots_out),
          "inputs_efficiency": share(real_inputs, slots_in),
          "targets_efficiency": share(real_targets, slots_out)}


def _decoder_only_efficiency(config: batch_source.SourceConfig, split: str,
                             max_examples: Optional[int]) -> dict:
  source = source_factory.make_batch_source(config, split, single_pass=True, process_index=0,
                                            process_count=1)
  rows = examples = real_inputs = real_targets = 0
  try:
    for batch in source:
      segments, weights = batch["decoder_segment_ids"], batch["decoder_loss_weights"]
      rows += int((segments.max(axis=1) > 0).sum())
      examples += int(segments.max(axis=1).sum())
      real_targets += int(np.count_nonzero(weights))
      real_inputs += int(np.count_nonzero((segments > 0) & (weights == 0)))
      if max_examples and examples >= max_examples:
        break
  finally:
    source.close()
  slots = rows * decoder_only.row_length(config.task_feature_lengths)
  share = lambda a, b: a / b if b else 0.0  # noqa: E731
  return {"rows": rows, "examples": examples, "pipeline": config.pipeline,
          "efficiency": share(real_inputs + real_targets, slots),
          "inputs_efficiency": share(real_inputs, slots),
          "targets_efficiency": share(real_targets, slots)}


def task_report(task: seqio.Task, split: str, task_feature_lengths: Mapping[str, int],
                max_examples: Optional[int], rate: Optional[float], language: Optional[str],
                label: str = "", pipeline: str = batch_source.INDEXED,
                feature_layout: str = decoder_only.ENCODER_DECODER) -> dict:
  read = stats.DataStats(split)  # what this report's reading of the task skipped
  with stats.collecting(read):
    lengths = untrimmed_lengths(task, split, max_examples, label, feature_layout)
  n = int(lengths["inputs"].size)
  row = {"task": task.name, "language": language, "examples_read": n,
         "examples_in_files": task.num_input_examples(split), "mixing_rate": rate}
  for k in FEATURES:
    row[f"{k}_tokens"] = length_stats(lengths[k])
    row[f"{k}_truncated_share"] = float(np.mean(lengths[k] > task_feature_lengths[k])) if n else 0.0
  either = (lengths["inputs"] > task_feature_lengths["inputs"]) | (
      lengths["targets"] > task_feature_lengths["targets"])
  row["truncated_share"] = float(np.mean(either)) if n else 0.0
  row["packing"] = {
      "unpacked": packing_efficiency(task, split, task_feature_lengths, max_examples, False,
                                     pipeline, feature_layout=feature_layout),
      "packed": packing_efficiency(task, split, task_feature_lengths, max_examples, True,
                                   pipeline, feature_layout=feature_layout)}
  row["bad_lines"] = read.bad_lines.counts(task.name)
  row["bad_line_examples"] = read.bad_lines.examples(task.name)
  return row


def _rates_and_languages(provider) -> tuple[dict, dict]:
  return mixture_shares.task_shares(provider), mixture_shares.task_languages(provider)


def build_report(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                 split: str = "train", max_examples_per_task: Optional[int] = 10_000,
                 input_pipeline: str = batch_source.INDEXED,
                 feature_layout: str = decoder_only.ENCODER_DECODER) -> dict:
  """The report as a dict (what report.json holds); packing as `input_pipeline` packs the rows of
  `feature_layout` ('encoder_decoder' or 'decoder_only')."""
  provider = data_tasks.get_mixture_or_task(mixture_or_task_name)
  tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  tasks = [t for t in tasks if split in t.splits]
  rates, languages = _rates_and_languages(provider)
  rows = []
  start = time.time()
  for i, task in enumerate(tasks, start=1):
    label = f"[{i}/{len(tasks)}] "
    to_stderr(f"{label}{task.name} ...")
    try:
      rows.append(task_report(task, split, task_feature_lengths, max_examples_per_task,
                              rates.get(task.name), languages.get(task.name), label,
                              input_pipeline, feature_layout))
    except tf.errors.OpError as e:
      raise jsonl_source.unwrap_tf_error(e) from None
  info = xp3_family.mixture_info(mixture_or_task_name)
  folder_problems = info.layout.problems.examples(mixture_or_task_name, limit=100) if info else []
  packed_examples = sum(r["packing"]["packed"]["examples"] for r in rows)
  total_read = sum(r["examples_read"] for r in rows)
  packed_rows = sum(r["packing"]["packed"]["rows"] for r in rows)
  return {
      "mixture_or_task": mixture_or_task_name, "split": split,
      "task_feature_lengths": dict(task_feature_lengths),
      "max_examples_per_task": max_examples_per_task, "examples_read": total_read,
      "seconds": time.time() - start, "tasks": rows,
      "folder_problems": folder_problems,
      "bad_lines_total": sum(sum(r["bad_lines"].values()) for r in rows),
      "input_pipeline": input_pipeline, "feature_layout": feature_layout,
      "packed_examples_per_row": packed_examples / packed_rows if packed_rows else 0.0,
  }


def markdown(report: dict) -> str:
  lengths = report["task_feature_lengths"]
  lines = [f"# Data report: `{report['mixture_or_task']}` ({report['split']})", "",
           f"Feature lengths: inputs {lengths['inputs']}, targets {lengths['targets']}; "
           f"examples read: {report['examples_read']}"
           + (f" (at most {report['max_examples_per_task']} per task)"
              if report["max_examples_per_task"] else "") + "; bad lines skipped: "
           f"{report['bad_lines_total']}.", "",
           "| task | lang | examples | rate | inputs mean/p50/p95/max | targets mean/p50/p95/max "
           "| truncated in/tgt | packing eff. off → on |",
           "|---|---|---:|---:|---|---|---|---|"]
  for r in report["tasks"]:
    fmt = lambda s: f"{s['mean']:.1f}/{s['p50']:.0f}/{s['p95']:.0f}/{s['max']}"  # noqa: E731
    rate = "" if r["mixing_rate"] is None else f"{r['mixing_rate']:.4f}"
    lines.append(
        f"| {r['task']} | {r['language'] or '-'} | {r['examples_read']} | {rate} | "
        f"{fmt(r['inputs_tokens'])} | {fmt(r['targets_tokens'])} | "
        f"{r['inputs_truncated_share']:.1%} / {r['targets_truncated_share']:.1%} | "
        f"{r['packing']['unpacked']['efficiency']:.1%} → {r['packing']['packed']['efficiency']:.1%} |")
  if any(not r["language"] for r in report["tasks"]):
    lines += ["", "lang `-`: a task of your own (not from an xP3-family folder), which declares no "
              "language."]
  if report["folder_problems"]:
    lines += ["", "Skipped folders/files (lenient mode): " + ", ".join(report["folder_problems"])]
  bad = [(r["task"], r["bad_lines"], r["bad_line_examples"]) for r in report["tasks"] if r["bad_lines"]]
  if bad:
    lines += ["", "Bad lines skipped (lenient mode):", ""]
    lines += [f"- {t}: {counts} e.g. {', '.join(ex)}" for t, counts, ex in bad]
  return "\n".join(lines) + "\n"


def plot_language_shares(report: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = report["tasks"]
  names = [r["language"] or r["task"] for r in rows]
  rates = [r["mixing_rate"] or 0.0 for r in rows]
  tokens = np.array([r["inputs_tokens"]["mean"] + r["targets_tokens"]["mean"] for r in rows])
  token_share = rates * tokens
  token_share = token_share / token_share.sum() if token_share.sum() else token_share
  y = np.arange(len(rows))
  fig, ax = plt.subplots(figsize=(7, 0.28 * len(rows) + 1.5))
  ax.barh(y - 0.2, rates, height=0.4, label="share of examples (mixing rate)")
  ax.barh(y + 0.2, token_share, height=0.4, label="share of tokens (rate × mean length)")
  ax.set_yticks(y, names)
  ax.invert_yaxis()
  ax.set_xlabel("share of the mixture")
  ax.set_title(f"{report['mixture_or_task']}: language shares")
  ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08 - 1.0 / (len(rows) + 4)), ncol=2,
            fontsize=8, frameon=False)
  fig.tight_layout()
  paths.save_figure(fig, path, dpi=100)
  plt.close(fig)
