"""Registers the held-out evaluation sets as seqio tasks: one per dataset, language and prompt.

    task_names = register_heldout_tasks(data_dir="/data/heldout", templates_root="~/promptsource",
                                        vocabulary=vocab, prompt_variant="en",
                                        prompt_names=PAPER_PROMPTS)

Each task yields examples with `inputs` / `targets` (tokenized, plus `*_pretokenized` text),
`answer_choices` (the rendered choices as a 1-D string tensor), `label` (index of the correct choice)
and the metadata `dataset`, `language`, `template`, `source` (raw file:line) — the record layout
`xmtf_jax.rank_classification` scores. Raw files are read and rendered on first use, so registering
the whole suite is cheap; missing files and unknown prompts are reported at registration.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import re
from typing import Mapping, Sequence

import seqio
import tensorflow as tf

from xmtf_jax import paths
from xmtf_jax.errors import UserError
from xmtf_jax.evaluation import heldout

# The five prompts per dataset the paper evaluates (median over these). Translated prompts carry the
# same names plus `_{lang}ht` / `_{lang}mt`; XCOPA's translated files shorten one name.
PAPER_PROMPTS: dict[str, tuple[str, ...]] = {
    "xnli": ("GPT-3 style", "MNLI crowdsource", "can we infer", "guaranteed/possible/impossible",
             "justified in saying"),
    "xcopa": ("best_option", "C1 or C2? premise, so/because\u2026", "C1 or C2? premise",
              "cause_effect", "i_am_hesitating", "plausible_alternatives"),
    "xstory_cloze": ("Answer Given options", "Choose Story Ending", "Generate Ending",
                     "Novel Correct Ending", "Story Continuation and Options"),
    "xwinograd": ("Replace", "True or False", "does underscore refer to", "stand for",
                  "underscore refer to"),
}


@dataclasses.dataclass(frozen=True)
class PromptedTaskInfo:
  """What one registered held-out task evaluates."""
  task_name: str
  dataset: str
  language: str
  template: str
  prompt_variant: str
  template_file: str
  raw_files: tuple[str, ...]
  split: str


# task name -> info, for every task registered in this process.
TASK_INFO: dict[str, PromptedTaskInfo] = {}
# task name -> examples its template does not apply to (known once the task's data was read).
NOT_APPLICABLE: dict[str, int] = {}


def task_name(prefix: str, dataset: str, language: str, template_name: str) -> str:
  """A seqio-safe task name: `{prefix}_{dataset}_{language}_{template slug}`."""
  slug = re.sub(r"[^0-9a-z]+", "_", template_name.lower()).strip("_") or "prompt"
  return f"{prefix}_{dataset}_{language}_{slug}"


@functools.lru_cache(maxsize=64)
def _raw_examples(dataset: str, paths: tuple[str, ...]) -> tuple[tuple[str, dict], ...]:
  return tuple(heldout.load_raw_examples(dataset, paths))


def records_to_dataset(records: Sequence[dict]) -> tf.data.Dataset:
  """Rank-classification records (see `heldout.render_examples`) as a tf.data.Dataset."""
  text_fields = ("inputs", "targets", "dataset", "language", "template", "source")
  columns = {k: tf.constant([r[k] for r in records], tf.string) for k in text_fields}
  columns["answer_choices"] = tf.ragged.constant([r["answer_choices"] for r in records],
                                                 dtype=tf.string)
  columns["label"] = tf.constant([r["label"] for r in records], tf.int32)
  return tf.data.Dataset.from_tensor_slices(columns)


def _make_dataset_fn(info: PromptedTaskInfo, template):
  def dataset_fn(split: str, shuffle_files: bool, seed=None):
    del shuffle_files, seed  # one deterministic pass: evaluation order is the file order
    if split != info.split:
      raise UserError(f"task {info.task_name} has only the '{info.split}' split, not '{split}'")
    raw = _raw_examples(info.dataset, info.raw_files)
    records, skipped = heldout.render_examples(template, raw, dataset=info.dataset,
                                               language=info.language)
    NOT_APPLICABLE[info.task_name] = skipped
    if skipped:
      logging.info("%s: template '%s' does not apply to %d of %d examples (promptsource "
                   "condition in the template); they are not scored", info.task_name,
                   template.name, skipped, len(raw))
    if not records:
      raise heldout.HeldoutDataError(f"{template.describe()}: applies to none of the "
                                     f"{len(raw)} examples in {list(info.raw_files)}")
    return records_to_dataset(records)
  return dataset_fn


def register_heldout_tasks(*, data_dir: str, templates_root: str, vocabulary: seqio.Vocabulary,
                           datasets: Sequence[str] | None = None,
                           languages: Mapping[str, Sequence[str]] | None = None,
                           prompt_variant: str = "en",
                           prompt_names: Mapping[str, Sequence[str]] | None = None,
                           prefix: str = "heldout") -> list[str]:
  """Registers one seqio task per (dataset, language, prompt); returns their names.

  datasets: names from `heldout.HELDOUT_DATASETS` (default all four). languages: per dataset, the
  languages to evaluate (default the paper's). prompt_variant: "en", "ht" or "mt" (see
  `heldout.prompt_templates`). prompt_names: per dataset, the templates to use (default: all that
  render a target; `PAPER_PROMPTS` for the paper's suite). Inputs are tokenized without EOS, targets
  with EOS, as the paper scores them. Re-registering a name replaces the task.
  """
  names = []
  for dataset in datasets or tuple(heldout.HELDOUT_DATASETS):
    spec = heldout.get_dataset(dataset)
    wanted = None if prompt_names is None else prompt_names.get(dataset)
    for language in (languages or {}).get(dataset, spec.languages):
      templates = heldout.prompt_templates(templates_root, dataset, language, prompt_variant, wanted)
      if not templates:
        logging.warning("no %s prompts for %s/%s under %s; skipped", prompt_variant, dataset,
                        language, templates_root)
        continue
      paths = tuple(heldout.raw_files(data_dir, dataset, language))
      for template in templates:
        if template.answer_choices is None:
          logging.info("skipping template '%s' (%s): no answer_choices to rank", template.name,
                       template.source)
          continue
        name = task_name(prefix, dataset, language, template.name)
        if name in TASK_INFO and TASK_INFO[name].template != template.name:
          name = f"{name}_{template.id[:8]}"
        info = PromptedTaskInfo(task_name=name, dataset=dataset, language=language,
                                template=template.name, prompt_variant=prompt_variant,
                                template_file=template.source, raw_files=paths, split=spec.split)
        seqio.TaskRegistry.remove(name)
        seqio.TaskRegistry.add(
            name,
            source=seqio.FunctionDataSource(_make_dataset_fn(info, template), splits=(spec.split,)),
            preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
            output_features={"inputs": seqio.Feature(vocabulary, add_eos=False),
                             "targets": seqio.Feature(vocabulary, add_eos=True)},
            metric_fns=[])
        TASK_INFO[name] = info
        names.append(name)
  if not names:
    raise heldout.HeldoutDataError(f"no held-out tasks registered from {data_dir} with "
                                   f"{prompt_variant} prompts under {templates_root}")
  return names


@dataclasses.dataclass
class HeldoutSuite:
  """Which held-out sets to build from raw files (see `xmtf_jax.heldout`) and with which prompts.

  prompts: "paper" (the five per dataset the paper reports), "all" (every template with answer
  choices) or a mapping dataset -> template names. prompt_variant: "en" (English prompts, xP3),
  "mt" / "ht" (machine- / human-translated prompts, the xP3mt comparison).
  """
  data_dir: str
  templates_root: str
  datasets: Sequence[str] | None = None
  languages: Mapping[str, Sequence[str]] | None = None
  prompt_variant: str = "en"
  prompts: str | Mapping[str, Sequence[str]] = "paper"
  prefix: str = "heldout"

  def register(self, vocabulary) -> list[str]:
    if self.prompts == "paper":
      names = PAPER_PROMPTS
    elif self.prompts == "all":
      names = None
    elif isinstance(self.prompts, Mapping):
      names = self.prompts
    else:
      raise UserError(f"HeldoutSuite.prompts must be 'paper', 'all' or a mapping, not {self.prompts!r}")
    return register_heldout_tasks(
        data_dir=paths.abspath(self.data_dir),
        templates_root=paths.abspath(self.templates_root), vocabulary=vocabulary,
        datasets=self.datasets, languages=self.languages, prompt_variant=self.prompt_variant,
        prompt_names=names, prefix=self.prefix)
