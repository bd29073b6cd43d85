"""Held-out raw files → checked records → prompted seqio tasks."""
import json
import os

import pytest
import seqio

from xmtf_jax.data import records
from xmtf_jax.evaluation import heldout
from xmtf_jax.evaluation import heldout_tasks
from xmtf_jax.prompts import templates as T

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "promptsource")

XNLI_ROWS = [
    {"premise": "The cat sleeps.", "hypothesis": "An animal rests.", "label": 0},
    {"premise": "It rains.", "hypothesis": "The street is dry.", "label": 2},
    {"premise": "Tom left.", "hypothesis": "Tom was tired.", "label": 1},
]
XCOPA_ROWS = [
    {"premise": "The glass broke.", "choice1": "It fell.", "choice2": "It was full.",
     "question": "cause", "label": 0, "idx": 0},
    {"premise": "I was cold.", "choice1": "I opened a window.", "choice2": "I put on a coat.",
     "question": "effect", "label": 1, "idx": 1},
]


def write_jsonl(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_table(path, rows, delimiter):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  header = list(rows[0])
  with open(path, "w", encoding="utf-8") as f:
    f.write(delimiter.join(header) + "\n")
    for row in rows:
      f.write(delimiter.join(str(row[k]) for k in header) + "\n")


def test_jsonl_tsv_and_parquet_give_the_same_records(tmp_path):
  write_jsonl(tmp_path / "xnli/en/validation.jsonl", XNLI_ROWS)
  write_table(tmp_path / "xnli/fr/validation.tsv", XNLI_ROWS, "\t")
  pa = pytest.importorskip("pyarrow")
  import pyarrow.parquet as pq
  os.makedirs(tmp_path / "xnli/de")
  pq.write_table(pa.Table.from_pylist(XNLI_ROWS),
                 tmp_path / "xnli/de/validation-00000-of-00001.parquet")
  loaded = {}
  for lang in ("en", "fr", "de"):
    paths = heldout.raw_files(str(tmp_path), "xnli", lang)
    loaded[lang] = [record for _, record in heldout.load_raw_examples("xnli", paths)]
  assert loaded["en"] == XNLI_ROWS
  assert loaded["fr"] == XNLI_ROWS  # "0" from the tsv became the integer 0
  assert loaded["de"] == XNLI_ROWS
  where = heldout.load_raw_examples("xnli", heldout.raw_files(str(tmp_path), "xnli", "fr"))[1][0]
  assert where.endswith("validation.tsv:3")


def test_story_cloze_csv_columns_are_mapped(tmp_path):
  row = {"InputStoryid": "x1", "InputSentence1": "A.", "InputSentence2": "B.", "InputSentence3": "C.",
         "InputSentence4": "D.", "RandomFifthSentenceQuiz1": "E1.", "RandomFifthSentenceQuiz2": "E2.",
         "AnswerRightEnding": "2"}
  write_table(tmp_path / "xstory_cloze/en/validation.csv", [row], ",")
  [(_, record)] = heldout.load_raw_examples(
      "xstory_cloze", heldout.raw_files(str(tmp_path), "xstory_cloze", "en"))
  assert record["input_sentence_4"] == "D." and record["answer_right_ending"] == 2
  assert record["story_id"] == "x1"


@pytest.mark.parametrize("rows, message", [
    ([{"premise": "p", "label": 0}], r"validation.jsonl:1: missing field 'hypothesis'"),
    ([XNLI_ROWS[0], dict(XNLI_ROWS[1], label=5)],
     r"validation.jsonl:2: field 'label' is 5; xnli allows \[0, 1, 2\]"),
    ([dict(XNLI_ROWS[0], label="entailment")], r"validation.jsonl:1: field 'label': expected an integer"),
    ([dict(XNLI_ROWS[0], premise=None)], r"field 'premise': expected text"),
])
def test_bad_records_name_file_line_and_field(tmp_path, rows, message):
  write_jsonl(tmp_path / "xnli/en/validation.jsonl", rows)
  with pytest.raises(heldout.HeldoutDataError, match=message):
    heldout.load_raw_examples("xnli", heldout.raw_files(str(tmp_path), "xnli", "en"))


def test_missing_files_say_what_is_expected(tmp_path):
  with pytest.raises(heldout.HeldoutDataError, match=r"xwinograd/pt/test.jsonl.*option1"):
    heldout.raw_files(str(tmp_path), "xwinograd", "pt")
  (tmp_path / "bad.jsonl").write_text('{"premise": 1}\nnot json\n')
  with pytest.raises(records.RecordsError, match=r"bad.jsonl:2: not a JSON object"):
    list(records.read_records(str(tmp_path / "bad.jsonl")))


def test_prompt_variants_pick_english_or_translated_templates():
  names = lambda ts: sorted(t.name for t in ts)  # noqa: E731
  assert names(heldout.prompt_templates(FIXTURES, "xnli", "fr", "en")) == [
      "toy arrow", "toy generate", "toy support"]
  assert names(heldout.prompt_templates(FIXTURES, "xnli", "fr", "mt")) == ["toy support_frmt"]
  assert names(heldout.prompt_templates(FIXTURES, "xnli", "fr", "ht")) == ["toy support_frht"]
  assert names(heldout.prompt_templates(FIXTURES, "xnli", "en", "mt", ["toy support"])) == [
      "toy support"]
  assert heldout.prompt_templates(FIXTURES, "xnli", "de", "mt") == []  # none written in German


def test_render_examples_counts_templates_that_do_not_apply():
  raw = [(f"f.jsonl:{i + 1}", r) for i, r in enumerate(XCOPA_ROWS)]
  templates = {t.name: t for t in heldout.prompt_templates(FIXTURES, "xcopa", "en")}
  records, skipped = heldout.render_examples(templates["toy effects only"], raw, dataset="xcopa",
                                             language="en")
  assert skipped == 1 and len(records) == 1
  assert records[0] == dict(inputs='I was cold. Then: "I opened a window." or "I put on a coat."?',
                            targets="I put on a coat.",
                            answer_choices=["I opened a window.", "I put on a coat."], label=1,
                            dataset="xcopa", language="en", template="toy effects only",
                            source="f.jsonl:2")


def test_target_outside_the_choices_is_an_error(tmp_path):
  path = tmp_path / "t.yaml"
  path.write_text("dataset: xnli\ntemplates:\n  a: !Template\n    name: odd target\n"
                  "    answer_choices: yes ||| no\n    jinja: '{{premise}} ||| maybe'\n")
  [template] = T.load_templates(path)
  with pytest.raises(T.TemplateError, match=r"'odd target'.*t.yaml.*f.jsonl:4.*'maybe' is not one"):
    heldout.render_examples(template, [("f.jsonl:4", XNLI_ROWS[0])], dataset="xnli", language="en")


def test_registered_tasks_yield_prompted_examples(tmp_path):
  write_jsonl(tmp_path / "xnli/en/validation.jsonl", XNLI_ROWS)
  write_jsonl(tmp_path / "xnli/fr/validation.jsonl", XNLI_ROWS[:2])
  write_jsonl(tmp_path / "xcopa/sw/validation.jsonl", XCOPA_ROWS)
  vocabulary = seqio.ByteVocabulary()
  names = heldout_tasks.register_heldout_tasks(
      data_dir=str(tmp_path), templates_root=FIXTURES, vocabulary=vocabulary,
      datasets=["xnli", "xcopa"], languages={"xnli": ["en", "fr"], "xcopa": ["sw"]},
      prompt_variant="mt", prompt_names={"xnli": ["toy support", "toy arrow"]}, prefix="t_heldout")
  assert names == ["t_heldout_xnli_en_toy_arrow", "t_heldout_xnli_en_toy_support",
                   "t_heldout_xnli_fr_toy_support_frmt", "t_heldout_xcopa_sw_toy_why_or_next_swmt"]
  info = heldout_tasks.TASK_INFO["t_heldout_xnli_fr_toy_support_frmt"]
  assert (info.dataset, info.language, info.template, info.split) == (
      "xnli", "fr", "toy support_frmt", "validation")
  task = seqio.get_mixture_or_task("t_heldout_xnli_fr_toy_support_frmt")
  examples = list(task.get_dataset(sequence_length=None, split="validation",
                                   shuffle=False).as_numpy_iterator())
  assert len(examples) == 2
  second = examples[1]
  assert second["inputs_pretokenized"].decode() == (
      "Texte : It rains.\nAffirmation : The street is dry.\nLe texte soutient-il l'affirmation ?")
  assert [c.decode() for c in second["answer_choices"]] == ["Oui", "Peut-être", "Non"]
  assert second["label"] == 2 and second["targets_pretokenized"].decode() == "Non"
  # Inputs carry no EOS; targets end with it (the paper's scoring).
  assert second["inputs"][-1] != 1 and second["targets"][-1] == 1
  assert second["source"].decode().endswith("fr/validation.jsonl:2")
  cause_effect = list(seqio.get_mixture_or_task("t_heldout_xcopa_sw_toy_why_or_next_swmt").get_dataset(
      sequence_length=None, split="validation", shuffle=False).as_numpy_iterator())
  assert [e["inputs_pretokenized"].decode() for e in cause_effect] == [
      "The glass broke. Kwa nini?", "I was cold. Kisha?"]


def _real_root():
  from test_templates import real_templates_root
  return real_templates_root()


@pytest.mark.skipif(_real_root() is None,
                    reason="real promptsource templates not found (set PROMPTSOURCE_TEMPLATES or place "
                           "them at ../shared/promptsource_templates)")
def test_paper_prompts_select_five_per_dataset_and_language_in_the_real_files():
  """English and machine-translated prompts: exactly the paper's five everywhere."""
  root = _real_root()
  for dataset, spec in heldout.HELDOUT_DATASETS.items():
    for variant in ("en", "mt"):
      for language in spec.languages:
        found = heldout.prompt_templates(root, dataset, language, variant,
                                         heldout_tasks.PAPER_PROMPTS[dataset])
        assert len(found) == 5, (dataset, variant, language, [t.name for t in found])
        assert all(t.answer_choices for t in found)
