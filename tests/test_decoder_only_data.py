"""BLOOM's tokenizer as a seqio vocabulary, and the decoder-only example layout in both pipelines.

The reference for token ids is transformers' tokenizer over the same tokenizer.json (the fixture
of tests/bpe_fixture.py); the expected rows are written out by hand from those ids: example =
tok(inputs) ++ tok(" " + targets) ++ [EOS], shifted per example, packed next-fit, pad 3.
"""
import json
import os
import pickle

import numpy as np
import pytest
import seqio
import tensorflow as tf

from xmtf_jax.data import batch_source, bpe_vocabulary, decoder_only, report, source_factory, tasks
from xmtf_jax.data.jsonl_source import JsonlDataSource
from xmtf_jax.errors import UserError

EOS, PAD = 2, 3
LENGTHS = {"inputs": 8, "targets": 4}  # rows of 12 positions
RECORDS = [("2 + 2?", "4"), ("yes", "no"), ("Is it good?", "yes"), ("the cat", "le chat dort")]
TEXTS = ["Hello world", " Hello world", "把这句话翻译成英文：猫在垫子上睡觉。", " अंग्रेज़ी में अनुवाद करें",
         "ترجم إلى الإنجليزية", "def add(a, b):\n\treturn a + b", " le chat dort", "  two  spaces ",
         "emoji 🙂 ok", " 4", ""]
PIPELINES = ["indexed", "tf_data"]


@pytest.fixture(scope="module")
def hf_tokenizer(bpe_tokenizer_path):
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(os.path.dirname(bpe_tokenizer_path))


@pytest.fixture(scope="module")
def tiny_task(bpe_tokenizer_path, tmp_path_factory):
  """Task `dod_tiny` (RECORDS, train = validation) with the BPE vocabulary."""
  path = str(tmp_path_factory.mktemp("dod") / "data.jsonl")
  with open(path, "w") as f:
    for inputs, targets in RECORDS:
      f.write(json.dumps({"inputs": inputs, "targets": targets}, ensure_ascii=False) + "\n")
  tasks.add_jsonl_task("dod_tiny", {"train": [path], "validation": [path]},
                       vocab=tasks.vocabulary(bpe_tokenizer_path), overwrite=True)
  return path


def _pieces(hf):
  """(inputs ids, targets ids incl. EOS) of RECORDS, trimmed by hand to LENGTHS, from transformers."""
  encode = lambda text: hf.encode(text, add_special_tokens=False)  # noqa: E731
  whole = [(encode(i), encode(" " + t) + [EOS]) for i, t in RECORDS]
  assert len(whole[2][0]) > 8 and len(whole[3][1]) > 4  # example 2's inputs, 3's targets get cut
  return [(a[:8], b[:3] + [EOS] if len(b) > 4 else b) for a, b in whole]


def _row(examples, length=12):
  """One row of the layout, written out: s[:-1] / s[1:] per example, weight 1 from the last input."""
  row = {k: [] for k in decoder_only.FEATURES}
  for segment, (a, b) in enumerate(examples, start=1):
    s = a + b
    row["decoder_input_tokens"] += s[:-1]
    row["decoder_target_tokens"] += s[1:]
    row["decoder_loss_weights"] += [0] * (len(a) - 1) + [1] * len(b)
    row["decoder_segment_ids"] += [segment] * (len(s) - 1)
    row["decoder_positions"] += list(range(len(s) - 1))
  fill = length - len(row["decoder_input_tokens"])
  for k in row:
    row[k] += [PAD if k.endswith("tokens") else 0] * fill
  return row


def _batch(rows):
  return {k: np.array([r[k] for r in rows], np.int32) for k in decoder_only.FEATURES}


def _source(pipeline, *, packing, batch_size, single_pass=True, split="validation", seed=0,
            name="dod_tiny"):
  config = batch_source.SourceConfig(name, LENGTHS, batch_size, use_packing=packing, seed=seed,
                                     pipeline=pipeline, feature_layout="decoder_only")
  return source_factory.make_batch_source(config, split, single_pass=single_pass, process_index=0,
                                          process_count=1)


def _all(source):
  try:
    return list(source)
  finally:
    source.close()


def _assert_batches_equal(got, expected):
  assert len(got) == len(expected)
  for g, e in zip(got, expected):
    assert set(g) == set(e)
    for k in e:
      np.testing.assert_array_equal(g[k], e[k], err_msg=k)


# ---- the vocabulary --------------------------------------------------------------------------------

def test_bpe_vocabulary_encodes_as_transformers_does(bpe_tokenizer_path, hf_tokenizer):
  from transformers import PreTrainedTokenizerFast
  vocab = bpe_vocabulary.BpeVocabulary(bpe_tokenizer_path)
  fast = PreTrainedTokenizerFast(tokenizer_file=bpe_tokenizer_path)
  assert (vocab.unk_id, vocab.bos_id, vocab.eos_id, vocab.pad_id) == (0, 1, 2, 3)
  assert (hf_tokenizer.unk_token_id, hf_tokenizer.bos_token_id, hf_tokenizer.eos_token_id,
          hf_tokenizer.pad_token_id) == (0, 1, 2, 3)
  assert vocab.vocab_size == len(hf_tokenizer) == 300
  for text in TEXTS:
    ids = list(vocab.encode(text))
    assert ids == hf_tokenizer.encode(text, add_special_tokens=False) == \
        fast.encode(text, add_special_tokens=False), text
    assert 0 not in ids and EOS not in ids  # every byte encodes; no specials added
    assert vocab.decode(ids) == text
    assert list(vocab.encode_tf(tf.constant(text)).numpy()) == ids
  assert vocab.encode(" 4") != vocab.encode("4")  # the space is a token of its own here
  # decoding stops at the first EOS and skips nothing before it
  ids = vocab.encode("yes")
  assert vocab.decode(ids + [EOS] + vocab.encode("no")) == "yes"
  assert vocab.decode([PAD] + ids) == "<pad>yes"
  batch = tf.constant([ids + [EOS, 5], vocab.encode("ok") + [EOS, EOS, EOS]][:1] * 2)
  assert [t.decode() for t in vocab.decode_tf(batch).numpy()] == ["yes", "yes"]


def test_bpe_vocabulary_is_equal_by_file_and_picklable(bpe_tokenizer_path, tmp_path):
  a, b = bpe_vocabulary.BpeVocabulary(bpe_tokenizer_path), bpe_vocabulary.BpeVocabulary(bpe_tokenizer_path)
  assert a == b and hash(a) == hash(b)
  copy = str(tmp_path / "tokenizer.json")
  with open(bpe_tokenizer_path) as src, open(copy, "w") as dst:
    dst.write(src.read())
  assert a != bpe_vocabulary.BpeVocabulary(copy)
  a.encode("x")  # loaded: the pickle still holds only the path
  restored = pickle.loads(pickle.dumps(a))
  assert restored == a and restored.encode("the cat") == a.encode("the cat")
  assert len(pickle.dumps(a)) < 1000
  with pytest.raises(UserError, match="no tokenizer file"):
    bpe_vocabulary.BpeVocabulary(str(tmp_path / "missing.json")).encode("x")


def test_a_tokenizer_json_path_or_folder_gives_the_bpe_vocabulary(bpe_tokenizer_path, data_spm_path,
                                                                  tmp_path):
  from xmtf_jax.train.vocabulary import load_vocabulary
  folder = os.path.dirname(bpe_tokenizer_path)
  assert isinstance(tasks.vocabulary(bpe_tokenizer_path), bpe_vocabulary.BpeVocabulary)
  assert tasks.vocabulary(folder) is tasks.vocabulary(bpe_tokenizer_path)
  assert tasks.path_of(tasks.vocabulary(folder)) == bpe_tokenizer_path
  # an HF BLOOM folder (config.json + tokenizer.json, no spiece.model) as a model path
  hf_folder = tmp_path / "bloom"
  hf_folder.mkdir()
  (hf_folder / "config.json").write_text('{"model_type": "bloom"}')
  (hf_folder / "tokenizer.json").write_text(open(bpe_tokenizer_path).read())
  loaded = load_vocabulary(str(hf_folder))
  assert isinstance(loaded, bpe_vocabulary.BpeVocabulary)
  assert loaded.tokenizer_file == str(hf_folder / "tokenizer.json")
  assert load_vocabulary(None, folder) is tasks.vocabulary(bpe_tokenizer_path)
  # an HF mT5 folder holds both: its spiece.model wins, as before
  (hf_folder / "spiece.model").write_bytes(open(data_spm_path, "rb").read())
  assert isinstance(load_vocabulary(str(hf_folder)), seqio.SentencePieceVocabulary)
  assert isinstance(tasks.vocabulary(str(hf_folder)), seqio.SentencePieceVocabulary)


def test_run_vocabulary_bound_to_a_tokenizer_json_is_that_vocabulary(bpe_tokenizer_path,
                                                                     data_spm_path):
  run = tasks.RunVocabulary(bpe_tokenizer_path)
  bpe = tasks.vocabulary(bpe_tokenizer_path)
  assert run == bpe and bpe == run and run == tasks.RunVocabulary(bpe_tokenizer_path)
  assert (run.eos_id, run.pad_id, run.unk_id, run.vocab_size) == (2, 3, 0, 300)
  assert run.encode(" le chat") == bpe.encode(" le chat") and run.decode(bpe.encode("x")) == "x"
  assert list(run.encode_tf(tf.constant(" le chat")).numpy()) == bpe.encode(" le chat")
  assert tasks.path_of(run) == bpe_tokenizer_path and run.tokenizer_file == bpe_tokenizer_path
  assert pickle.loads(pickle.dumps(run)) == bpe
  spm_run = tasks.RunVocabulary(data_spm_path)
  assert spm_run != bpe and spm_run == tasks.vocabulary(data_spm_path)
  assert tasks.path_of(spm_run) == os.path.abspath(data_spm_path)


def test_a_mixture_of_bpe_and_sentencepiece_tasks_is_refused(tiny_task, data_spm_path,
                                                             bpe_tokenizer_path):
  tasks.add_jsonl_task("dod_same_file", {"train": [tiny_task]},
                       vocab=tasks.RunVocabulary(bpe_tokenizer_path), overwrite=True)
  for order in [("dod_tiny", "dod_same_file"), ("dod_same_file", "dod_tiny")]:
    tasks.add_mixture("dod_one_file", [(t, 1.0) for t in order], overwrite=True)
    mixture = tasks.get_mixture_or_task("dod_one_file")
    tasks.check_one_vocabulary("dod_one_file", tasks.tasks_of(mixture))
    mixture._check_compatible_features()  # seqio's own check (get_dataset's) agrees
  spm_task = tasks.add_jsonl_task("dod_spm", {"train": [tiny_task]},
                                  vocab=tasks.vocabulary(data_spm_path), overwrite=True)
  with pytest.raises(UserError, match="different vocabularies.*tokenizer.json"):
    tasks.check_one_vocabulary("dod_mixed", [seqio.get_mixture_or_task("dod_tiny"), spm_task])


# ---- the layout --------------------------------------------------------------------------------------

def test_decoder_only_shapes():
  for packing in (False, True):
    shapes = batch_source.batch_shapes(LENGTHS, 4, packing, "decoder_only")
    assert shapes == {k: (4, 12) for k in decoder_only.FEATURES}
  with pytest.raises(UserError, match="feature_layout='prefix_lm'"):
    batch_source.batch_shapes(LENGTHS, 4, False, "prefix_lm")


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_unpacked_rows_written_by_hand(tiny_task, hf_tokenizer, pipeline):
  e = _pieces(hf_tokenizer)
  expected = [_batch([_row([e[0]]), _row([e[1]])]), _batch([_row([e[2]]), _row([e[3]])])]
  # spelled out for the first example: "2 + 2?" then " 4" + EOS
  a, b = e[0]
  assert expected[0]["decoder_input_tokens"][0].tolist() == a + b[:-1] + [PAD] * (13 - len(a + b))
  assert expected[0]["decoder_target_tokens"][0].tolist() == a[1:] + b + [PAD] * (13 - len(a + b))
  assert expected[0]["decoder_segment_ids"][0].tolist() == [1] * (len(a + b) - 1) + [0] * (13 - len(a + b))
  source = _source(pipeline, packing=False, batch_size=2)
  assert source.shapes() == {k: (2, 12) for k in decoder_only.FEATURES}
  _assert_batches_equal(_all(source), expected)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_packed_rows_written_by_hand(tiny_task, hf_tokenizer, pipeline):
  e = _pieces(hf_tokenizer)
  sizes = [len(a) + len(b) - 1 for a, b in e]
  assert sizes[0] + sizes[1] <= 12 < sizes[1] + sizes[2]  # next-fit: 0 and 1 share a row
  expected = [_batch([_row([e[0], e[1]])]), _batch([_row([e[2]])]), _batch([_row([e[3]])])]
  batches = _all(_source(pipeline, packing=True, batch_size=1))
  _assert_batches_equal(batches, expected)
  row = batches[0]
  weights, targets = row["decoder_loss_weights"][0], row["decoder_target_tokens"][0]
  inputs_0 = len(e[0][0])
  assert not weights[:inputs_0 - 1].any()  # positions predicting input tokens carry no weight
  assert weights[inputs_0 - 1] == 1 and targets[inputs_0 - 1] == e[0][1][0]  # the first target
  assert targets[sizes[0] - 1] == EOS and weights[sizes[0] - 1] == 1  # the EOS carries weight
  assert targets[sizes[0] + sizes[1] - 1] == EOS and weights[sizes[0] + sizes[1] - 1] == 1


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_truncation_is_counted_per_task(tiny_task, hf_tokenizer, pipeline):
  encode = lambda text: hf_tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
  n_in = [len(encode(i)) for i, _ in RECORDS]
  n_out = [len(encode(" " + t)) + 1 for _, t in RECORDS]
  source = _source(pipeline, packing=True, batch_size=1)
  _all(source)
  assert source.stats()["truncation"]["dod_tiny"] == {
      "examples": 4, "inputs_tokens": sum(n_in), "inputs_truncated_examples": 1,
      "inputs_truncated_tokens": n_in[2] - 8, "targets_tokens": sum(n_out),
      "targets_truncated_examples": 1, "targets_truncated_tokens": n_out[3] - 4}


def test_average_per_sequence_is_bloomz_norm_target_loss(tiny_task, hf_tokenizer):
  from xmtf_jax.train import losses
  e = _pieces(hf_tokenizer)
  rows = _all(_source("indexed", packing=True, batch_size=1))
  batch = {k: np.concatenate([b[k] for b in rows]) for k in rows[0]}  # 3 rows, 4 sequences
  weights, factor = losses.normalized_loss_weights(batch, losses.LossConfig("average_per_sequence"))
  # BLOOMZ --norm-target-loss: each contiguous run of target positions weighs 1 / its length, and
  # the loss is divided by the number of target sequences
  expected = np.zeros((3, 12))
  runs = [(0, 0), (0, 1), (1, 2), (2, 3)]  # (row, example)
  at = {0: 0, 1: 0, 2: 0}
  for row, i in runs:
    a, b = e[i]
    start = at[row] + len(a) - 1
    expected[row, start:start + len(b)] = 1.0 / len(b)
    at[row] += len(a) + len(b) - 1
  np.testing.assert_allclose(np.asarray(weights), expected, rtol=1e-6)
  assert float(factor) == pytest.approx(4.0)


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("packing", [False, True])
def test_resume_mid_stream_gives_the_same_next_batches(tiny_task, pipeline, packing):
  first = _source(pipeline, packing=packing, batch_size=2, single_pass=False, split="train", seed=3)
  for _ in range(3):
    next(first)
  state = first.get_state()
  expected = [next(first) for _ in range(4)]
  first.close()
  resumed = _source(pipeline, packing=packing, batch_size=2, single_pass=False, split="train",
                    seed=3)
  resumed.set_state([state])
  got = [next(resumed) for _ in range(4)]
  resumed.close()
  _assert_batches_equal(got, expected)
  assert all((b["decoder_segment_ids"] > 0).any(axis=1).all() for b in got)  # no empty rows


def test_saved_position_of_the_other_layout_is_refused(tiny_task):
  source = _source("indexed", packing=True, batch_size=2, single_pass=False, split="train")
  next(source)
  state = source.get_state()
  source.close()
  config = batch_source.SourceConfig("dod_tiny", LENGTHS, 2, use_packing=True)
  other = source_factory.make_batch_source(config, "train", process_index=0, process_count=1)
  with pytest.raises(UserError, match="feature_layout: saved 'decoder_only' vs now 'encoder_decoder'"):
    other.set_state([state])
  other.close()


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_text_of_a_task_with_its_own_preprocessors(bpe_tokenizer_path, tiny_task, hf_tokenizer,
                                                   pipeline):
  """The layout tokenizes the text the task's steps hand to seqio's tokenize (here "Q: " added)."""
  @seqio.map_over_dataset
  def ask(ex):
    return {**ex, "inputs": tf.strings.join(["Q: ", ex["inputs"]])}

  name = "dod_custom_steps"
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=JsonlDataSource(name, {"validation": [tiny_task]}),
      output_features=tasks.output_features(tasks.vocabulary(bpe_tokenizer_path)),
      preprocessors=[ask, seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim])
  encode = lambda text: hf_tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
  rows = [_row([(encode("Q: " + i)[:8], (encode(" " + t) + [EOS])[:3] + [EOS]
                 if len(encode(" " + t)) > 3 else encode(" " + t) + [EOS])]) for i, t in RECORDS]
  got = _all(_source(pipeline, packing=False, batch_size=4, name=name))
  _assert_batches_equal(got, [_batch(rows)])


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_data_report_on_the_decoder_only_layout(tiny_task, hf_tokenizer, pipeline):
  e = _pieces(hf_tokenizer)
  real = sum(len(a) + len(b) - 1 for a, b in e)
  targets = sum(len(b) for a, b in e)
  built = report.build_report("dod_tiny", LENGTHS, split="validation", max_examples_per_task=None,
                              input_pipeline=pipeline, feature_layout="decoder_only")
  assert built["feature_layout"] == "decoder_only"
  row = built["tasks"][0]
  encode = lambda text: hf_tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
  assert row["inputs_tokens"]["max"] == max(len(encode(i)) for i, _ in RECORDS)
  assert row["targets_tokens"]["max"] == max(len(encode(" " + t)) + 1 for _, t in RECORDS)
  assert row["inputs_truncated_share"] == row["targets_truncated_share"] == 0.25
  packing = built["tasks"][0]["packing"]
  assert packing["unpacked"]["rows"] == 4 and packing["unpacked"]["examples"] == 4
  assert packing["unpacked"]["efficiency"] == pytest.approx(real / 48)
  assert packing["unpacked"]["targets_efficiency"] == pytest.approx(targets / 48)
  # the report reads as training would with 64 rows per batch: the indexed pipeline's rows each
  # read their own stream (here one example each), tf.data packs the stream in order (0 and 1 share)
  rows = 4 if pipeline == "indexed" else 3
  assert packing["packed"]["rows"] == rows and packing["packed"]["examples"] == 4
  assert packing["packed"]["efficiency"] == pytest.approx(real / (12 * rows))
  assert packing["packed"]["inputs_efficiency"] == pytest.approx((real - targets) / (12 * rows))
  assert "dod_tiny" in report.markdown(built)


def test_a_tokenizer_json_on_a_bucket(gcs_bucket, bpe_tokenizer_path):
  from xmtf_jax import paths
  url = f"{gcs_bucket}/bloom_tokenizer/tokenizer.json"
  paths.write_bytes(url, open(bpe_tokenizer_path, "rb").read())
  remote = tasks.vocabulary(url)
  assert isinstance(remote, bpe_vocabulary.BpeVocabulary) and remote.tokenizer_file == url
  assert remote.encode(" le chat dort") == tasks.vocabulary(bpe_tokenizer_path).encode(" le chat dort")
  assert tasks.vocabulary(paths.dirname(url)) is remote  # the folder gives its tokenizer.json


def test_the_indexed_global_batch_does_not_depend_on_the_process_count(tiny_task):
  def batches(index, count):
    config = batch_source.SourceConfig("dod_tiny", LENGTHS, 4, use_packing=True, seed=5,
                                       feature_layout="decoder_only")
    source = source_factory.make_batch_source(config, "train", process_index=index,
                                              process_count=count)
    try:
      return [next(source) for _ in range(3)]
    finally:
      source.close()
  whole, halves = batches(0, 1), [batches(0, 2), batches(1, 2)]
  for step, batch in enumerate(whole):
    for k in decoder_only.FEATURES:
      np.testing.assert_array_equal(
          batch[k], np.concatenate([halves[0][step][k], halves[1][step][k]]), err_msg=k)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_a_mixture_in_the_decoder_only_layout(tiny_task, bpe_tokenizer_path, pipeline):
  tasks.add_jsonl_task("dod_other", {"train": [tiny_task]},
                       vocab=tasks.vocabulary(bpe_tokenizer_path), overwrite=True)
  tasks.add_mixture("dod_mix", [("dod_tiny", 1.0), ("dod_other", 1.0)], overwrite=True)
  source = _source(pipeline, packing=True, batch_size=4, single_pass=False, split="train",
                   name="dod_mix")
  batches = [next(source) for _ in range(3)]
  counted = source.stats()["truncation"]
  source.close()
  assert all(b[k].shape == (4, 12) for b in batches for k in decoder_only.FEATURES)
  assert set(counted) == {"dod_tiny", "dod_other"}  # each task's own counter
  used = sum(int(b["decoder_segment_ids"].max(axis=1).sum()) for b in batches)
  examples = sum(c["examples"] for c in counted.values())
  # the indexed pipeline counts the examples handed out, tf.data those produced (it reads ahead)
  assert examples == used if pipeline == "indexed" else examples >= used
