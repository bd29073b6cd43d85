"""The batch-source seam and run state with an owner.

A training run with validation during training reports truncation of its training examples only;
both input pipelines offer the same interface (next, shapes, get_state/set_state, stats, close);
settings a pipeline would ignore are errors; the indexed pipeline's single pass reads every example
of a split once; two configurations registered one after the other in one process do not leak.
"""
import json
import os

import numpy as np
import pytest

import mixtures
from tests import data_fixtures
from xmtf_jax.model.config import T5Config
from xmtf_jax.parallel import partitioning
from xmtf_jax.train import checkpoints, losses, optim, reporting
from xmtf_jax.train import loop as training

# The shapes of tests/test_training.py's in-process runs (same compiled programs).
TINY = T5Config(vocab_size=2048, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_encoder_layers=1,
                num_decoder_layers=1, dropout_rate=0.0)
LENGTHS = {"inputs": 32, "targets": 16}


def consumed_examples(model_dir, step):
  """Examples the training source had handed out after `step` batches: the sum over the packed rows
  of the position saved with checkpoint `step` (examples consumed per row)."""
  path = os.path.join(checkpoints.step_directory(model_dir, step), "input_position",
                      "process_00000_of_00001.json")
  with open(path) as f:
    state = json.load(f)
  return sum(value * count for value, count in state["positions"])


def test_training_truncation_counts_training_examples_only(tmp_path):
  """Validation reads the whole demo_en validation split (126 examples) every 2 steps; the "data"
  lines of metrics.jsonl must count the training examples consumed, nothing more."""
  model_dir = str(tmp_path / "run")
  config = training.TrainConfig(
      model_dir=model_dir, mixture_or_task_name="demo_en", task_feature_lengths=LENGTHS,
      train_steps=4, batch_size=8, use_packing=True, checkpoint_period=1, keep_checkpoints=None,
      async_checkpointing=False, eval_period=2, eval_batches=None, log_period=1)
  training.train(config, TINY, partitioning.PartitioningConfig(), optim.OptimizerConfig(),
                 losses.LossConfig())
  evals = reporting.read_metrics(model_dir, "eval")
  assert [e["step"] for e in evals] == [2, 4] and all(e["num_batches"] > 0 for e in evals)
  data = reporting.read_metrics(model_dir, "data")
  assert [d["step"] for d in data] == [2, 3, 4]
  for line in data:
    assert set(line["truncation"]) == {"demo_en"}
    counted = line["truncation"]["demo_en"]["examples"]
    assert counted == consumed_examples(model_dir, line["step"]), line


# ---- the interface, and settings a pipeline would ignore --------------------------------------------

def _source(pipeline, split="train", single_pass=False, name="demo", packing=True, **kw):
  from xmtf_jax.data import batch_source, source_factory
  config = batch_source.SourceConfig(name, {"inputs": 24, "targets": 8}, 8, use_packing=packing,
                                     seed=1, pipeline=pipeline, **kw)
  return source_factory.make_batch_source(config, split, single_pass=single_pass)


def _segments(batch):
  """Examples in a packed batch: the number of segments of every row."""
  return int(batch["decoder_segment_ids"].max(axis=1).sum())


@pytest.mark.parametrize("pipeline", ["indexed", "tf_data"])
def test_both_pipelines_are_batch_sources(pipeline):
  from xmtf_jax.data import batch_source
  first = _source(pipeline)
  assert isinstance(first, batch_source.BatchSource)
  head = [next(first) for _ in range(2)]
  for batch in head:
    assert {k: v.shape for k, v in batch.items()} == first.shapes() == batch_source.batch_shapes(
        {"inputs": 24, "targets": 8}, 8, True)
    assert all(v.dtype == np.int32 for v in batch.values())
  state = json.loads(json.dumps(first.get_state()))  # as a checkpoint stores it
  tail = [next(first) for _ in range(2)]
  stats = first.stats()
  assert stats["split"] == "train" and stats["bad_lines"] == {}
  demo_tasks = {t.name for t in mixtures.demo.tasks.get_mixture_or_task("demo").tasks}
  assert stats["truncation"] and set(stats["truncation"]) <= demo_tasks  # per task of this split
  counted = sum(t["examples"] for t in stats["truncation"].values())
  handed_out = sum(_segments(b) for b in head + tail)
  if pipeline == "indexed":
    assert counted == handed_out  # counted as handed out
  else:
    assert counted >= handed_out  # tf.data counts what its pipeline produced (reads ahead)
  assert any(t["inputs_truncated_examples"] + t["targets_truncated_examples"]
             for t in stats["truncation"].values())
  resumed = _source(pipeline)
  resumed.set_state([state])  # the states of all (here: one) processes
  for a, b in zip(tail, [next(resumed) for _ in range(2)]):
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  if pipeline == "indexed":  # each source counts what it handed out itself, nothing of the other's
    assert sum(t["examples"] for t in resumed.stats()["truncation"].values()) == \
        sum(_segments(b) for b in tail)
  first.close()
  resumed.close()


def test_settings_a_pipeline_would_ignore_are_errors(tmp_path):
  with pytest.raises(ValueError, match=r"TrainConfig.num_data_shards=2 is a setting of the tf.data "
                                       r"input pipeline; the indexed pipeline .* ignores it"):
    _source("indexed", num_data_shards=2)
  data_fixtures.write_jsonl(str(tmp_path / "t.jsonl"), [{"inputs": "q", "targets": "a"}])
  mixtures.add_jsonl_task("knob_task", {"train": [str(tmp_path / "t.jsonl")]},
                          vocab=mixtures.run_vocabulary(), overwrite=True)
  mixtures.register_for("knob_task", mixtures.DataConfig(shuffle_buffer_size=64))
  with pytest.raises(ValueError, match=r"DataConfig.shuffle_buffer_size=64 is a setting of the "
                                       r"tf.data input pipeline; the indexed pipeline .* ignores it"):
    _source("indexed", name="knob_task")
  _source("tf_data", name="knob_task", num_data_shards=1).close()  # there both are used
  with pytest.raises(ValueError, match=r"input_pipeline='tfdata': choose one of 'indexed', 'tf_data'"):
    _source("tfdata")


# ---- one pass over a split ---------------------------------------------------------------------------

def _seqio_examples(name, split, lengths):
  """(inputs, targets) token tuples of every example of the split, as seqio's own tasks give them."""
  import seqio
  provider = seqio.get_mixture_or_task(name)
  out = []
  for task in getattr(provider, "tasks", [provider]):
    if split in task.splits:
      ds = task.get_dataset(dict(lengths), split=split, shuffle=False, num_epochs=1)
      out += [(tuple(ex["inputs"]), tuple(ex["targets"])) for ex in ds.as_numpy_iterator()]
  return out


def _rows_of(batch):
  """(inputs, targets) of every segment of every row of a packed batch."""
  out = []
  for r in range(batch["encoder_input_tokens"].shape[0]):
    enc, dec = batch["encoder_segment_ids"][r], batch["decoder_segment_ids"][r]
    for s in range(1, int(dec.max()) + 1):
      out.append((tuple(batch["encoder_input_tokens"][r][enc == s]),
                  tuple(batch["decoder_target_tokens"][r][dec == s])))
  return out


@pytest.mark.parametrize("packing", [False, True])
def test_indexed_single_pass_reads_every_validation_example_once(packing):
  import collections
  from xmtf_jax.data import batch_source, source_factory
  lengths = {"inputs": 24, "targets": 8}
  expected = collections.Counter(_seqio_examples("demo", "validation", lengths))
  config = batch_source.SourceConfig("demo", lengths, 16, use_packing=packing)
  total = sum(expected.values())
  found, padding_rows, examples_counted = collections.Counter(), 0, 0
  for process in range(2):  # two processes' rows together make the global batches
    source = source_factory.make_batch_source(config, "validation", single_pass=True,
                                              process_index=process, process_count=2)
    for batch in source:
      assert {k: v.shape for k, v in batch.items()} == source.shapes()
      if packing:
        found.update(_rows_of(batch))
      else:
        for r in range(8):
          weights = batch["decoder_loss_weights"][r]
          if not weights.any():
            assert not batch["encoder_input_tokens"][r].any()  # an all-zero row of loss weight 0
            padding_rows += 1
            continue
          inputs = batch["encoder_input_tokens"][r]
          found[(tuple(inputs[inputs > 0]), tuple(batch["decoder_target_tokens"][r][weights > 0]))] += 1
    with pytest.raises(StopIteration):
      next(source)  # stays at its end
    stats = source.stats()
    assert stats["split"] == "validation"
    examples_counted += sum(t["examples"] for t in stats["truncation"].values())
    source.close()
  assert found == expected  # every example exactly once
  assert examples_counted == total
  if not packing:  # row r reads examples r, r + 16, ...; a process stops when all its rows ended
    per_row = [len(range(r, total, 16)) for r in range(16)]
    assert padding_rows == sum(max(per_row[p:p + 8]) * 8 - sum(per_row[p:p + 8]) for p in (0, 8))


# ---- run settings belong to what they were registered for -------------------------------------------

def test_two_configurations_registered_in_sequence_do_not_leak(tmp_path, data_spm_path, xp3_fixture):
  """Tasks defined once (as a user's module does at import) follow the DataConfig each run registers
  them with; registering a second configuration for other names changes nothing of the first's."""
  import seqio
  from xmtf_jax.data import jsonl_source, xp3_family
  good = [{"inputs": f"question {i}", "targets": f"answer {i}"} for i in range(6)]
  path = str(tmp_path / "with_bad_line.jsonl")
  data_fixtures.write_jsonl(path, good[:3], raw_lines=[b"{not json"])
  for name in ("leak_a", "leak_b"):  # strictness and vocabulary left to the run
    mixtures.add_jsonl_task(name, {"train": [path]}, vocab=mixtures.run_vocabulary(), overwrite=True)
  # A family mixture without rates of its own, as the demo: it mixes by the run's settings.
  info = xp3_family.register_layout(
      "leak_mix", xp3_fixture["root"], kind="xp3", vocab=mixtures.vocabulary(data_spm_path),
      config=xp3_fixture["config"], overwrite=True)
  sizes = np.array([info.sizes()[t] for t in info.task_languages], float)
  proportional = dict(zip(info.task_languages, sizes / sizes.sum()))
  temperature = dict(zip(info.task_languages, np.sqrt(sizes) / np.sqrt(sizes).sum()))

  def vocabulary_file(name):
    return seqio.get_mixture_or_task(name).output_features["inputs"].vocabulary.sentencepiece_model_file

  def read(name):
    source = _source("indexed", name=name, packing=False, single_pass=True)
    try:
      return sum(int((b["decoder_loss_weights"].sum(1) > 0).sum()) for b in source), source.stats()
    finally:
      source.close()

  first = mixtures.DataConfig(vocabulary_path=data_spm_path, strict=False,
                              mixing_scheme="temperature", mixing_temperature=2.0)
  for name in ("leak_a", "leak_mix"):
    mixtures.register_for(name, first)
  assert vocabulary_file("leak_a") == os.path.abspath(data_spm_path)
  assert info.rates() == pytest.approx(temperature)
  examples, stats = read("leak_a")  # lenient: the bad line is replaced and counted by this source
  assert examples == 4 and stats["bad_lines"] == {"leak_a": {jsonl_source.MALFORMED_JSON: 1}}

  second = mixtures.DataConfig(vocabulary_path=mixtures.demo.DEMO_VOCABULARY_PATH, strict=True)
  for name in ("leak_b", "leak_mix"):
    mixtures.register_for(name, second)
  assert vocabulary_file("leak_b") == mixtures.demo.DEMO_VOCABULARY_PATH
  assert info.rates() == pytest.approx(proportional)
  with pytest.raises(jsonl_source.BadDataError, match=r"with_bad_line.jsonl, line 4: malformed JSON"):
    read("leak_b")
  # The first configuration's task kept its own settings, and a new source starts its own counts.
  assert vocabulary_file("leak_a") == os.path.abspath(data_spm_path)
  examples, stats = read("leak_a")
  assert examples == 4 and stats["bad_lines"] == {"leak_a": {jsonl_source.MALFORMED_JSON: 1}}
  assert sum(t["examples"] for t in stats["truncation"].values()) == 4
