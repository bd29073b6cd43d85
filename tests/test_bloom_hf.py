"""BLOOM HF folders in and out: both key spellings and weight formats read, a bit-exact round trip, an
export transformers loads (local and gs://), scanned loads, and our own BLOOM checkpoints opened."""
import json
import os

import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import xmtf_jax
from xmtf_jax import paths
from xmtf_jax.checkpoint import HF_FOLDER, OUR_RUN, open_model_path, xmtf_format
from xmtf_jax.errors import UserError
from xmtf_jax.hf import export as hf_export
from xmtf_jax.hf import reader, sources
from xmtf_jax.model import family, layer_stacking
from xmtf_jax.model.bloom_config import BloomConfig
from xmtf_jax.model.config import T5Config
from xmtf_jax.parallel import partitioning
from xmtf_jax.train import checkpoints, pretrained

VOCAB, HIDDEN, LAYERS, HEADS = 320, 64, 2, 4  # 320 > the tokenizer's 300 ids: padding rows, as BLOOM's


def tiny_tokenizer(folder):
  """A tiny BLOOM-style byte-level BPE tokenizer.json (specials <unk> <s> </s> <pad> = 0..3)."""
  try:  # the shared fixture builder, where it exists
    from tests import bpe_fixture
    return bpe_fixture.write_tokenizer_folder(str(folder))
  except ImportError:
    pass
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
  tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(" ?[^(\\s|[.,!?…。，、।۔،])]+"), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
  tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
  tokenizer.decoder = decoders.ByteLevel()
  texts = ["Translate to French: the cat sleeps.", "le chat dort", "把这句话翻译成英文：猫在睡觉。",
           "यह वाक्य सकारात्मक है", "Question: what is 2 + 2? Answer: 4"]
  tokenizer.train_from_iterator(texts * 5, trainer=trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, "tokenizer.json")
  tokenizer.save(path)
  return path


def build_random_hf_bloom(seed=0):
  """A BloomForCausalLM with random weights everywhere (LayerNorm weights and biases too)."""
  from transformers import BloomConfig as HFBloomConfig, BloomForCausalLM
  torch.manual_seed(seed)
  config = HFBloomConfig(vocab_size=VOCAB, hidden_size=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                         hidden_dropout=0.0, attention_dropout=0.0)
  model = BloomForCausalLM(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layernorm" in name or "ln_f" in name:
        p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
      elif p.ndim == 2:
        p.copy_(torch.randn_like(p) * p.shape[-1] ** -0.5)
      else:
        p.copy_(0.1 * torch.randn_like(p))
  return model


@pytest.fixture(scope="module")
def hf_bloom(tmp_path_factory):
  """(prefixed safetensors folder, unprefixed sharded .bin folder with old config keys, torch model)."""
  model = build_random_hf_bloom()
  prefixed = str(tmp_path_factory.mktemp("bloom_prefixed"))
  model.save_pretrained(prefixed)
  old = str(tmp_path_factory.mktemp("bloom_old"))
  state = {k: v.clone() for k, v in model.transformer.state_dict().items()}  # BloomModel: no prefix
  names = sorted(state)
  shards = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
  for file, shard_names in shards.items():
    torch.save({n: state[n] for n in shard_names}, os.path.join(old, file))
  with open(os.path.join(old, "pytorch_model.bin.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": {n: file for file, ns in shards.items() for n in ns}}, f)
  with open(os.path.join(prefixed, "config.json")) as f:
    config = json.load(f)
  config["n_embed"], config["num_attention_heads"] = config.pop("hidden_size"), config.pop("n_head")
  config["architectures"] = ["BloomModel"]
  with open(os.path.join(old, "config.json"), "w") as f:
    json.dump(config, f)
  return prefixed, old, model


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
  return tiny_tokenizer(tmp_path_factory.mktemp("bpe_tokenizer"))


def batch():
  """Two rows, the second left-padded by 3 (pad 3, segment 0)."""
  tokens = np.array([[5, 17, 33, 260, 9, 8, 100], [3, 3, 3, 44, 45, 46, 319]], np.int32)
  return tokens, np.array([[1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1]], np.int32)


def hf_logits(model, tokens, segments):
  with torch.no_grad():
    return model(input_ids=torch.tensor(tokens).long(),
                 attention_mask=torch.tensor(segments).long()).logits.numpy()


def leaves_of(tree):
  """(path, leaf) of a nested dict, leaves as they are (arrays keep their sharding)."""
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from (((key,) + path, leaf) for path, leaf in leaves_of(value))
    else:
      yield (key,), value


def leaves(params):
  return ((path, np.asarray(leaf)) for path, leaf in leaves_of(params))


def test_both_spellings_and_formats_load_with_the_logits_of_transformers(hf_bloom):
  prefixed, old, hf_model = hf_bloom
  tokens, segments = batch()
  want = hf_logits(hf_model, tokens, segments)
  real = segments.astype(bool)
  loaded = {}
  for folder in (prefixed, old):
    source = reader.open_weights(folder)
    config = reader.read_hf_config(folder)
    assert config == BloomConfig(vocab_size=VOCAB, hidden_size=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                                 initializer_range=0.02)
    _, uses = reader.account_tensors(source, config, folder)
    assert set(uses) == set(source.shapes) and set(uses.values()) == {"read"}
    model, params = xmtf_jax.load_pretrained(folder)
    assert not model.is_encoder_decoder
    ours = np.asarray(model.logits(params, tokens, segments))
    np.testing.assert_allclose(ours[real], want[real], atol=1e-4, rtol=0)
    loaded[folder] = dict(leaves(params))
  assert loaded[prefixed].keys() == loaded[old].keys()
  for path, value in loaded[prefixed].items():
    np.testing.assert_array_equal(value, loaded[old][path])


def test_an_lm_head_equal_to_the_embedding_is_a_tied_copy_and_a_different_one_is_refused(hf_bloom,
                                                                                          tmp_path):
  from safetensors.numpy import save_file
  prefixed, _, _ = hf_bloom
  state = load_file(os.path.join(prefixed, "model.safetensors"))
  for name, head, ok in (("tied", state["transformer.word_embeddings.weight"], True),
                         ("untied", state["transformer.word_embeddings.weight"] + 1, False)):
    folder = tmp_path / name
    folder.mkdir()
    save_file({**state, "lm_head.weight": head}, str(folder / "model.safetensors"))
    with open(os.path.join(prefixed, "config.json")) as f:
      (folder / "config.json").write_text(f.read())
    source = reader.open_weights(str(folder))
    if ok:
      _, uses = reader.account_tensors(source, reader.read_hf_config(str(folder)), str(folder))
      assert uses["lm_head.weight"] == "tied copy of transformer.word_embeddings.weight"
    else:
      with pytest.raises(UserError, match="lm_head.weight differs from transformer.word_embeddings.weight"):
        xmtf_jax.load_pretrained(str(folder))


def test_an_unknown_model_type_names_the_field(hf_bloom, tmp_path):
  prefixed, _, _ = hf_bloom
  with open(os.path.join(prefixed, "config.json")) as f:
    config = {**json.load(f), "model_type": "gpt2"}
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(UserError, match=r"model_type 'gpt2' is not a model xmtf_jax reads .*`model_type`"):
    reader.read_hf_config(str(tmp_path))


def test_a_scanned_load_equals_the_unscanned_one(hf_bloom):
  prefixed, _, _ = hf_bloom
  model, params = xmtf_jax.load_pretrained(prefixed)
  scanned_model, scanned = xmtf_jax.load_pretrained(prefixed, scan_layers=True)
  assert "layers" in scanned["decoder"] and "layers_0" not in scanned["decoder"]
  stacked = dict(leaves(layer_stacking.stack_layers(jax.tree.map(np.asarray, params), model.config)))
  got = dict(leaves(scanned))
  assert got.keys() == stacked.keys()
  for path, value in stacked.items():
    np.testing.assert_array_equal(got[path], value)
  tokens, segments = batch()
  np.testing.assert_allclose(np.asarray(scanned_model.logits(scanned, tokens, segments)),
                             np.asarray(model.logits(params, tokens, segments)), atol=1e-5, rtol=0)
  # Onto a mesh (data 4 x model 2): each tensor placed with the model's sharding, the same values.
  mesh = partitioning.make_mesh(num_partitions=2)
  meshed_model, meshed = xmtf_jax.load_pretrained(prefixed, mesh, scan_layers=True)
  shardings = dict(leaves_of(meshed_model.param_shardings()))
  assert any(s.spec != jax.sharding.PartitionSpec() for s in shardings.values())  # some are split
  for path, leaf in leaves_of(meshed):
    assert leaf.sharding == shardings[path], path
    np.testing.assert_array_equal(np.asarray(leaf), stacked[path])


def test_hf_to_ours_to_hf_is_bit_exact_and_the_export_loads_in_transformers(hf_bloom, tokenizer_path,
                                                                            tmp_path):
  from transformers import AutoModelForCausalLM, AutoTokenizer
  prefixed, _, hf_model = hf_bloom
  model, params = xmtf_jax.load_pretrained(prefixed)
  out = str(tmp_path / "export")
  result = hf_export.export(model.config, params, tokenizer_path, out, model=model, verify=True)
  assert result.verification.ok, result.verification.summary()
  assert "BloomForCausalLM" in result.verification.summary()
  # Every tensor as transformers saved it, bit for bit; no lm_head (tied).
  theirs = load_file(os.path.join(prefixed, "model.safetensors"))
  ours = load_file(os.path.join(out, "model.safetensors"))
  assert sorted(ours) == sorted(theirs) and "lm_head.weight" not in ours
  for name, value in theirs.items():
    assert ours[name].dtype == value.dtype and ours[name].shape == value.shape, name
    np.testing.assert_array_equal(ours[name], value, err_msg=name)
  with open(os.path.join(out, "config.json")) as f:
    config = json.load(f)
  assert config["model_type"] == "bloom" and config["architectures"] == ["BloomForCausalLM"]
  assert config["tie_word_embeddings"] is True and config["hidden_size"] == HIDDEN
  with open(os.path.join(out, "generation_config.json")) as f:
    assert json.load(f) == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}
  with open(tokenizer_path, "rb") as f, open(os.path.join(out, "tokenizer.json"), "rb") as g:
    assert f.read() == g.read()
  card = open(os.path.join(out, "README.md")).read()
  assert "decoder-only" in card and "BloomForCausalLM" in card and "no length normalisation" in card
  # transformers' Auto classes load it: the same logits, BLOOM's special ids, left padding.
  loaded = AutoModelForCausalLM.from_pretrained(out).eval()
  assert type(loaded).__name__ == "BloomForCausalLM"
  tokens, segments = batch()
  real = segments.astype(bool)
  np.testing.assert_allclose(hf_logits(loaded, tokens, segments)[real],
                             np.asarray(model.logits(params, tokens, segments))[real], atol=1e-4, rtol=0)
  tokenizer = AutoTokenizer.from_pretrained(out)
  assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id,
          tokenizer.pad_token_id) == (0, 1, 2, 3)
  assert tokenizer.padding_side == "left"
  from tokenizers import Tokenizer
  text = "Translate to French: the cat sleeps. 猫在睡觉"
  assert tokenizer(text)["input_ids"] == Tokenizer.from_file(tokenizer_path).encode(text).ids
  padded = tokenizer(["le chat", "Translate to French: the cat"], padding=True)["input_ids"]
  assert padded[0][0] == 3 and padded[1][0] != 3


def test_export_to_a_bucket_loads_in_transformers(hf_bloom, tokenizer_path, gcs_bucket, tmp_path):
  from transformers import BloomForCausalLM
  prefixed, _, hf_model = hf_bloom
  # Read from the bucket too: the folder copied up, loaded by our reader tensor by tensor.
  remote_in = f"{gcs_bucket}/bloom/hf-in"
  for name in ("config.json", "model.safetensors"):
    paths.write_bytes(paths.join(remote_in, name), open(os.path.join(prefixed, name), "rb").read())
  model, params = xmtf_jax.load_pretrained(remote_in)
  out = f"{gcs_bucket}/bloom/hf-out"
  result = hf_export.export(model.config, params, tokenizer_path, out, max_shard_size="40KB")
  assert result.shards > 1 and result.verification is None
  _, reread = xmtf_jax.load_pretrained(out)  # sharded safetensors, read from the bucket
  want, got = dict(leaves(params)), dict(leaves(reread))
  assert got.keys() == want.keys()
  for path, value in got.items():
    np.testing.assert_array_equal(value, want[path])
  download = str(tmp_path / "download")
  paths.copy_to_local(out, download)
  assert {"config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json", "generation_config.json", "README.md"} <= set(os.listdir(download))
  loaded = BloomForCausalLM.from_pretrained(download).eval()
  tokens, segments = batch()
  real = segments.astype(bool)
  np.testing.assert_allclose(hf_logits(loaded, tokens, segments)[real],
                             hf_logits(hf_model, tokens, segments)[real], atol=1e-5, rtol=0)


def test_a_bloom_checkpoint_of_ours_opens_as_bloom_and_exports(hf_bloom, tokenizer_path, tmp_path):
  prefixed, _, hf_model = hf_bloom
  model, params = xmtf_jax.load_pretrained(prefixed)
  run = str(tmp_path / "run")
  checkpointer = checkpoints.Checkpointer(run, save_period=4, async_save=False)
  metadata = {**xmtf_format.config_metadata(model.config), "vocabulary_path": tokenizer_path,
              "mixture_or_task_name": "xp3", "initial_checkpoint_path": "bigscience/bloom-560m"}
  assert metadata["t5_config"]["family"] == "bloom"
  checkpointer.save(4, params, {"count": jax.numpy.zeros(())}, metadata, [{"position": 4}])
  checkpointer.close()
  opened = open_model_path(run)
  assert opened.kind == OUR_RUN and opened.step == 4
  assert pretrained.read_config(opened) == model.config
  loaded_model, loaded = pretrained.load_pretrained(opened)
  assert type(loaded_model) is type(model)
  tokens, segments = batch()
  np.testing.assert_array_equal(np.asarray(loaded_model.logits(loaded, tokens, segments)),
                                np.asarray(model.logits(params, tokens, segments)))
  # Exported tensor by tensor from the checkpoint (the command line): the tensors transformers saved.
  from xmtf_jax.cli import export_hf
  assert sources.open_source(opened).vocabulary_path == tokenizer_path
  out = str(tmp_path / "export")
  assert export_hf.main([f"--checkpoint_dir={run}", f"--output_dir={out}", "--noverify"]) == 0
  card = open(os.path.join(out, "README.md")).read()
  assert "# BLOOMZ-style model: bloom-560m finetuned on xp3" in card
  assert "base_model: bigscience/bloom-560m" in card and "- training steps: `4`" in card
  theirs = load_file(os.path.join(prefixed, "model.safetensors"))
  ours = load_file(os.path.join(out, "model.safetensors"))
  assert sorted(ours) == sorted(theirs)
  for name, value in theirs.items():
    np.testing.assert_array_equal(ours[name], value, err_msg=name)
  # An HF BLOOM folder re-exports with its own tokenizer.json.
  assert open_model_path(out).kind == HF_FOLDER
  assert sources.open_source(out).vocabulary_path == os.path.join(out, "tokenizer.json")


def test_checkpoint_metadata_records_the_family_and_old_metadata_is_mt5():
  bloom = BloomConfig(vocab_size=VOCAB, hidden_size=HIDDEN, n_layer=LAYERS, n_head=HEADS, scan_layers=True)
  mt5 = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_encoder_layers=1,
                 num_decoder_layers=2)
  for config in (bloom, mt5):
    assert xmtf_format.config_from_metadata(xmtf_format.config_metadata(config)) == config
  assert "family" not in mt5.to_dict()
  assert xmtf_format.config_from_metadata({"t5_config": mt5.to_dict()}) == mt5  # before BLOOM: no family
  assert xmtf_format.config_from_metadata(xmtf_format.config_metadata(bloom), dtype="bfloat16") == \
      bloom.replace(dtype="bfloat16")
  reader_config = xmtf_format.StepReader("/nowhere", xmtf_format.config_metadata(bloom)).config
  assert family.family_of(reader_config) == "bloom"


def test_a_tokenizer_with_other_special_ids_is_refused_before_anything_is_written(hf_bloom, tmp_path):
  prefixed, _, _ = hf_bloom
  model, params = xmtf_jax.load_pretrained(prefixed)
  document = {"model": {"type": "BPE", "vocab": {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}},
              "added_tokens": []}
  path = tmp_path / "tokenizer.json"
  path.write_text(json.dumps(document))
  with pytest.raises(UserError, match=r"<unk>=0, <s>=1, </s>=2, <pad>=3; this tokenizer has "):
    hf_export.export(model.config, params, str(path), str(tmp_path / "out"), verify=False)
  assert not os.path.exists(tmp_path / "out")
