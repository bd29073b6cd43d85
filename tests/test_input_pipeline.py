"""The trainer's input pipeline: host shards, packing, truncation counts, exact save/restore."""
import collections
import json

import numpy as np
import pytest
import sentencepiece as spm

import mixtures
import seqio
from xmtf_jax.data import pipeline as input_pipeline
from xmtf_jax.data import batch_source
from xmtf_jax.data.report import packing_efficiency

LENGTHS = {"inputs": 64, "targets": 16}


def batches(name, *, num_shards=1, shard_index=0, use_packing=False, lengths=LENGTHS,
            global_batch_size=4, split="train"):
  it = input_pipeline.make_batch_iterator(name, lengths, split, global_batch_size,
                                          use_packing=use_packing, shuffle=False, repeat=False,
                                          shard_index=shard_index, num_shards=num_shards)
  return list(it)


def unpacked_examples(batch_list):
  """(inputs tokens, targets tokens) of every non-padding row of unpacked batches."""
  out = []
  for b in batch_list:
    for row in range(b["encoder_input_tokens"].shape[0]):
      targets = b["decoder_target_tokens"][row][b["decoder_loss_weights"][row] > 0]
      if targets.size == 0:
        continue  # an all-zero row padding the last batch
      inputs = b["encoder_input_tokens"][row]
      out.append((tuple(inputs[inputs > 0]), tuple(targets)))
  return out


def test_two_hosts_read_disjoint_shards_that_make_up_the_split(xp3_fixture):
  everything = unpacked_examples(batches("fx_xp3"))
  assert len(everything) == 42 == len(set(everything))  # fixture examples are all distinct
  shards = [unpacked_examples(batches("fx_xp3", num_shards=2, shard_index=i, global_batch_size=4))
            for i in range(2)]
  assert not set(shards[0]) & set(shards[1])
  assert sorted(shards[0] + shards[1]) == sorted(everything)
  assert abs(len(shards[0]) - len(shards[1])) <= 5  # balanced per task to one example


def test_batch_shapes_and_dtypes(xp3_fixture):
  it = input_pipeline.make_batch_iterator("fx_xp3", LENGTHS, "train", 8, use_packing=True, seed=3,
                                          shard_index=1, num_shards=2)
  batch = next(it)
  assert {k: v.shape for k, v in batch.items()} == it.shapes() == {
      "encoder_input_tokens": (4, 64), "encoder_segment_ids": (4, 64), "encoder_positions": (4, 64),
      "decoder_input_tokens": (4, 16), "decoder_target_tokens": (4, 16),
      "decoder_loss_weights": (4, 16), "decoder_segment_ids": (4, 16), "decoder_positions": (4, 16)}
  assert all(v.dtype == np.int32 for v in batch.values())
  with pytest.raises(ValueError, match="does not divide"):
    input_pipeline.make_batch_iterator("fx_xp3", LENGTHS, "train", 7, shard_index=0, num_shards=2)


def test_packing_keeps_every_token_once_with_correct_segments(xp3_fixture):
  lengths = {"inputs": 128, "targets": 32}
  expected = collections.Counter(unpacked_examples(batches("fx_xp3", lengths=lengths)))
  packed = batches("fx_xp3", use_packing=True, lengths=lengths)
  found = collections.Counter()
  real_tokens = slots = 0
  for b in packed:
    for row in range(b["encoder_input_tokens"].shape[0]):
      enc_seg, dec_seg = b["encoder_segment_ids"][row], b["decoder_segment_ids"][row]
      enc_tok, dec_tgt = b["encoder_input_tokens"][row], b["decoder_target_tokens"][row]
      # padding is exactly where segment id 0 is; loss weights mark the decoder's real tokens
      assert np.array_equal(enc_tok > 0, enc_seg > 0) and np.array_equal(dec_tgt > 0, dec_seg > 0)
      assert np.array_equal(b["decoder_loss_weights"][row], (dec_seg > 0).astype(np.int32))
      segments = sorted(set(enc_seg[enc_seg > 0]))
      assert segments == sorted(set(dec_seg[dec_seg > 0])) == list(range(1, len(segments) + 1))
      for s in segments:
        enc_pos, dec_pos = b["encoder_positions"][row][enc_seg == s], b["decoder_positions"][row][dec_seg == s]
        assert np.array_equal(enc_pos, np.arange(enc_pos.size))
        assert np.array_equal(dec_pos, np.arange(dec_pos.size))
        targets = dec_tgt[dec_seg == s]
        # teacher forcing within the segment: decoder input = targets shifted right, starting at 0
        assert np.array_equal(b["decoder_input_tokens"][row][dec_seg == s],
                              np.concatenate([[0], targets[:-1]]))
        found[(tuple(enc_tok[enc_seg == s]), tuple(targets))] += 1
      real_tokens += int((enc_seg > 0).sum() + (dec_seg > 0).sum())
      slots += enc_seg.size + dec_seg.size
  assert found == expected
  rows_used = sum(int((b["encoder_segment_ids"].max(1) > 0).sum()) for b in packed)
  assert rows_used <= 42 / 2  # two or more examples per row on average
  # the data report's packing efficiency (non-pad share) equals this recount, task by task
  for lang in ("ar", "code"):
    task = seqio.get_mixture_or_task(f"fx_xp3_{lang}")
    recount = batches(f"fx_xp3_{lang}", use_packing=True, global_batch_size=1, lengths=lengths)
    tokens = sum(int((b["encoder_segment_ids"] > 0).sum() + (b["decoder_segment_ids"] > 0).sum())
                 for b in recount)
    reported = packing_efficiency(task, "train", lengths, None, pack=True, pipeline="tf_data")
    assert reported["rows"] == len(recount)
    assert reported["efficiency"] == pytest.approx(tokens / (len(recount) * (128 + 32)))


def test_truncation_is_counted(xp3_fixture, data_spm_path):
  lengths = {"inputs": 12, "targets": 5}
  sp = spm.SentencePieceProcessor(model_file=data_spm_path)
  records = xp3_fixture["expected"]["hi"]["train"]
  untrimmed_in = [len(sp.encode(r["inputs"])) for r in records]
  untrimmed_out = [len(sp.encode(r["targets"])) + 1 for r in records]  # + EOS
  it = input_pipeline.make_batch_iterator("fx_xp3_hi", lengths, "train", 1, shuffle=False,
                                          repeat=False, shard_index=0, num_shards=1)
  rows = unpacked_examples(list(it))
  assert len(rows) == len(records)
  assert all(len(i) <= 12 and len(t) <= 5 and t[-1] == 1 for i, t in rows)  # targets keep EOS
  assert set(it.stats()["truncation"]) == {"fx_xp3_hi"} and it.stats()["split"] == "train"
  totals = it.stats()["truncation"]["fx_xp3_hi"]
  assert totals == {
      "examples": 8,
      "inputs_tokens": sum(untrimmed_in),
      "inputs_truncated_examples": sum(n > 12 for n in untrimmed_in),
      "inputs_truncated_tokens": sum(max(n - 12, 0) for n in untrimmed_in),
      "targets_tokens": sum(untrimmed_out),
      "targets_truncated_examples": sum(n > 5 for n in untrimmed_out),
      "targets_truncated_tokens": sum(max(n - 5, 0) for n in untrimmed_out)}
  assert totals["inputs_truncated_examples"] > 0 and totals["targets_truncated_examples"] > 0


def test_same_seed_same_stream_and_restore_continues_exactly(xp3_fixture, tmp_path):
  # three tasks (en, ar: per-prompt files; code: merged file) sampled at unequal rates keep this test quick
  mixtures.add_mixture("fx_xp3_three", [("fx_xp3_en", 3.0), ("fx_xp3_ar", 2.0), ("fx_xp3_code", 1.0)],
                       overwrite=True)

  def make(seed=7, **kw):
    args = dict(use_packing=True, shuffle=True, seed=seed, shard_index=1, num_shards=2)
    args.update(kw)
    return input_pipeline.make_batch_iterator("fx_xp3_three", LENGTHS, "train", 4, **args)

  first = make()
  head = [next(first) for _ in range(3)]
  state = json.loads(json.dumps(first.get_state()))  # JSON-able
  tail = [next(first) for _ in range(5)]

  again = make()  # same seed: same stream from the start
  assert all(np.array_equal(a[k], b[k]) for a, b in zip(head, [next(again) for _ in range(3)]) for k in a)

  resumed = make()
  resumed.set_state(state)
  got = [next(resumed) for _ in range(5)]
  assert all(np.array_equal(a[k], b[k]) for a, b in zip(tail, got) for k in a)
  assert resumed.get_state()["batches_consumed"] == 8

  with pytest.raises(ValueError, match=r"num_shards: saved 2 vs now 4"):
    make(num_shards=4).set_state(state)


def test_validation_split_and_has_split(xp3_fixture):
  assert batch_source.has_split("fx_xp3", "validation")
  assert not batch_source.has_split("fx_xp3_zh", "validation")
  rows = unpacked_examples(batches("fx_xp3", split="validation", global_batch_size=4))
  assert len(rows) == 5  # en 3 + hi 2, every task read to its end; last batch padded
  last = batches("fx_xp3", split="validation", global_batch_size=4)[-1]
  assert last["encoder_input_tokens"].shape == (4, 64) and not last["encoder_input_tokens"][1:].any()
