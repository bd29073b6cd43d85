"""Small datasets in the published xP3 / xP3x / P3 layouts, and a tiny SentencePiece model, for tests.

Sizes are chosen so that mixing rates can be computed by hand (see the EXPECTED_* tables).
"""
from __future__ import annotations

import io
import json
import os
import zipfile

import sentencepiece as spm

# Sentences per language, including non-Latin scripts and code (with tabs and newlines).
SAMPLES = {
    "en": ("Translate to French: the cat sleeps on the mat, number {i}.", "le chat dort {i}"),
    "ar": ("ترجم إلى الإنجليزية: القطة نائمة على السجادة رقم {i}", "the cat sleeps {i}"),
    "zh": ("把这句话翻译成英文：猫在垫子上睡觉，第{i}句。", "the cat is sleeping {i}"),
    "hi": ("अंग्रेज़ी में अनुवाद करें: बिल्ली चटाई पर सो रही है {i}", "the cat is sleeping {i}"),
    "code": ("def add_{i}(a, b):\n\treturn a + b  # what is the complexity?", "O(1) for case {i}"),
    "eng_Latn": ("Is this sentence positive? I loved film {i}.", "yes {i}"),
    "zho_Hans": ("这句话是正面的吗？我喜欢第{i}部电影。", "是的 {i}"),
    "python": ("# sum a list\ndef total_{i}(xs):\n    return sum(xs)", "def total_{i}(xs): ..."),
    "jupyter-notebook": ("In [{i}]: import numpy as np\nWhat does this cell do?", "imports numpy {i}"),
}


def record(lang: str, i: int, tag: str = "") -> dict:
  inputs, targets = SAMPLES[lang]
  return {"inputs": f"{tag}{inputs.format(i=i)}", "targets": targets.format(i=i)}


def write_jsonl(path: str, records, raw_lines=()) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n")
    for line in raw_lines:
      f.write(line + b"\n")


def train_tiny_spm(path: str, vocab_size: int = 400) -> str:
  """A lossless (identity normalisation) SentencePiece model with mT5's ids: pad 0, eos 1, unk 2."""
  texts = []
  for lang in SAMPLES:
    for i in range(30):
      texts += list(record(lang, i).values())
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="unigram",
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, byte_fallback=True, character_coverage=1.0,
      normalization_rule_name="identity", remove_extra_whitespaces=False, num_threads=1,
      split_by_whitespace=True, minloglevel=2)
  with open(path, "wb") as f:
    f.write(model.getvalue())
  return path


# xP3 layout: language -> train examples read by its task (merged file when nothing is held out).
EXPECTED_XP3_TRAIN = {"en": 12, "ar": 10, "zh": 3, "hi": 8, "code": 9}
EXPECTED_XP3_VALIDATION = {"en": 3, "hi": 2}


def make_xp3(root: str) -> dict:
  """Writes an xP3-layout folder; returns {lang: {split: [records]}} of what the tasks must read."""
  expected = {}
  # en: two per-prompt train files (7 + 5), one validation file, and as in xP3 merged_en.jsonl is
  # the shuffled union of all three: training must read the train files, not the merged file.
  a = [record("en", i, "[a] ") for i in range(7)]
  b = [record("en", i, "[b] ") for i in range(5)]
  write_jsonl(f"{root}/en/xp3_glue_mrpc_train_same-meaning.jsonl", a)
  write_jsonl(f"{root}/en/xp3_paws_labeled_final_train_task_description-no-label.jsonl", b)
  val = [record("en", i, "[val] ") for i in range(3)]
  write_jsonl(f"{root}/en/xp3_paws_labeled_final_validation_task_description-no-label.jsonl", val)
  write_jsonl(f"{root}/en/merged_en.jsonl",
              [b[2], val[1], a[0], a[3]] + a[1:3] + val[:1] + a[4:] + b[:2] + val[2:] + b[3:])
  expected["en"] = {"train": a + b, "validation": val}
  # ar: per-prompt files only (4 + 6).
  ar1, ar2 = [record("ar", i, "[1] ") for i in range(4)], [record("ar", i, "[2] ") for i in range(6)]
  write_jsonl(f"{root}/ar/xp3_xquad_xquad.ar_train_answer_the_question.jsonl", ar1)
  write_jsonl(f"{root}/ar/xp3_xquad_xquad.ar_train_given_context.jsonl", ar2)
  expected["ar"] = {"train": ar1 + ar2}
  zh = [record("zh", i) for i in range(3)]
  write_jsonl(f"{root}/zh/xp3_clue_c3_train_answer-question.jsonl", zh)
  expected["zh"] = {"train": zh}
  hi, hi_val = [record("hi", i) for i in range(8)], [record("hi", i, "[val] ") for i in range(2)]
  write_jsonl(f"{root}/hi/xp3_GEM_xlsum_hindi_train_summarize.jsonl", hi)
  write_jsonl(f"{root}/hi/xp3_GEM_xlsum_hindi_validation_summarize.jsonl", hi_val)
  expected["hi"] = {"train": hi, "validation": hi_val}
  code = [record("code", i) for i in range(9)]
  write_jsonl(f"{root}/code/merged_code.jsonl", code)
  expected["code"] = {"train": code}
  with open(f"{root}/README.md", "w") as f:
    f.write("files at the root are not language folders\n")
  os.makedirs(f"{root}/.cache/huggingface")  # left by `huggingface-cli download`: not a language
  return expected


EXPECTED_XP3X_TRAIN = {"eng_Latn": 5, "zho_Hans": 4, "python": 3, "jupyter_notebook": 2}
XP3X_FIELDS = ("inputs", "targets", "language", "split", "template", "dataset", "config")


def make_xp3x(root: str) -> dict:
  expected, paths = {}, {}
  specs = {"eng_Latn": [("xp3x_imdb_plain_text_train_Reviewer_Enjoyment?.jsonl", 3),
                        ("xp3x_super_glue_boolq_train_yes,no_question.jsonl", 2)],
           "zho_Hans": [("xp3x_clue_tnews_train_classify.jsonl", 4)],
           "python": [("xp3x_codeparrot_apps_all_train_solve.jsonl", 3)],
           "jupyter-notebook": [("xp3x_codeparrot_github_jupyter_text_code_pairs_train_md.jsonl", 2)]}
  for code, files in specs.items():
    recs = []
    for name, n in files:
      rows = [dict(record(code, i, f"[{name[:12]}] "), language=code, split="train",
                   template=name.split("_")[-1][:-6], dataset="ds", config="cfg")
              for i in range(n)]
      write_jsonl(f"{root}/data/{code}/{name}", rows)
      paths.setdefault(code, []).append(f"data/{code}/{name}")
      recs += rows
    expected[code] = {"train": recs}
  with open(f"{root}/paths.json", "w") as f:
    json.dump(paths, f)
  return expected


def make_p3(root: str) -> dict:
  train = [{"inputs": f"P3 question {i}: is the sky blue?", "targets": f"yes {i}"} for i in range(11)]
  val = [{"inputs": f"P3 validation {i}: is grass green?", "targets": f"yes {i}"} for i in range(4)]
  os.makedirs(root, exist_ok=True)
  with zipfile.ZipFile(f"{root}/p31t0_train.zip", "w") as z:
    z.writestr("p31t0_train.jsonl", "".join(json.dumps(r) + "\n" for r in train))
  write_jsonl(f"{root}/p31t0_validation.jsonl", val)
  return {"en": {"train": train, "validation": val}}
