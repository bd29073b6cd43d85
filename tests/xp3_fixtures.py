"""Raw datasets in the Hugging Face Hub's column layouts, for the xP3 builder's acceptance tests.

`write_raw(data_dir)` lays them out as `xmtf_jax.xp3build.raw_rows` reads them
(`{data_dir}/{dataset}/{subset}/...`), each dataset in a different on-disk format: JSON lines, a JSON
array, CSV, per-split parquet, Hub-style sharded parquet and a `datasets` `save_to_disk` folder
(written with pyarrow alone: the Arrow stream files, `state.json`, `dataset_info.json` and
`dataset_dict.json` that `datasets.DatasetDict.save_to_disk` writes).

The rows carry the traps the expected files in `tests/data/xp3_expected/` were written by hand for:
`/` and non-ASCII characters, `|||` inside a field, fields that make some template render empty,
duplicate rows (kept in per-template files, removed from the merged file), more rows than the spec's
cap of 2 (xquad), code with leading/trailing whitespace, test labels of -1 (boolq), a text longer than
promptsource's 2,048-character truncation (xlsum), and splits a train build must leave out
(`validation`). Nothing here renders a template: tests/data/xp3_expected.md says how each expected
line follows from the template texts.
"""
from __future__ import annotations

import csv
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

LONG_SWAHILI_TEXT = "maji " * 1200 + "MWISHO"  # 6,006 characters


def _paws_x_en() -> dict:
  row = lambda i, s1, s2, label: {"id": i, "sentence1": s1, "sentence2": s2, "label": label}
  return {
      "train": [
          row(1, "The river flows north/south through Zürich.",
              "Through Zürich the river flows north/south.", 1),
          row(2, "A cat sat.", "A dog sat.", 0),
          row(3, "A cat sat.", "A dog sat.", 0),  # a duplicate row, different id
          row(4, "Use a ||| b as the separator.", "Use a ||| b to separate.", 1),
      ],
      "validation": [row(10, "Validation only sentence.", "Never in a train build.", 1),
                     row(11, "Another validation row.", "Also left out.", 0)],
      "test": [row(20, "Test sentence one.", "Test sentence two.", 1),
               row(21, "Another test pair.", "A different pair.", 0)],
  }


def _xquad_en() -> dict:
  def row(i, context, question, answer):
    return {"id": i, "context": context, "question": question,
            "answers": {"text": [answer], "answer_start": [context.index(answer)]}}
  return {"validation": [
      row("x1", "Alpha: Paris is the capital of France.", "What is the capital of France?", "Paris"),
      row("x2", "Beta: the Rhine flows through Basel/Basle.", "Which river flows through Basel?",
          "the Rhine"),
      row("x3", "Gamma: Bern is the Swiss capital.", "What is the Swiss capital?", "Bern"),
      row("x4", "Delta: the Alps reach Österreich too.", "Which mountains?", "Alps"),
  ]}


def _xlsum_swahili() -> dict:
  def row(split, i, title, target, text):
    return {"gem_id": f"swahili_{split}_{i}", "url": f"https://www.bbc.com/swahili/habari-{i}",
            "title": title, "target": target, "references": [target], "text": text}
  return {
      "train": [
          row("train", 1, "Mvua kubwa Dar es Salaam", "Mvua imenyesha kwa siku tatu.",
              "Mvua kubwa imenyesha jijini Dar es Salaam kwa siku tatu mfululizo."),
          row("train", 2, "Maji", "Makala ndefu kuhusu maji.", LONG_SWAHILI_TEXT),
          row("train", 3, "Bila muhtasari", "", "Makala hii haina muhtasari."),  # empty target
      ],
      "validation": [row("validation", 4, "Habari za uthibitisho", "Haitumiwi.", "Haitumiwi kamwe.")],
      "test": [row("test", 5, "Uchaguzi 2020/2021", "Uchaguzi umefanyika.",
                   "Wananchi walipiga kura.")],
  }


def _flores_aka_ibo() -> dict:
  def row(i, aka, ibo):
    return {"id": i, "URL": f"https://en.wikinews.org/wiki/Story_{i}", "domain": "wikinews",
            "topic": "travel", "has_image": 0, "has_hyperlink": i % 2,
            "sentence_aka_Latn": aka, "sentence_ibo_Latn": ibo}
  return {
      "dev": [row(1, "Ɔkwan no yɛ tenten.", "Ụzọ ahụ dị ogologo."),
              row(2, "Mɛba da 9/10.", "Aga m abịa na 9/10."),
              row(3, "Ɛyɛ \"papa\", ɔka sɛ.", "Ọ dị \"mma\", ka o kwuru.")],
      "devtest": [row(4, "Akwadaa no resu.", "Nwatakịrị ahụ na-ebe ákwá.")],
  }


def _mbpp_sanitized() -> dict:
  def row(task_id, prompt, code):
    return {"source_file": "Benchmark Questions Verification V2.ipynb", "task_id": task_id,
            "prompt": prompt, "code": code, "test_imports": [],
            "test_list": [f"assert task_{task_id}() is not None"]}
  return {
      "train": [
          row(601, "Write a function to add two numbers.", "def add(a, b):\n    return a + b\n"),
          row(602, "  Write a function that returns the path a/b.\n",
              "\n\ndef path():\n    return \"a/b\"\n\n"),
      ],
      "validation": [row(511, "Validation prompt, left out of train builds.", "pass\n")],
      "test": [row(11, "Write a python function to set x.", "    x = 1\n")],
      "prompt": [row(2, "Write a function to find the shared elements.",
                     "def similar_elements(a, b):\n\treturn tuple(set(a) & set(b))")],
  }


def _boolq() -> dict:
  def row(i, question, passage, label):
    return {"question": question, "passage": passage, "idx": i, "label": label}
  return {
      "train": [
          row(0, "is persian a western iranian language",
              "Persian (/ˈpɜːrʒən/) is a Western Iranian language.", 1),
          row(1, "is ethanol made from oil", "Ethanol fuel is made from corn.", 0),
      ],
      "validation": [row(0, "is this used", "Validation rows are left out of a train build.", 0)],
      "test": [row(0, "is the sky blue", "The sky is blue.", -1)],  # hidden label
  }


def _xnli_en() -> dict:
  row = lambda p, h, label: {"premise": p, "hypothesis": h, "label": label}
  return {
      "train": [row("A man plays a guitar.", "A person makes music.", 0),
                row("Kids play outside.", "Kids are asleep.", 2)],
      "validation": [row("It is noon.", "It is night.", 2)],
      "test": [row("It rains.", "The ground is wet.", 1)],
  }


def _write_jsonl(folder, splits):
  for split, rows in splits.items():
    with open(os.path.join(folder, f"{split}.jsonl"), "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _write_json_array(folder, splits):
  for split, rows in splits.items():
    with open(os.path.join(folder, f"{split}.json"), "w", encoding="utf-8") as f:
      json.dump(rows, f, ensure_ascii=False, indent=1)


def _write_csv(folder, splits):
  for split, rows in splits.items():
    with open(os.path.join(folder, f"{split}.csv"), "w", encoding="utf-8", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=list(rows[0]))
      writer.writeheader()
      writer.writerows(rows)


def _table(rows, schema):
  return pa.Table.from_pylist(rows, schema=schema)


XLSUM_SCHEMA = pa.schema([("gem_id", pa.string()), ("url", pa.string()), ("title", pa.string()),
                          ("target", pa.string()), ("references", pa.list_(pa.string())),
                          ("text", pa.string())])
MBPP_SCHEMA = pa.schema([("source_file", pa.string()), ("task_id", pa.int32()),
                         ("prompt", pa.string()), ("code", pa.string()),
                         ("test_imports", pa.list_(pa.string())),
                         ("test_list", pa.list_(pa.string()))])
XQUAD_SCHEMA = pa.schema([("id", pa.string()), ("context", pa.string()), ("question", pa.string()),
                          ("answers", pa.struct([("text", pa.list_(pa.string())),
                                                 ("answer_start", pa.list_(pa.int32()))]))])
# `datasets` features of the xquad columns, as dataset_info.json and the Arrow schema metadata hold them.
_STRING = {"dtype": "string", "_type": "Value"}
XQUAD_FEATURES = {"id": _STRING, "context": _STRING, "question": _STRING,
                  "answers": {"feature": {"text": _STRING,
                                          "answer_start": {"dtype": "int32", "_type": "Value"}},
                              "_type": "Sequence"}}


def _write_parquet_per_split(folder, splits, schema):
  for split, rows in splits.items():
    pq.write_table(_table(rows, schema), os.path.join(folder, f"{split}.parquet"))


def _write_hub_parquet(folder, splits, schema):
  """The Hub's parquet export naming: `{split}-00000-of-00001.parquet`."""
  for split, rows in splits.items():
    pq.write_table(_table(rows, schema), os.path.join(folder, f"{split}-00000-of-00001.parquet"))


def _write_save_to_disk(folder, splits, schema, features):
  """What `DatasetDict.save_to_disk` writes: an Arrow IPC stream per split plus its JSON sidecars."""
  metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
  for split, rows in splits.items():
    os.makedirs(os.path.join(folder, split))
    table = _table(rows, schema.with_metadata(metadata))
    with pa.OSFile(os.path.join(folder, split, "data-00000-of-00001.arrow"), "wb") as sink:
      with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    state = {"_data_files": [{"filename": "data-00000-of-00001.arrow"}],
             "_fingerprint": f"fixture{split}", "_format_columns": None, "_format_kwargs": {},
             "_format_type": None, "_output_all_columns": False, "_split": split}
    info = {"citation": "", "description": "", "features": features, "homepage": "", "license": ""}
    for name, content in (("state.json", state), ("dataset_info.json", info)):
      with open(os.path.join(folder, split, name), "w") as f:
        json.dump(content, f, indent=2)
  with open(os.path.join(folder, "dataset_dict.json"), "w") as f:
    json.dump({"splits": list(splits)}, f)


def datasets_in_spec() -> list:
  """(dataset, subset, rows per split) of every fixture; xnli/en is the held-out one."""
  return [("paws-x", "en", _paws_x_en()), ("xquad", "xquad.en", _xquad_en()),
          ("GEM/xlsum", "swahili", _xlsum_swahili()),
          ("facebook/flores", "aka_Latn-ibo_Latn", _flores_aka_ibo()),
          ("Muennighoff/mbpp", "sanitized", _mbpp_sanitized()), ("super_glue", "boolq", _boolq()),
          ("xnli", "en", _xnli_en())]


def write_raw(data_dir: str) -> str:
  """Writes every fixture dataset under data_dir (which must not hold them yet); returns data_dir."""
  writers = {
      "paws-x": _write_jsonl,
      "xquad": lambda d, s: _write_save_to_disk(d, s, XQUAD_SCHEMA, XQUAD_FEATURES),
      "GEM/xlsum": lambda d, s: _write_parquet_per_split(d, s, XLSUM_SCHEMA),
      "facebook/flores": _write_csv,
      "Muennighoff/mbpp": lambda d, s: _write_hub_parquet(d, s, MBPP_SCHEMA),
      "super_glue": _write_json_array,
      "xnli": _write_jsonl,
  }
  for dataset, subset, splits in datasets_in_spec():
    folder = os.path.join(data_dir, dataset, subset)
    os.makedirs(folder)
    writers[dataset](folder, splits)
  return data_dir
