"""The indexed input pipeline: a global order that is a function of the seed, resumable anywhere.

Resume equality (bit-equal global batches) for 1 process, 2 processes, 2 -> 1 and 1 -> 2, packed
and not; the realised mixing rates; unpacked batches equal seqio's feature converter on the same
examples; packed rows hold whole examples with seqio's segment layout; the fast tokenizer equals
the task's own seqio preprocessors; bad lines and truncation are reported as by the tf.data one.
"""
import json

import numpy as np
import pytest
import seqio
import tensorflow as tf

import mixtures
from xmtf_jax.data import global_order, indexed_examples, indexed_pipeline, jsonl_source, truncation

LENGTHS = {"inputs": 32, "targets": 16}
STEPS = 8


def make(name="fx_xp3", *, packing=False, process_index=0, process_count=1, batch=8, seed=3,
         lengths=LENGTHS, index_dir=None, prefetch=2):
  return indexed_pipeline.make_indexed_batches(
      name, lengths, "train", batch, use_packing=packing, seed=seed, process_index=process_index,
      process_count=process_count, index_dir=index_dir, prefetch=prefetch)


def global_batches(iterators, steps):
  """`steps` global batches: every process's rows concatenated in process order."""
  out = []
  for _ in range(steps):
    parts = [next(it) for it in iterators]
    out.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
  return out


def assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("line_index"))


@pytest.mark.parametrize("packing", [False, True])
def test_resume_gives_the_same_global_batches_on_any_process_count(xp3_fixture, index_dir, packing):
  reference = global_batches([make(packing=packing, index_dir=index_dir)], STEPS)
  stop = 3
  for saved_by, resumed_by in [(1, 1), (2, 2), (2, 1), (1, 2)]:
    first = [make(packing=packing, process_index=p, process_count=saved_by, index_dir=index_dir)
             for p in range(saved_by)]
    assert_same(global_batches(first, stop), reference[:stop])
    saved = [json.loads(json.dumps(it.get_state())) for it in first]  # as checkpoints store it
    for it in first:
      it.close()
    resumed = [make(packing=packing, process_index=p, process_count=resumed_by, index_dir=index_dir)
               for p in range(resumed_by)]
    for it in resumed:
      it.set_state(saved)
    assert_same(global_batches(resumed, STEPS - stop), reference[stop:])
    for it in resumed:
      it.close()


def test_state_is_a_few_integers_and_mismatches_are_explained(xp3_fixture, index_dir):
  it = make(index_dir=index_dir)
  for _ in range(5):
    next(it)
  state = it.get_state()
  assert state["positions"] == [[5, 8]] and len(json.dumps(state)) < 400
  other = make(index_dir=index_dir, seed=4)
  with pytest.raises(ValueError, match="seed: saved 3 vs now 4"):
    other.set_state(state)
  with pytest.raises(ValueError, match="tf_data"):
    other.set_state([[{"version": 1, "batches_consumed": 5}]])
  half = make(index_dir=index_dir, process_index=1, process_count=2)
  with pytest.raises(ValueError, match="does not cover rows 4..7"):
    half.set_state([dict(state, rows=[0, 4], positions=[[5, 4]])])
  for x in (it, other, half):
    x.close()


def test_same_seed_same_batches_other_seed_other_batches(xp3_fixture, index_dir):
  a, b, c = (global_batches([make(seed=s, index_dir=index_dir)], 3) for s in (3, 3, 4))
  assert_same(a, b)
  assert not all((x["encoder_input_tokens"] == y["encoder_input_tokens"]).all()
                 for x, y in zip(a, c))


def test_mixing_rates_over_100k_examples():
  rates = [0.45, 0.3, 0.2, 0.0499, 0.0001]
  order = global_order.MixingOrder(rates, seed=0)
  tasks, within = order.assign(np.arange(100_000))
  realised = np.bincount(tasks, minlength=len(rates)) / 100_000
  np.testing.assert_allclose(realised, np.array(rates) / sum(rates), rtol=0.01, atol=2e-5)
  for t in range(len(rates)):  # every example of a task is used once
    assert len(np.unique(within[tasks == t])) == (tasks == t).sum()
  # Counting a task's examples before a position needs no pass over the earlier ones.
  for i in (0, 1, 4095, 4096, 54_321, 100_000):
    np.testing.assert_array_equal(order.counts_before(i),
                                  np.bincount(tasks[:i], minlength=len(rates)))
  far = order.counts_before(10**12)
  assert far.sum() == 10**12
  np.testing.assert_allclose(far / 10**12, order.rates, atol=1e-9)


def test_the_line_permutation_is_a_bijection_for_every_size():
  for n in (1, 2, 3, 5, 64, 1000, 4097):
    values = global_order.Permutation(n, key=7)(np.arange(n))
    assert sorted(values.tolist()) == list(range(n))
  a = global_order.Permutation(1000, key=1)(np.arange(1000))
  b = global_order.Permutation(1000, key=2)(np.arange(1000))
  assert (a != b).mean() > 0.9 and abs(np.corrcoef(a, np.arange(1000))[0, 1]) < 0.1


def test_mixture_examples_follow_the_rates_and_visit_every_line(xp3_fixture, index_dir):
  it = make(batch=16, index_dir=index_dir)
  order, reader = it.order, it.reader
  end = int(order.counts_before_block(np.array([2]))[0].sum())  # two whole blocks
  tasks, ks = order.assign(np.arange(end))
  for t, lines in enumerate(reader.tasks):
    assert sorted(ks[tasks == t].tolist()) == list(range((tasks == t).sum()))
    first_epoch = lines.lines_of(ks[(tasks == t) & (ks < lines.size)])
    assert len(np.unique(first_epoch)) == len(first_epoch)  # no line twice in an epoch
    if (ks[tasks == t] >= lines.size).any():  # a whole epoch was read: every line once
      assert sorted(first_epoch.tolist()) == list(range(lines.size))
  it.close()


def converted_by_seqio(examples, lengths, pack):
  def gen():
    for inputs, targets in examples:
      yield {"inputs": inputs, "targets": targets}
  spec = {k: tf.TensorSpec([None], tf.int32) for k in ("inputs", "targets")}
  ds = seqio.EncDecFeatureConverter(pack=pack)(
      tf.data.Dataset.from_generator(gen, output_signature=spec), lengths)
  return list(ds.as_numpy_iterator())


def test_unpacked_batches_equal_seqios_converter_and_packed_rows_hold_whole_examples(
    xp3_fixture, index_dir):
  plain = make(index_dir=index_dir, prefetch=0)
  tasks, ks = plain.order.assign(np.arange(8 * 3))  # rows of 3 batches: index = step * 8 + row
  examples = plain.reader.examples(tasks, ks)
  rows = converted_by_seqio(examples, LENGTHS, pack=False)
  batches = [next(plain) for _ in range(3)]
  for i, row in enumerate(rows):
    for k, v in row.items():
      np.testing.assert_array_equal(batches[i // 8][k][i % 8], v, err_msg=k)
  plain.close()

  packed = make(packing=True, index_dir=index_dir, prefetch=0)
  batch = next(packed)
  # Row r took the first examples of its own stream (global indices r, r + 8, ...).
  for r in range(8):
    n = int(batch["decoder_segment_ids"][r].max())
    tasks, ks = packed.order.assign(np.arange(n) * 8 + r)
    expected = converted_by_seqio(packed.reader.examples(tasks, ks), LENGTHS, pack=True)
    assert len(expected) == 1  # they fit one row, so seqio packs them exactly as we did
    for k, v in expected[0].items():
      np.testing.assert_array_equal(batch[k][r], v, err_msg=f"row {r} {k}")
    # ...and the next example of the stream would not have fitted (next-fit).
    tasks, ks = packed.order.assign(np.array([n * 8 + r]))
    nxt_in, nxt_out = packed.reader.examples(tasks, ks)[0]
    used_in = int((batch["encoder_segment_ids"][r] > 0).sum())
    used_out = int((batch["decoder_segment_ids"][r] > 0).sum())
    assert used_in + len(nxt_in) > LENGTHS["inputs"] or used_out + len(nxt_out) > LENGTHS["targets"]
  packed.close()


def test_fast_tokenizer_equals_the_tasks_seqio_preprocessors(xp3_fixture, index_dir):
  lengths = {"inputs": 12, "targets": 6}  # short: trimming and EOS after trim matter
  fast, slow = (indexed_examples.ExampleReader(
      [seqio.get_mixture_or_task("fx_xp3_en"), seqio.get_mixture_or_task("fx_xp3_zh")], "train",
      lengths, seed=0, shuffle=True, index_dir=index_dir, fast_tokenizer=f) for f in (True, False))
  assert isinstance(fast._tokenizer(0), indexed_examples.StandardTokenizer)
  assert isinstance(slow._tokenizer(0), indexed_examples.TaskTokenizer)
  tasks = np.array([0, 1, 0, 0, 1, 1, 0] * 5)
  ks = np.arange(len(tasks))
  a = fast.examples(tasks, ks)
  # the fast tokenizer's counts travel with its examples; the seqio steps count into the reader's
  counted_fast = {task: dict(zip(truncation.FIELDS, map(int, counts)))
                  for task, counts in indexed_examples.truncation_of(a).items()}
  b = slow.examples(tasks, ks)
  counted_slow = slow.stats.truncation()
  for (ai, at), (bi, bt) in zip(a, b):
    np.testing.assert_array_equal(ai, bi)
    np.testing.assert_array_equal(at, bt)
  assert counted_fast == counted_slow and counted_fast["fx_xp3_en"]["inputs_truncated_examples"] > 0
  fast.close()
  slow.close()


def write_jsonl(path, lines):
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def test_bad_lines_strict_name_the_line_and_lenient_counts_and_replaces(tmp_path, data_spm_path,
                                                                         index_dir):
  good = [json.dumps({"inputs": f"question {i}", "targets": f"answer {i}"}) for i in range(6)]
  path = write_jsonl(tmp_path / "bad.jsonl", good[:2] + ["{not json"] + good[2:])
  vocab = mixtures.vocabulary(data_spm_path)
  for strict in (True, False):
    mixtures.add_jsonl_task(f"ix_bad_{strict}", {"train": [path]}, vocab=vocab, strict=strict,
                            overwrite=True)
  with pytest.raises(jsonl_source.BadDataError, match=r"bad.jsonl, line 3: malformed JSON"):
    next(make("ix_bad_True", batch=7, index_dir=index_dir, prefetch=0))
  it = make("ix_bad_False", batch=7, index_dir=index_dir, prefetch=0)
  batch = next(it)
  assert (batch["decoder_loss_weights"].sum(axis=1) > 0).all()  # every row holds an example
  assert it.stats()["bad_lines"] == {"ix_bad_False": {jsonl_source.MALFORMED_JSON: 1}}


def test_line_index_is_cached_and_rebuilt_when_the_file_changes(tmp_path):
  from xmtf_jax.data import line_index
  path = tmp_path / "f.jsonl"
  path.write_bytes(b'{"a": 1}\r\n\n{"b": 2}')  # CRLF, an empty line, no final newline
  index = line_index.load_index(str(path), str(tmp_path / "idx"))
  assert index.num_lines == 3 and [index.read(i) for i in range(3)] == [b'{"a": 1}', b"", b'{"b": 2}']
  assert len(list((tmp_path / "idx").iterdir())) == 1
  assert line_index.load_index(str(path), str(tmp_path / "idx")).num_lines == 3
  path.write_bytes(b"x\ny\n")
  assert line_index.load_index(str(path), str(tmp_path / "idx")).num_lines == 2
  assert line_index.build_offsets(str(path)).tolist() == [0, 2, 4]


def test_a_mixture_of_mixtures_mixes_at_seqios_rates(xp3_fixture, index_dir):
  mixtures.add_mixture("ix_nested", [("fx_xp3", 3.0), ("fx_xp3_en", 1.0)], overwrite=True)
  it = make("ix_nested", index_dir=index_dir)
  nested = seqio.get_mixture_or_task("ix_nested")
  expected = np.array([nested.get_rate(seqio.get_mixture_or_task(n)) for n in it.task_names])
  np.testing.assert_allclose(it.order.rates, expected / expected.sum())
  assert "fx_xp3_en" in it.task_names and len(it.task_names) == len(set(it.task_names)) > 2
  assert next(it)["encoder_input_tokens"].shape == (8, LENGTHS["inputs"])
  it.close()
