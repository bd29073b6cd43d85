"""The paper's held-out evaluation sets (XNLI, XCOPA, XStoryCloze, XWinograd) as prompted examples.

Raw files are read from disk in the datasets' published (HF datasets) field layouts, checked field by
field, rendered with promptsource templates (`xmtf_jax.templates`) and turned into seqio tasks, one
per dataset, language and prompt (`xmtf_jax.heldout_tasks`).

Expected raw files, under one data folder (any of .jsonl, .json (JSON lines), .tsv, .csv with a
header row, or .parquet — several `{split}*` files of a language are read in name order):

    {data_dir}/xnli/{lang}/validation.jsonl           premise, hypothesis, label (0 entailment, 1 neutral, 2 contradiction)
    {data_dir}/xcopa/{lang}/validation.jsonl          premise, choice1, choice2, question ("cause"/"effect"), label (0/1)
    {data_dir}/xstory_cloze/{lang}/validation.jsonl   input_sentence_1..4, sentence_quiz1, sentence_quiz2, answer_right_ending (1/2)
    {data_dir}/xwinograd/{lang}/test.jsonl            sentence (with "_"), option1, option2, answer ("1"/"2")

Other fields are kept and visible to templates.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

from xmtf_jax import paths
from xmtf_jax.data import records as records_lib
from xmtf_jax.data.records import RAW_EXTENSIONS, read_records  # noqa: F401  (heldout.read_records)
from xmtf_jax.errors import UserError
from xmtf_jax.prompts import templates as templates_lib


class HeldoutDataError(records_lib.RecordsError):
  """A raw held-out file that is missing, unreadable, or not in the published layout."""


@dataclasses.dataclass(frozen=True)
class Field:
  """One required raw field: how to coerce it and which values are allowed (None: any)."""
  name: str
  kind: Callable[[Any], Any]
  allowed: tuple | None = None


@dataclasses.dataclass(frozen=True)
class HeldoutDataset:
  """A held-out evaluation set: where its prompts live in promptsource and its raw layout."""
  name: str                 # our short name, also the folder under data_dir
  promptsource_name: str    # the dataset's folder in promptsource's templates
  split: str
  languages: tuple[str, ...]
  fields: tuple[Field, ...]
  # Column names of other published copies, mapped to the layout above (e.g. the English
  # StoryCloze 2016 CSV that XStoryCloze's English split comes from).
  aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)


def _text(value: Any) -> str:
  if not isinstance(value, str):
    raise TypeError(f"expected text, found {type(value).__name__} {value!r}")
  return value


def _integer(value: Any) -> int:
  if isinstance(value, bool):
    raise TypeError(f"expected an integer, found {value!r}")
  if isinstance(value, int):
    return value
  if isinstance(value, float) and value.is_integer():
    return int(value)
  if isinstance(value, str) and value.strip().lstrip("-").isdigit():
    return int(value.strip())
  raise TypeError(f"expected an integer, found {type(value).__name__} {value!r}")


def _digit_text(value: Any) -> str:
  """XWinograd's `answer` is the text "1"/"2"; tsv/parquet copies may hold the number."""
  return str(_integer(value))


HELDOUT_DATASETS: dict[str, HeldoutDataset] = {d.name: d for d in (
    HeldoutDataset(
        name="xnli", promptsource_name="xnli", split="validation",
        languages=("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi",
                   "zh"),
        fields=(Field("premise", _text), Field("hypothesis", _text),
                Field("label", _integer, (0, 1, 2)))),
    HeldoutDataset(
        name="xcopa", promptsource_name="xcopa", split="validation",
        languages=("et", "ht", "id", "it", "qu", "sw", "ta", "th", "tr", "vi", "zh"),
        fields=(Field("premise", _text), Field("choice1", _text), Field("choice2", _text),
                Field("question", _text, ("cause", "effect")), Field("label", _integer, (0, 1)))),
    HeldoutDataset(
        name="xstory_cloze", promptsource_name="Muennighoff/xstory_cloze", split="validation",
        languages=("ar", "en", "es", "eu", "hi", "id", "my", "ru", "sw", "te", "zh"),
        fields=tuple(Field(f"input_sentence_{i}", _text) for i in range(1, 5)) + (
            Field("sentence_quiz1", _text), Field("sentence_quiz2", _text),
            Field("answer_right_ending", _integer, (1, 2))),
        aliases={"InputStoryid": "story_id", "InputSentence1": "input_sentence_1",
                 "InputSentence2": "input_sentence_2", "InputSentence3": "input_sentence_3",
                 "InputSentence4": "input_sentence_4", "RandomFifthSentenceQuiz1": "sentence_quiz1",
                 "RandomFifthSentenceQuiz2": "sentence_quiz2",
                 "AnswerRightEnding": "answer_right_ending"}),
    HeldoutDataset(
        name="xwinograd", promptsource_name="Muennighoff/xwinograd", split="test",
        languages=("en", "fr", "jp", "pt", "ru", "zh"),
        fields=(Field("sentence", _text), Field("option1", _text), Field("option2", _text),
                Field("answer", _digit_text, ("1", "2")))),
)}



def get_dataset(name: str) -> HeldoutDataset:
  try:
    return HELDOUT_DATASETS[name]
  except KeyError:
    raise HeldoutDataError(f"unknown held-out dataset '{name}'; known: {sorted(HELDOUT_DATASETS)}") from None


# ----------------------------------------------------------------------------------------------
# Raw files.

def raw_files(data_dir: str, dataset: str, language: str, split: str | None = None) -> list[str]:
  """The raw files of one dataset and language under `data_dir` (see the module docstring)."""
  spec = get_dataset(dataset)
  split = split or spec.split
  folder = paths.join(data_dir, spec.name, language)
  found = sorted(path for ext in RAW_EXTENSIONS
                 for path in paths.glob(paths.join(paths.escape(folder), f"{split}*{ext}")))
  if not found:
    raise HeldoutDataError(
        f"no {spec.name} {split} file for language '{language}': expected {folder}/{split}.jsonl "
        f"(or {split}*.tsv/.csv/.parquet) with fields {[f.name for f in spec.fields]}")
  return found


def check_record(spec: HeldoutDataset, record: Mapping[str, Any], where: str) -> dict:
  """Renames alias columns, coerces and validates the required fields; errors name `where`."""
  record = {spec.aliases.get(k, k): v for k, v in record.items()}
  for field in spec.fields:
    if field.name not in record:
      raise HeldoutDataError(f"{where}: missing field '{field.name}' ({spec.name} records need "
                             f"{[f.name for f in spec.fields]}; found {sorted(record)})")
    try:
      value = field.kind(record[field.name])
    except TypeError as e:
      raise HeldoutDataError(f"{where}: field '{field.name}': {e}") from None
    if field.allowed is not None and value not in field.allowed:
      raise HeldoutDataError(f"{where}: field '{field.name}' is {value!r}; {spec.name} allows "
                             f"{list(field.allowed)} (a label outside the answer choices, or "
                             "unlabelled test data)")
    record[field.name] = value
  return record


def load_raw_examples(dataset: str, paths: Sequence[str]) -> list[tuple[str, dict]]:
  """Reads and checks raw records; returns (`file:line`, record) pairs."""
  spec = get_dataset(dataset)
  examples = []
  for path in paths:
    for line_number, record in read_records(path):
      where = f"{path}:{line_number}"
      examples.append((where, check_record(spec, record, where)))
  if not examples:
    raise HeldoutDataError(f"{', '.join(paths)}: no records")
  return examples


# ----------------------------------------------------------------------------------------------
# Prompts.

def prompt_templates(templates_root: str, dataset: str, language: str, variant: str = "en",
                     names: Sequence[str] | None = None) -> list[templates_lib.PromptTemplate]:
  """The templates evaluating `dataset` in `language`.

  variant "en": the English prompts (the paper's main setting, xP3); "ht" / "mt": prompts human- or
  machine-translated into `language` (the xP3mt comparison), named `{name}_{lang}ht` / `_{lang}mt`.
  English data always gets the English prompts. `names` restricts the prompts (translated prompts
  match on their name without the suffix); None keeps every template.
  """
  spec = get_dataset(dataset)
  if variant not in ("en", "ht", "mt"):
    raise UserError(f"HeldoutSuite.prompt_variant must be 'en', 'ht' or 'mt', not {variant!r}")
  if variant == "en" or language == "en":
    found = templates_lib.load_templates(
        templates_lib.templates_file(templates_root, spec.promptsource_name, "en"))
  else:
    try:
      path = templates_lib.templates_file(templates_root, spec.promptsource_name, language)
    except templates_lib.TemplateError:
      return []  # no prompts were written in this language
    found = [t for t in templates_lib.load_templates(path)
             if t.translation is not None and t.translation[1] == variant]
  if names is not None:
    wanted = set(names)
    found = [t for t in found if t.base_name in wanted]
  return found


def render_examples(template: templates_lib.PromptTemplate, raw_examples: Sequence[tuple[str, dict]],
                    *, dataset: str, language: str) -> tuple[list[dict], int]:
  """Renders raw examples into rank-classification records.

  Returns (records, number of examples the template does not apply to). Each record holds
  `inputs`, `targets`, `answer_choices`, `label` (index of the target among the choices) and the
  metadata `dataset`, `language`, `template`, `source` (file:line). A target that is not one of the
  answer choices is an error naming the template, its file and the example.
  """
  records, not_applicable = [], 0
  for where, raw in raw_examples:
    rendered = template.render(raw, example_id=where)
    if rendered is None:
      not_applicable += 1
      continue
    if not rendered.answer_choices:
      raise templates_lib.TemplateError(f"{template.describe()}: has no answer_choices, so it cannot "
                                        "be scored by rank classification")
    if rendered.target is None or rendered.target not in rendered.answer_choices:
      raise templates_lib.TemplateError(
          f"{template.describe()}: example {where}: target {rendered.target!r} is not one of the "
          f"answer choices {list(rendered.answer_choices)}; check the example's label")
    records.append(dict(inputs=rendered.inputs, targets=rendered.target,
                        answer_choices=list(rendered.answer_choices),
                        label=rendered.answer_choices.index(rendered.target), dataset=dataset,
                        language=language, template=template.name, source=where))
  return records, not_applicable
