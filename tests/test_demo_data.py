"""The bundled demo mixture: registered on import, held-out tasks with answer choices, regenerable."""
import importlib.util
import json
import os

import numpy as np
import seqio

import mixtures
from xmtf_jax.data import pipeline as input_pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_LANGUAGES = ["ar", "bn", "en", "es", "fr", "id", "pt", "ru", "te", "vi"]


def load_script():
  spec = importlib.util.spec_from_file_location("make_demo_data",
                                                os.path.join(REPO, "scripts", "make_demo_data.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_regeneration_is_byte_identical_and_small():
  built = load_script().build()
  on_disk = {}
  for sub in ("demo", "demo_heldout", "demo_bpe"):
    for folder, _, files in os.walk(os.path.join(REPO, "data", sub)):
      for name in files:
        path = os.path.join(folder, name)
        on_disk[os.path.relpath(path, os.path.join(REPO, "data"))] = open(path, "rb").read()
  assert sorted(built) == sorted(on_disk)
  different = [p for p in built if built[p] != on_disk[p]]
  assert not different, f"run scripts/make_demo_data.py: {different[:5]} differ"
  assert sum(map(len, built.values())) < 3_000_000


def test_demo_mixture_is_registered_on_import_and_loads():
  mixture = seqio.get_mixture_or_task("demo")
  assert [t.name for t in mixture.tasks] == [f"demo_{l}" for l in DEMO_LANGUAGES]
  assert all(sorted(t.splits) == ["train", "validation"] for t in mixture.tasks)
  sizes = mixtures.mixture_info("demo").sizes()
  assert sum(sizes.values()) > 5000 and len(set(sizes.values())) == 1
  it = input_pipeline.make_batch_iterator("demo", {"inputs": 64, "targets": 16}, "validation", 8,
                                          use_packing=True, shuffle=False, repeat=False,
                                          shard_index=0, num_shards=1)
  batch = next(it)
  assert batch["encoder_input_tokens"].shape == (8, 64) and batch["decoder_segment_ids"].max() >= 2
  vocab = mixtures.vocabulary(mixtures.demo.DEMO_VOCABULARY_PATH)
  assert vocab.vocab_size == 2000 and (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
  assert np.all(batch["encoder_input_tokens"] < 2000)


def test_heldout_tasks_carry_answer_choices_and_metadata():
  with open(os.path.join(REPO, "data", "demo_heldout", "manifest.json")) as f:
    manifest = json.load(f)["tasks"]
  names = [mixtures.demo.heldout_task_name(e["dataset"], e["language"], e["template"])
           for e in manifest]
  assert len(names) >= 24 and len({e["dataset"] for e in manifest}) >= 2
  assert sorted(t.name for t in seqio.get_mixture_or_task("demo_heldout").tasks) == sorted(names)
  assert "demo_heldout_number_compare_ar_which_larger" in names
  for entry, name in zip(manifest[::7], names[::7]):
    task = seqio.get_mixture_or_task(name)
    assert task.splits == ("validation",)
    examples = list(task.get_dataset({"inputs": 64, "targets": 32}, split="validation",
                                     shuffle=False).as_numpy_iterator())
    assert len(examples) == entry["examples"]
    for ex in examples:
      choices = [c.decode() for c in ex["answer_choices"]]
      assert len(choices) >= 2 and ex["targets_pretokenized"].decode() in choices
      assert (ex["dataset"].decode(), ex["language"].decode(), ex["template"].decode()) == (
          entry["dataset"], entry["language"], entry["template"])
      assert ex["targets"][-1] == 1
