"""The bundled demo: a small multilingual prompted mixture in xP3's layout (data/demo/).

Registered on `import mixtures` (the files are in the repository, so this is cheap):
  mixture `demo`; tasks `demo_{lang}` (+ per-prompt `demo_{lang}.{file}`), splits train/validation;
  held-out tasks `demo_heldout_{dataset}_{lang}_{template}` (split "validation") whose examples
  also carry `answer_choices` (1-D string), `dataset`, `language`, `template`; mixture
  `demo_heldout` of all of them; the same training data as mixture `demo_bloom` (tasks
  `demo_bloom_{lang}`) tokenized by the bundled BLOOM-style BPE (data/demo_bpe/tokenizer.json) for a
  BLOOM model. Regenerate the data with `python scripts/make_demo_data.py`.
"""
from __future__ import annotations

import json
import logging
import os

from xmtf_jax.paths import REPO_ROOT
from xmtf_jax.data import line_counts, tasks, xp3_family
from xmtf_jax.data.config import DataConfig
from xmtf_jax.data.jsonl_source import RecordSchema

DEMO_DIR = os.path.join(REPO_ROOT, "data", "demo")
DEMO_HELDOUT_DIR = os.path.join(REPO_ROOT, "data", "demo_heldout")
DEMO_VOCABULARY_PATH = os.path.join(DEMO_DIR, "sentencepiece.model")
DEMO_BPE_PATH = os.path.join(REPO_ROOT, "data", "demo_bpe", "tokenizer.json")
HELDOUT_MANIFEST = "manifest.json"

HELDOUT_SCHEMA = RecordSchema(
    string_fields=("inputs", "targets", "dataset", "language", "template"),
    nonempty_fields=("targets",), list_fields=("answer_choices",), choices_field="answer_choices")


def heldout_task_name(dataset: str, language: str, template: str) -> str:
  return f"demo_heldout_{dataset}_{language}_{template}"


def register(overwrite: bool = False) -> None:
  if not os.path.exists(DEMO_VOCABULARY_PATH):  # local-only: in the repository
    logging.warning("demo data missing (%s); run scripts/make_demo_data.py", DEMO_DIR)
    return
  vocab = tasks.vocabulary(DEMO_VOCABULARY_PATH)
  config = DataConfig(data_dir=DEMO_DIR, vocabulary_path=DEMO_VOCABULARY_PATH,
                      shuffle_buffer_size=1_000)
  # rate_config=None: the demo mixes by the settings the entry point passes to register_for.
  xp3_family.register_layout("demo", DEMO_DIR, kind="xp3", vocab=vocab, config=config, overwrite=overwrite)
  if os.path.exists(DEMO_BPE_PATH):  # local-only: in the repository
    bpe_config = DataConfig(data_dir=DEMO_DIR, vocabulary_path=DEMO_BPE_PATH, shuffle_buffer_size=1_000)
    xp3_family.register_layout("demo_bloom", DEMO_DIR, kind="xp3", vocab=tasks.vocabulary(DEMO_BPE_PATH),
                               config=bpe_config, overwrite=overwrite)
  with open(os.path.join(DEMO_HELDOUT_DIR, HELDOUT_MANIFEST)) as f:  # local-only: in the repository
    manifest = json.load(f)
  counts = line_counts.line_counts_for(DEMO_HELDOUT_DIR)
  names = []
  for entry in manifest["tasks"]:
    name = heldout_task_name(entry["dataset"], entry["language"], entry["template"])
    tasks.add_jsonl_task(name, {"validation": [os.path.join(DEMO_HELDOUT_DIR, entry["file"])]},
                         vocab=vocab, schema=HELDOUT_SCHEMA, count_fn=counts.total,
                         overwrite=overwrite)
    names.append(name)
  tasks.add_mixture("demo_heldout", [(n, 1.0) for n in names], overwrite=overwrite)


register()
