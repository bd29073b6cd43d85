"""Export to HF folders, checked with transformers itself: logits, greedy generations, tokenizer,
bit-exact round trips, sharding, bfloat16, and errors that leave nothing behind."""
import io
import json
import os
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
import sentencepiece as spm
import torch
from safetensors import safe_open
from safetensors.numpy import load_file

import xmtf_jax
from xmtf_jax.cli import export_hf
from xmtf_jax.hf import sources as export_sources
from xmtf_jax import hf
from xmtf_jax.hf import export as hf_export
from xmtf_jax.hf import safetensors_writer
from xmtf_jax.hf import tokenizer as hf_tokenizer
from xmtf_jax.hf import verify as hf_verify
from xmtf_jax.hf import model_card
from xmtf_jax.parallel import partitioning
from xmtf_jax.model.config import T5Config
from xmtf_jax.model.encoder_decoder import EncoderDecoderModel

from conftest import build_random_hf_mt5

TOL = 1e-4
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Le renard brun saute par-dessus le chien.",
         "Der schnelle braune Fuchs springt über den faulen Hund 123.", "快速的棕色狐狸跳过了懒狗。",
         "तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है।", "الثعلب البني السريع يقفز فوق الكلب الكسول",
         "Mbweha mwepesi wa kahawia anaruka juu ya mbwa mvivu."]
# Unseen words, unseen characters, digits, odd whitespace, full-width forms.
PROBES = TEXTS + ["Hello world, the lazy fox!", "Le chien  paresseux.", "  leading and trailing  ",
                  "ʻOkina ŋ é ﬁ", "x\ty\nz", "１２３ ｆｕｌｌ 9876", "emoji 🦊", "", "a\u00a0b"]
TINY = T5Config(vocab_size=256, d_model=32, d_kv=8, d_ff=64, num_heads=4, num_encoder_layers=2,
                num_decoder_layers=3, relative_attention_num_buckets=8,
                relative_attention_max_distance=20, dropout_rate=0.0)


def train_spm(path, **options):
  """A tiny unigram SentencePiece model with mT5's ids (pad 0, eos 1, unk 2); mT5-like by default."""
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(TEXTS * 20), model_writer=model, vocab_size=options.pop("vocab_size", 200),
      hard_vocab_limit=False, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      character_coverage=1.0, num_threads=1, minloglevel=2, **options)
  with open(path, "wb") as f:
    f.write(model.getvalue())
  return str(path)


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory):
  return train_spm(tmp_path_factory.mktemp("spm") / "mt5_like.model")


@pytest.fixture(scope="module")
def sharded_model():
  """Our tiny model with random parameters laid out over a 4 x 2 (data x model) mesh."""
  model = EncoderDecoderModel(TINY, partitioning.make_mesh(2), partitioning.logical_axis_rules(True))
  params = model.init_params(jax.random.key(1))
  assert not params["decoder"]["logits_dense"]["kernel"].sharding.is_fully_replicated
  return model, params


@pytest.fixture(scope="module")
def exported(sharded_model, spm_path, tmp_path_factory):
  model, params = sharded_model
  out = str(tmp_path_factory.mktemp("export") / "mt0-tiny")
  card = model_card.ModelCard(model_name="mt0-tiny", base_model="google/mt5-small", mixture="xp3",
                              steps=3)
  result = hf_export.export(TINY, params, spm_path, out, model=model, card=card, verify=False,
                            inputs_end_with_eos=True)  # trained with EOS: HF's T5Tokenizer fits
  return out, result


@pytest.fixture(scope="module")
def hf_folder(spm_path, tmp_path_factory):
  """A random untied HF mT5 saved by transformers, with the tokenizer beside it (like an HF mT5 folder)."""
  torch_model = build_random_hf_mt5(seed=3, vocab_size=256)
  folder = tmp_path_factory.mktemp("hf_src")
  torch_model.save_pretrained(folder)
  shutil.copy(spm_path, folder / "spiece.model")
  return str(folder), torch_model


def hf_logits(torch_model, encoder, decoder):
  with torch.no_grad():
    return torch_model(input_ids=torch.tensor(encoder, dtype=torch.long),
                       attention_mask=torch.tensor(encoder > 0, dtype=torch.long),
                       decoder_input_ids=torch.tensor(decoder, dtype=torch.long)).logits.float().numpy()


def random_batch(seed=0, vocab=256):
  rng = np.random.default_rng(seed)
  encoder = rng.integers(3, vocab, (3, 17)).astype(np.int32)
  encoder[0, 9:] = 0  # padding
  encoder[2, 4:] = 0
  decoder = np.concatenate([np.zeros((3, 1)), rng.integers(3, vocab, (3, 10))], 1).astype(np.int32)
  return encoder, decoder


def load_torch(folder, dtype=torch.float32):
  from transformers import MT5ForConditionalGeneration
  model, info = MT5ForConditionalGeneration.from_pretrained(folder, dtype=dtype, local_files_only=True,
                                                           output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
  assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
  return model.eval()


def greedy_by_full_forward(model, params, encoder, steps):
  """Reference greedy decode: argmax of the full teacher-forced forward pass at each step."""
  decoder = np.zeros((encoder.shape[0], steps + 1), np.int32)
  for i in range(steps):
    decoder[:, i + 1] = np.asarray(model.logits(params, encoder, decoder[:, :-1]))[:, i].argmax(-1)
  return decoder[:, 1:]


def cut_at_eos(rows):
  out = []
  for row in rows:
    row = [int(t) for t in row]
    out.append(row[:row.index(1) + 1] if 1 in row else row)
  return out


# ----------------------------------------------------------------------------------------------------


def test_export_loads_in_transformers_with_same_logits_generations_and_tokens(exported, sharded_model,
                                                                             spm_path):
  import seqio
  from transformers import AutoTokenizer
  folder, result = exported
  model, params = sharded_model
  assert sorted(os.listdir(folder)) == sorted(result.files) == [
      "README.md", "config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
      "spiece.model", "tokenizer_config.json"]
  assert not [n for n in os.listdir(os.path.dirname(folder)) if ".tmp-" in n]
  config = json.load(open(os.path.join(folder, "config.json")))
  assert config["model_type"] == "mt5" and config["architectures"] == ["MT5ForConditionalGeneration"]
  assert (config["d_model"], config["d_kv"], config["d_ff"], config["num_heads"], config["num_layers"],
          config["num_decoder_layers"], config["vocab_size"]) == (32, 8, 64, 4, 2, 3, 256)
  assert (config["pad_token_id"], config["eos_token_id"], config["decoder_start_token_id"]) == (0, 1, 0)
  assert config["dense_act_fn"] == "gelu_new" and config["is_gated_act"] is True
  assert config["tie_word_embeddings"] is False and config["dtype"] == "float32"
  generation = json.load(open(os.path.join(folder, "generation_config.json")))
  assert generation == {"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}
  readme = open(os.path.join(folder, "README.md")).read()
  for fact in ("# mt0-tiny", "base_model: google/mt5-small", "mixture: `xp3`", "training steps: `3`",
               "- sw", "MT5ForConditionalGeneration.from_pretrained"):
    assert fact in readme, fact

  torch_model = load_torch(folder)
  assert sum(p.numel() for p in torch_model.parameters()) == result.num_parameters
  encoder, decoder = random_batch()
  ours = np.asarray(model.logits(params, encoder, decoder))
  np.testing.assert_allclose(hf_logits(torch_model, encoder, decoder), ours, atol=TOL, rtol=0)

  vocab = seqio.SentencePieceVocabulary(spm_path, extra_ids=0)
  prompts = [list(vocab.encode(t)) for t in TEXTS[:4]]
  encoder = np.zeros((4, max(map(len, prompts))), np.int32)
  for i, p in enumerate(prompts):
    encoder[i, :len(p)] = p
  with torch.no_grad():
    theirs = torch_model.generate(input_ids=torch.tensor(encoder, dtype=torch.long),
                                  attention_mask=torch.tensor(encoder > 0, dtype=torch.long),
                                  max_new_tokens=10, do_sample=False, num_beams=1,
                                  use_cache=False).numpy()[:, 1:]  # HF's cache assumes equal depths
  ours_generated = cut_at_eos(greedy_by_full_forward(model, params, encoder, 10))
  assert cut_at_eos(theirs) == ours_generated
  assert len({tuple(r) for r in ours_generated}) > 1  # not a degenerate all-equal decode

  tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
  assert type(tokenizer).__name__ == "T5Tokenizer" and len(tokenizer) == vocab.vocab_size
  for text in PROBES:
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == list(vocab.encode(text)), text
    assert tokenizer(text)["input_ids"][-1] == 1
  assert "`tokenizer(text)` appends `</s>`: the model was trained on inputs ending in EOS" in readme


def test_verify_reports_agreement_and_catches_a_wrong_tensor(exported, sharded_model):
  folder, _ = exported
  model, params = sharded_model
  report = hf_verify.verify(folder, model, params, max_new_tokens=8)
  assert report.ok, report.summary()
  assert report.max_abs_logit_diff < TOL and report.generations_equal and not report.tokenizer_mismatches
  assert "verify: OK" in report.summary() and "max |ours - transformers|" in report.summary()
  # Ours with a different LM head (as if the head and the embedding were mixed up): must fail.
  wrong = jax.tree.map(lambda x: x, params)
  wrong["decoder"]["logits_dense"]["kernel"] = params["token_embedder"]["embedding"].T
  bad = hf_verify.verify(folder, model, wrong, max_new_tokens=8)
  assert not bad.ok and bad.max_abs_logit_diff > 100 * bad.logit_tolerance
  assert "MISMATCH" in bad.summary()


def test_hf_to_ours_to_hf_is_bit_identical_with_an_equal_config(hf_folder, tmp_path):
  from transformers import MT5Config
  folder, _ = hf_folder
  model, params = xmtf_jax.load_pretrained(folder)
  out = str(tmp_path / "again")
  hf_export.export(model.config, params, os.path.join(folder, "spiece.model"), out, verify=False)
  original, exported = load_file(os.path.join(folder, "model.safetensors")), load_file(
      os.path.join(out, "model.safetensors"))
  assert set(original) == set(exported) and "lm_head.weight" in exported
  for name, value in original.items():
    assert exported[name].dtype == np.float32 and exported[name].shape == value.shape, name
    np.testing.assert_array_equal(exported[name].view(np.uint32), value.view(np.uint32), err_msg=name)
  assert not np.array_equal(exported["lm_head.weight"], exported["shared.weight"])
  a, b = MT5Config.from_pretrained(folder).to_dict(), MT5Config.from_pretrained(out).to_dict()
  for d in (a, b):
    d.pop("transformers_version", None)
  assert a == b
  assert hf.read_hf_config(out) == hf.read_hf_config(folder) == model.config


def test_cli_reexports_an_hf_folder_sharded_with_its_index(hf_folder, tmp_path, capsys):
  folder, torch_model = hf_folder
  source = tmp_path / "run"
  shutil.copytree(folder, source)
  (source / "eval").mkdir()
  (source / "eval" / "results.json").write_text(json.dumps({"metadata": {"prompt_variant": "en"},
      "datasets": {"xnli": {"mean_of_medians": 0.4012, "num_languages": 15}}}))
  out = str(tmp_path / "sharded")
  limit = 40_000
  code = export_hf.main([f"--checkpoint_dir={source}", f"--output_dir={out}",
                         f"--max_shard_size={limit}", "--verify", "--mixture=demo",
                         "--languages=en,fr,sw"])
  printed = capsys.readouterr().out
  assert code == 0 and "verify: OK" in printed and "exported" in printed
  index = json.load(open(os.path.join(out, hf_export.INDEX_FILE)))
  files = sorted(set(index["weight_map"].values()))
  assert len(files) > 2 and not os.path.exists(os.path.join(out, "model.safetensors"))
  assert files == sorted(f for f in os.listdir(out) if f.startswith("model-"))
  sizes, names = 0, []
  for file in files:
    with safe_open(os.path.join(out, file), "np") as f:
      keys = list(f.keys())
      shard_bytes = sum(f.get_tensor(k).nbytes for k in keys)
    assert shard_bytes <= limit or len(keys) == 1, file
    assert all(index["weight_map"][k] == file for k in keys)
    sizes += shard_bytes
    names += keys
  state = {k: v for k, v in torch_model.state_dict().items() if "embed_tokens" not in k}
  assert sorted(names) == sorted(index["weight_map"]) == sorted(state)
  assert index["metadata"]["total_size"] == sizes == 4 * sum(v.numel() for v in state.values())
  reloaded = load_torch(out)
  encoder, decoder = random_batch(1)
  np.testing.assert_array_equal(hf_logits(reloaded, encoder, decoder), hf_logits(torch_model, encoder,
                                                                                 decoder))
  readme = open(os.path.join(out, "README.md")).read()
  assert "| xnli | 40.1 | 15 |" in readme and "mixture: `demo`" in readme and "- fr" in readme


def test_bfloat16_export_loads_and_is_close(exported, sharded_model, spm_path, tmp_path):
  model, params = sharded_model
  out = str(tmp_path / "bf16")
  hf_export.export(TINY, params, spm_path, out, dtype="bfloat16", model=model, verify=False)
  assert json.load(open(os.path.join(out, "config.json")))["dtype"] == "bfloat16"
  f32 = load_file(os.path.join(exported[0], "model.safetensors"))
  with safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
    for name in f.keys():
      tensor = f.get_tensor(name)
      assert tensor.dtype == torch.bfloat16
      np.testing.assert_array_equal(tensor.float().numpy(),
                                    f32[name].astype(ml_dtypes.bfloat16).astype(np.float32), err_msg=name)
  encoder, decoder = random_batch(2)
  ours = np.asarray(model.logits(params, encoder, decoder))
  native = hf_logits(load_torch(out, dtype=torch.bfloat16), encoder, decoder)
  assert np.max(np.abs(native - ours)) < 0.05 * np.max(np.abs(ours))
  # Upcast to float32, transformers matches our model on the bfloat16-rounded weights exactly.
  report = hf_verify.verify(out, model, params, dtype="bfloat16", max_new_tokens=6)
  assert report.ok, report.summary()


@pytest.mark.parametrize("add_eos", [True, False])
@pytest.mark.parametrize("options", [dict(byte_fallback=True, split_digits=True),  # the demo's kind
                                     dict(byte_fallback=True, normalization_rule_name="identity",
                                          remove_extra_whitespaces=False)])
def test_tokenizer_json_reproduces_sentencepiece_t5tokenizer_cannot(options, add_eos, tmp_path):
  import seqio
  from transformers import AutoTokenizer
  path = train_spm(tmp_path / "spm.model", vocab_size=600, **options)
  info = hf_tokenizer.read_sentencepiece(open(path, "rb").read())
  assert not info.t5_tokenizer_compatible
  folder = tmp_path / "tok"
  folder.mkdir()
  shutil.copy(path, folder / "spiece.model")
  for name, text in hf_tokenizer.tokenizer_files(info, add_eos).items():
    (folder / name).write_text(text)
  (folder / "config.json").write_text(json.dumps(hf_export.hf_config_dict(TINY, "float32")))
  tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
  vocab = seqio.SentencePieceVocabulary(path, extra_ids=0)
  for text in PROBES:
    ids = list(vocab.encode(text))
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids, text
    assert tokenizer(text)["input_ids"] == ids + [1] * add_eos
    if ids and 2 not in ids:
      assert tokenizer.decode(ids) == vocab.decode(ids), text


def test_a_t5_compatible_model_trained_without_eos_gets_a_tokenizer_that_adds_none(spm_path, tmp_path):
  """transformers 5.23's T5Tokenizer always appends EOS (its post-processor is fixed; add_eos_token is
  ignored), so an mT5-like SentencePiece model trained without EOS gets the tokenizer.json instead."""
  import seqio
  from transformers import AutoTokenizer
  info = hf_tokenizer.read_sentencepiece(open(spm_path, "rb").read())
  assert info.t5_tokenizer_compatible
  files = hf_tokenizer.tokenizer_files(info, add_eos=False)
  assert json.loads(files["tokenizer_config.json"])["tokenizer_class"] == "PreTrainedTokenizerFast"
  folder = tmp_path / "tok"
  folder.mkdir()
  shutil.copy(spm_path, folder / "spiece.model")
  for name, text in files.items():
    (folder / name).write_text(text)
  tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
  vocab = seqio.SentencePieceVocabulary(spm_path, extra_ids=0)
  for text in PROBES:
    ids = list(vocab.encode(text))
    assert tokenizer(text)["input_ids"] == ids, text
    if ids and 2 not in ids:
      assert tokenizer.decode(ids) == vocab.decode(ids), text
  assert hf_tokenizer.folder_appends_eos(files) is False
  assert hf_tokenizer.folder_appends_eos(hf_tokenizer.tokenizer_files(info, add_eos=True)) is True
  assert hf_tokenizer.folder_appends_eos({}) is True  # an HF mT5 folder without tokenizer files


def _fed_ids(run_dir, texts):
  """The encoder ids `xmtf_jax.infer` feeds the model of `run_dir` for each text (its EOS setting)."""
  from xmtf_jax.checkpoint import xmtf_format
  from xmtf_jax.checkpoint.model_path import open_model_path
  from xmtf_jax.inference import generation
  from xmtf_jax.model.family import model_for
  from xmtf_jax.train.vocabulary import load_vocabulary
  opened = open_model_path(run_dir)
  model = model_for(xmtf_format.config_from_metadata(opened.metadata))  # its prompt format; no weights
  fed = []

  def predictor(tokens, rng):
    fed.append([int(t) for t in np.asarray(tokens)[0] if t])  # row 0: the text (others pad)
    return np.ones((len(tokens), 1), np.int32)

  vocabulary = load_vocabulary(opened)
  for text in texts:  # one at a time: batches are grouped by length
    generation.predict_texts(model, None, vocabulary, [text], generation.DecodingConfig(),
                             add_eos=opened.inputs_end_with_eos, predictor=predictor)
  return fed


@pytest.mark.parametrize("add_eos_to_inputs", [False, True])
def test_exported_tokenizer_encodes_prompts_as_infer_feeds_them(tiny_trained_run, add_eos_to_inputs,
                                                                tmp_path):
  """Issue 19 item 5: HF `generate` on the export and `xmtf_jax.infer` see the same prompt ids: no
  trailing EOS for a model trained without it (the demo), EOS for one trained with it; a re-export
  of the exported folder keeps it."""
  from transformers import AutoTokenizer
  from xmtf_jax.checkpoint import xmtf_format
  run, _ = tiny_trained_run
  step_dir = tmp_path / "checkpoint_3"
  shutil.copytree(os.path.join(run, "checkpoint_3"), step_dir)
  metadata_file = os.path.join(step_dir, *xmtf_format.METADATA_FILE)
  metadata = json.load(open(metadata_file))
  assert metadata["add_eos_to_inputs"] is False  # the demo's recorded setting
  metadata["add_eos_to_inputs"] = add_eos_to_inputs
  with open(metadata_file, "w") as f:
    json.dump(metadata, f)
  out = str(tmp_path / "hf")
  assert export_hf.main([f"--checkpoint_dir={step_dir}", f"--output_dir={out}", "--noverify"]) == 0
  texts = TEXTS[:3] + ["Translate to English: Je t'aime."]
  fed = _fed_ids(str(step_dir), texts)
  assert all((row[-1] == 1) is add_eos_to_inputs for row in fed)
  tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
  assert [tokenizer(t)["input_ids"] for t in texts] == fed
  readme = open(os.path.join(out, "README.md")).read()
  assert ("appends `</s>`" if add_eos_to_inputs else "appends no `</s>`") in readme
  again = str(tmp_path / "hf_again")  # an HF folder's re-export keeps what the folder did
  assert export_hf.main([f"--checkpoint_dir={out}", f"--output_dir={again}", "--noverify"]) == 0
  tokenizer = AutoTokenizer.from_pretrained(again, local_files_only=True)
  assert [tokenizer(t)["input_ids"] for t in texts] == fed


def test_plan_sizes_and_streaming_reads_each_tensor_once(sharded_model, spm_path, tmp_path):
  assert safetensors_writer.parse_size("5GB") == 5 * 10**9 and safetensors_writer.parse_size("2GiB") == 2 * 2**30
  assert safetensors_writer.parse_size("500kb") == 500_000 and safetensors_writer.parse_size(123) == 123
  with pytest.raises(ValueError, match="500MB"):
    safetensors_writer.parse_size("lots")
  entries = safetensors_writer.tensor_entries(TINY, "bfloat16")
  assert sum(e.nbytes for e in entries) == 2 * sum(int(np.prod(e.shape)) for e in entries)
  assert [s.filename for s in safetensors_writer.plan_shards(entries, "1GB")] == ["model.safetensors"]
  big = max(e.nbytes for e in entries)
  shards = safetensors_writer.plan_shards(entries, big // 2)
  assert [e for s in shards for e in s.entries] == entries
  assert all(s.nbytes <= big // 2 or len(s.entries) == 1 for s in shards)

  model, params = sharded_model

  class CountingSource(export_sources.InMemoryParams):
    def __init__(self):
      super().__init__(TINY, params, model)
      self.reads = []

    def read(self, path):
      self.reads.append(path)
      return super().read(path)

  source = CountingSource()
  hf_export.export_source(source, spm_path, str(tmp_path / "out"), max_shard_size="30KB", verify=False)
  assert source.reads == [e.path for e in entries]  # each tensor once, in file order


class FailingSource(export_sources.InMemoryParams):
  """Real parameters, but reading the n-th tensor fails (a lost host, a corrupt checkpoint)."""

  def __init__(self, params, fail_at):
    super().__init__(TINY, params)
    self.count, self.fail_at = 0, fail_at

  def read(self, path):
    self.count += 1
    if self.count == self.fail_at:
      raise OSError("simulated read failure")
    return super().read(path)


def test_errors_are_clear_and_leave_nothing_behind(sharded_model, spm_path, hf_folder, tmp_path):
  model, params = sharded_model
  parent = tmp_path / "outputs"
  parent.mkdir()
  # Non-empty output directory: refused, untouched.
  busy = parent / "busy"
  busy.mkdir()
  (busy / "keep.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="not empty.*keep.txt.*overwrite"):
    hf_export.export(TINY, params, spm_path, str(busy), verify=False)
  assert os.listdir(busy) == ["keep.txt"]
  # Failure in the middle of writing: no output directory, no temporary directory.
  with pytest.raises(OSError, match="simulated"):
    hf_export.export_source(FailingSource(params, 7), spm_path, str(parent / "new"), verify=False)
  # Missing checkpoint, a step on an HF folder, a vocabulary that does not fit the model.
  with pytest.raises(FileNotFoundError, match="no such directory"):
    export_hf.main([f"--checkpoint_dir={tmp_path / 'nope'}", f"--output_dir={parent / 'x'}"])
  with pytest.raises(ValueError, match="--step=5"):
    export_hf.main([f"--checkpoint_dir={hf_folder[0]}", "--step=5", f"--output_dir={parent / 'x'}"])
  big_vocab = train_spm(tmp_path / "big.model", vocab_size=600, byte_fallback=True)
  with pytest.raises(ValueError, match="pieces but the model's vocabulary is 256"):
    hf_export.export(TINY, params, big_vocab, str(parent / "x"), verify=False)
  # NaN parameters are refused.
  broken = jax.tree.map(lambda x: x, params)
  broken["encoder"]["encoder_norm"]["scale"] = np.full((TINY.d_model,), np.nan, np.float32)
  with pytest.raises(ValueError, match="encoder.final_layer_norm.weight.*NaN"):
    hf_export.export(TINY, broken, spm_path, str(parent / "x"), verify=False)
  assert sorted(os.listdir(parent)) == ["busy"]
  # --overwrite replaces the directory as a whole.
  hf_export.export(TINY, params, spm_path, str(busy), verify=False, overwrite=True)
  assert "keep.txt" not in os.listdir(busy) and "config.json" in os.listdir(busy)
  assert sorted(os.listdir(parent)) == ["busy"]


def test_verification_failure_exits_nonzero_and_is_not_published(sharded_model, spm_path, tmp_path,
                                                                  monkeypatch):
  model, params = sharded_model

  class WrongForVerify(export_sources.InMemoryParams):
    def load_for_verify(self):  # ours differs from what was written: the check must notice
      changed = jax.tree.map(lambda x: x, self.params)
      changed["decoder"]["decoder_norm"]["scale"] = self.params["decoder"]["decoder_norm"]["scale"] * 2
      return model, changed

  out = tmp_path / "out"
  with pytest.raises(hf_export.VerificationFailed, match="does not reproduce") as error:
    hf_export.export_source(WrongForVerify(TINY, params, model), spm_path, str(out), verify=True,
                            verify_kwargs=dict(max_new_tokens=4))
  assert not out.exists() and os.path.exists(os.path.join(error.value.folder, "config.json"))
  # Without the test extras, asking for verification fails before anything is written.
  import importlib.util
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "transformers" else real(name, *a))
  with pytest.raises(RuntimeError, match="requirements-test.txt.*--noverify"):
    hf_export.export(TINY, params, spm_path, str(tmp_path / "other"), verify=True)
  assert not (tmp_path / "other").exists()


def test_trained_checkpoint_exports_and_verifies(tiny_trained_run, tmp_path, capsys):
  """A real training run (demo mixture, its byte-fallback SentencePiece model): the CLI exports a
  chosen step tensor by tensor (orbax partial restores), verifies it, and transformers agrees."""
  import seqio
  from transformers import AutoTokenizer
  from xmtf_jax.train import checkpoints
  run, config = tiny_trained_run
  assert checkpoints.list_steps(run) == [2, 3]
  with pytest.raises(FileNotFoundError, match=r"--step=7: .* available steps: \[2, 3\]"):
    export_hf.main([f"--checkpoint_dir={run}", "--step=7", f"--output_dir={tmp_path / 'x'}"])
  assert not (tmp_path / "x").exists()
  out = str(tmp_path / "hf")
  assert export_hf.main([f"--checkpoint_dir={run}", "--step=2", f"--output_dir={out}"]) == 0
  printed = capsys.readouterr().out
  assert "verify: OK" in printed and "tokenizer: same ids as seqio" in printed

  model, params = xmtf_jax.load_pretrained(checkpoints.step_directory(run, 2))
  exported = load_file(os.path.join(out, "model.safetensors"))
  reference = hf.params_to_hf(jax.device_get(params), config)
  assert set(exported) == set(reference)
  for name, value in reference.items():
    np.testing.assert_array_equal(exported[name], value, err_msg=name)
  step3 = hf.params_to_hf(jax.device_get(xmtf_jax.load_pretrained(run)[1]), config)
  assert not np.array_equal(step3["shared.weight"], reference["shared.weight"])  # step 2, not latest

  encoder, decoder = random_batch(3, vocab=2048)
  np.testing.assert_allclose(hf_logits(load_torch(out), encoder, decoder),
                             np.asarray(model.logits(params, encoder, decoder)), atol=TOL, rtol=0)
  metadata = checkpoints.read_metadata(checkpoints.step_directory(run, 2))
  vocab = seqio.SentencePieceVocabulary(metadata["vocabulary_path"], extra_ids=0)
  tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
  assert os.path.exists(os.path.join(out, "tokenizer.json"))  # byte fallback: T5Tokenizer cannot
  for text in PROBES:
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == list(vocab.encode(text)), text
  readme = open(os.path.join(out, "README.md")).read()
  assert "training steps: `2`" in readme and "mixture: `demo`" in readme


def test_two_processes_export_once(hf_folder, tmp_path):
  """Two JAX processes whose parameters span both: each tensor is all-gathered, process 0 alone
  writes, and the folder equals the single-process export."""
  import socket
  import subprocess
  import sys
  folder, _ = hf_folder
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = str(s.getsockname()[1])
  worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "export_multiprocess_worker.py")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = tmp_path / "out"
  procs = [subprocess.Popen([sys.executable, worker, str(i), port, folder, str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    outputs = [p.communicate(timeout=240)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for i, (p, output) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0 and f"process {i}: OK" in output, output[-3000:]
  assert sorted(os.listdir(out)) == ["from_folder", "from_params"]  # no temporary directories left
  original = load_file(os.path.join(folder, "model.safetensors"))
  index = json.load(open(out / "from_params" / hf_export.INDEX_FILE))
  for name, value in original.items():
    with safe_open(str(out / "from_params" / index["weight_map"][name]), "np") as f:
      np.testing.assert_array_equal(f.get_tensor(name), value, err_msg=name)
  with safe_open(str(out / "from_folder" / "model.safetensors"), "pt") as f:
    for name, value in original.items():
      np.testing.assert_array_equal(f.get_tensor(name).float().numpy(),
                                    value.astype(ml_dtypes.bfloat16).astype(np.float32), err_msg=name)
