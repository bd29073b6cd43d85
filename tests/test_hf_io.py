"""Reading HF mT5 folders (safetensors, sharded safetensors, torch .bin), the name mapping and its errors."""
import json
import logging
import os
import shutil

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

import xmtf_jax
from xmtf_jax import hf
from xmtf_jax.model.config import T5Config


def hf_numpy_state(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def tree_leaves_by_path(params, prefix=()):
  for k, v in params.items():
    if isinstance(v, dict):
      yield from tree_leaves_by_path(v, prefix + (k,))
    else:
      yield prefix + (k,), np.asarray(v)


def copy_folder_with(src, dst, state=None, config_changes=None):
  os.makedirs(dst)
  with open(os.path.join(src, "config.json")) as f:
    config = json.load(f)
  config.update(config_changes or {})
  with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(config, f)
  if state is not None:
    save_file(state, os.path.join(dst, "model.safetensors"))
  else:
    shutil.copy(os.path.join(src, "model.safetensors"), dst)
  return str(dst)


def read_safetensors(folder):
  from safetensors.numpy import load_file
  return load_file(os.path.join(folder, "model.safetensors"))


def test_config_round_trip_through_transformers():
  from transformers import MT5Config
  ours = T5Config(vocab_size=300, d_model=48, d_kv=8, d_ff=80, num_heads=3, num_encoder_layers=2,
                  num_decoder_layers=5, relative_attention_num_buckets=16,
                  relative_attention_max_distance=40, dropout_rate=0.05, layer_norm_epsilon=1e-5)
  as_hf = hf.t5config_to_hf(ours)
  assert as_hf["tie_word_embeddings"] is False and as_hf["feed_forward_proj"] == "gated-gelu"
  reloaded = MT5Config.from_dict(as_hf).to_dict()  # transformers accepts every field we write
  assert hf.t5config_from_hf(reloaded) == ours
  assert hf.t5config_from_hf(reloaded, dtype="bfloat16").dtype == "bfloat16"
  with pytest.raises(ValueError, match="relu"):
    hf.t5config_from_hf({**as_hf, "feed_forward_proj": "relu"})


def test_hf_to_ours_to_hf_is_bit_exact(hf_mt5_dir):
  folder, hf_model = hf_mt5_dir
  config = hf.read_hf_config(folder)
  state = hf_numpy_state(hf_model)
  for alias in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
    state.pop(alias, None)
  back = hf.params_to_hf(hf.params_from_hf(state, config), config)
  # shared + encoder (relpos, 2 layers x 9, final norm) + decoder (relpos, 3 layers x 14, norm) + lm_head
  assert set(back) == set(state) and len(back) == 1 + (1 + 2 * 9 + 1) + (1 + 3 * 14 + 1) + 1
  for name, value in state.items():
    assert back[name].dtype == np.float32
    np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_safetensors_and_bin_folders_load_the_same_params(hf_mt5_dir, tmp_path, caplog):
  folder, hf_model = hf_mt5_dir
  _, from_safetensors = xmtf_jax.load_pretrained(folder)
  # A .bin folder as older transformers wrote it: the whole state dict, aliases included.
  bin_folder = tmp_path / "bin"
  bin_folder.mkdir()
  shutil.copy(os.path.join(folder, "config.json"), bin_folder)
  state = hf_model.state_dict()
  assert "encoder.embed_tokens.weight" in state
  torch.save(state, bin_folder / "pytorch_model.bin")
  model, from_bin = xmtf_jax.load_pretrained(str(bin_folder))
  assert model.config == hf.read_hf_config(folder)
  # Sharded safetensors with an index, tensors stored in bfloat16 (mT0 releases use half precision).
  sharded = tmp_path / "sharded"
  sharded.mkdir()
  shutil.copy(os.path.join(folder, "config.json"), sharded)
  names = sorted(read_safetensors(folder))
  weight_map = {}
  from safetensors.torch import save_file as save_torch
  for part, chunk in enumerate((names[:30], names[30:])):
    file = f"model-{part + 1:05d}-of-00002.safetensors"
    save_torch({n: state[n].to(torch.bfloat16).contiguous() for n in chunk}, sharded / file)
    weight_map.update({n: file for n in chunk})
  (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  _, from_bf16 = xmtf_jax.load_pretrained(str(sharded))

  a, b, c = (dict(tree_leaves_by_path(p)) for p in (from_safetensors, from_bin, from_bf16))
  assert set(a) == set(b) == set(c)
  for path in a:
    assert a[path].dtype == np.float32 and c[path].dtype == np.float32
    np.testing.assert_array_equal(a[path], b[path], err_msg=str(path))
    np.testing.assert_array_equal(c[path], a[path].astype(ml_dtypes.bfloat16).astype(np.float32),
                                  err_msg=str(path))
  np.testing.assert_array_equal(a[("decoder", "logits_dense", "kernel")],
                                hf_model.lm_head.weight.detach().numpy().T)


def test_missing_config_json(tmp_path):
  with pytest.raises(FileNotFoundError, match="no config.json"):
    xmtf_jax.load_pretrained(str(tmp_path))


def test_missing_weights(hf_mt5_dir, tmp_path):
  folder, _ = hf_mt5_dir
  os.makedirs(tmp_path / "f")
  shutil.copy(os.path.join(folder, "config.json"), tmp_path / "f")
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    xmtf_jax.load_pretrained(str(tmp_path / "f"))


def test_missing_and_unexpected_tensors_are_named(hf_mt5_dir, tmp_path):
  folder, _ = hf_mt5_dir
  state = read_safetensors(folder)
  del state["decoder.block.2.layer.1.EncDecAttention.k.weight"]
  state["encoder.block.7.layer.0.SelfAttention.q.weight"] = np.zeros((48, 32), np.float32)
  bad = copy_folder_with(folder, tmp_path / "bad", state=state)
  with pytest.raises(ValueError) as error:
    xmtf_jax.load_pretrained(bad)
  message = str(error.value)
  assert "missing tensors: decoder.block.2.layer.1.EncDecAttention.k.weight" in message
  assert "unexpected tensors: encoder.block.7.layer.0.SelfAttention.q.weight" in message
  # A config with fewer layers than the weights: the first names and a count, in one paragraph.
  shallow = copy_folder_with(folder, tmp_path / "shallow", config_changes={"num_decoder_layers": 2})
  with pytest.raises(ValueError) as error:
    xmtf_jax.load_pretrained(shallow)
  message = str(error.value)
  assert ("unexpected tensors: decoder.block.2.layer.0.SelfAttention.k.weight, "
          "decoder.block.2.layer.0.SelfAttention.o.weight, decoder.block.2.layer.0.SelfAttention.q.weight "
          "and 11 more. Either config.json belongs to another model") in message and "\n" not in message


def test_shape_mismatch_names_tensor_expected_and_got(hf_mt5_dir, tmp_path):
  folder, _ = hf_mt5_dir
  bad = copy_folder_with(folder, tmp_path / "bad", config_changes={"d_ff": 64})
  with pytest.raises(ValueError) as error:
    xmtf_jax.load_pretrained(bad)
  # One paragraph naming the file and the first mismatch (of 5 MLP matrices x 5 layers), not all 15.
  message = str(error.value)
  assert message == (
      f"{bad}: the weights do not match config.json (2/3 layers, d_model 32, d_ff 64, 4 heads of 12, "
      "vocab 128): shape mismatch for encoder.block.0.layer.1.DenseReluDense.wi_0.weight (in "
      f"{os.path.join(bad, 'model.safetensors')}): expected [64, 32] from the config, got [48, 32] "
      "(14 more tensors differ too). The config.json and the weights come from different models; keep "
      "the config.json that was saved with these weights.")


def test_folder_without_lm_head_ties_it_like_transformers(hf_mt5_dir, tmp_path, caplog):
  from transformers import MT5ForConditionalGeneration
  folder, _ = hf_mt5_dir
  state = read_safetensors(folder)
  del state["lm_head.weight"]
  tied = copy_folder_with(folder, tmp_path / "tied", state=state)
  with caplog.at_level(logging.WARNING, logger="xmtf_jax.hf"):
    model, params = xmtf_jax.load_pretrained(tied)
  assert "tying the LM head to shared.weight" in caplog.text
  np.testing.assert_array_equal(params["decoder"]["logits_dense"]["kernel"], state["shared.weight"].T)
  hf_tied = MT5ForConditionalGeneration.from_pretrained(tied).eval()
  enc = np.array([[5, 9, 17, 3, 0]], np.int32)
  dec = np.array([[0, 7, 8]], np.int32)
  with torch.no_grad():
    want = hf_tied(input_ids=torch.tensor(enc).long(), attention_mask=torch.tensor(enc > 0).long(),
                   decoder_input_ids=torch.tensor(dec).long()).logits.numpy()
  np.testing.assert_allclose(np.asarray(model.logits(params, enc, dec)), want, atol=1e-4, rtol=0)


# ---- tied embeddings: load what transformers loads, or refuse naming the tensors --------------------
ENC, DEC = "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"


def transformers_and_our_logits(folder):
  """(transformers' logits, ours) for one padded example, both loaded from `folder`."""
  from transformers import MT5ForConditionalGeneration
  hf_model = MT5ForConditionalGeneration.from_pretrained(folder).eval()
  enc = np.array([[5, 9, 17, 3, 0], [4, 100, 2, 0, 0]], np.int32)
  dec = np.array([[0, 7, 8], [0, 120, 1]], np.int32)
  with torch.no_grad():
    want = hf_model(input_ids=torch.tensor(enc).long(), attention_mask=torch.tensor(enc > 0).long(),
                    decoder_input_ids=torch.tensor(dec).long()).logits.numpy()
  model, params = xmtf_jax.load_pretrained(folder)
  return want, np.asarray(model.logits(params, enc, dec)), hf_model


def our_log(caplog):
  """Our own log lines (transformers warns about differing tied tensors itself)."""
  return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("xmtf_jax"))


def tensor_uses(folder):
  from xmtf_jax.hf import reader
  source = reader.open_weights(folder)
  _, uses = reader.account_tensors(source, hf.read_hf_config(folder), folder)
  assert set(uses) == set(source.shapes)  # every tensor in the folder is accounted for
  return uses


def test_folder_with_untied_embeddings_is_refused_naming_them(tmp_path):
  """The issue's folder: transformers 5.x saves three different embedding tables and its encoder and
  decoder each use their own; our one token embedding cannot represent that."""
  from transformers import MT5Config, MT5ForConditionalGeneration
  torch.manual_seed(0)
  config = MT5Config(vocab_size=4096, d_model=64, d_kv=16, d_ff=128, num_heads=4, num_layers=2,
                     num_decoder_layers=2)
  config.tie_word_embeddings = False
  MT5ForConditionalGeneration(config).save_pretrained(tmp_path / "untied")
  folder = str(tmp_path / "untied")
  saved = read_safetensors(folder)
  assert not np.array_equal(saved[ENC], saved[DEC])
  hf_model = MT5ForConditionalGeneration.from_pretrained(folder)
  np.testing.assert_array_equal(hf_model.encoder.embed_tokens.weight.detach().numpy(), saved[ENC])
  np.testing.assert_array_equal(hf_model.decoder.embed_tokens.weight.detach().numpy(), saved[DEC])
  with pytest.raises(ValueError) as error:
    xmtf_jax.load_pretrained(folder)
  message = str(error.value)
  assert message.startswith(f"{folder}: the encoder and the decoder embed tokens with different tables")
  assert f"the encoder {ENC} and the decoder {DEC}, whose values differ" in message
  assert "one token embedding for both" in message and "model.save_pretrained" in message
  assert "\n" not in message


def test_tied_names_resolve_like_transformers(hf_mt5_dir, tmp_path, caplog):
  """Folders holding the embedding under other names than shared.weight alone: each loads the tables
  transformers' encoder and decoder use (logits equal to transformers'), or is refused."""
  folder, _ = hf_mt5_dir
  state = read_safetensors(folder)
  other = np.random.default_rng(0).normal(size=state["shared.weight"].shape).astype(np.float32)

  # The encoder and decoder share a table that is not shared.weight: that table is read, shared.weight
  # (which transformers' forward pass never uses) is reported.
  copies = copy_folder_with(folder, tmp_path / "copies", state={**state, ENC: other, DEC: other})
  with caplog.at_level(logging.WARNING, logger="xmtf_jax.hf"):
    want, got, hf_model = transformers_and_our_logits(copies)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  np.testing.assert_array_equal(hf_model.decoder.embed_tokens.weight.detach().numpy(), other)
  assert "shared.weight differs from encoder.embed_tokens.weight" in our_log(caplog)
  assert tensor_uses(copies)["shared.weight"] == "unused"

  # No shared.weight and no decoder table: transformers ties both to the encoder's.
  caplog.clear()
  encoder_only = {k: v for k, v in state.items() if k != "shared.weight"}
  encoder_only[ENC] = other
  only = copy_folder_with(folder, tmp_path / "encoder_only", state=encoder_only)
  with caplog.at_level(logging.WARNING, logger="xmtf_jax.hf"):
    want, got, _ = transformers_and_our_logits(only)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  assert our_log(caplog) == ""
  assert tensor_uses(only)[ENC] == "read"

  # An explicit copy equal to shared.weight: verified and accepted silently.
  caplog.clear()
  equal = copy_folder_with(folder, tmp_path / "equal", state={**state, DEC: state["shared.weight"].copy()})
  with caplog.at_level(logging.WARNING, logger="xmtf_jax.hf"):
    want, got, _ = transformers_and_our_logits(equal)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  assert our_log(caplog) == ""
  assert tensor_uses(equal)[DEC] == "tied copy of shared.weight"

  # A differing encoder table and no decoder table: transformers gives the decoder shared.weight.
  differ = copy_folder_with(folder, tmp_path / "differ", state={**state, ENC: other})
  with pytest.raises(ValueError, match=f"the encoder {ENC} and the decoder shared.weight "
                                       rf"\(as {DEC} is absent\), whose values differ"):
    xmtf_jax.load_pretrained(differ)


def test_normal_folders_load_silently_with_every_tensor_used(hf_mt5_dir, tmp_path, caplog):
  folder, hf_model = hf_mt5_dir
  with caplog.at_level(logging.DEBUG, logger="xmtf_jax.hf"):
    xmtf_jax.load_pretrained(folder)
  assert our_log(caplog) == ""
  assert set(tensor_uses(folder).values()) == {"read"}
  # torch .bin files carry the aliases as views of shared.weight's storage: tied copies, no warning.
  bin_folder = tmp_path / "bin"
  bin_folder.mkdir()
  shutil.copy(os.path.join(folder, "config.json"), bin_folder)
  torch.save(hf_model.state_dict(), bin_folder / "pytorch_model.bin")
  assert tensor_uses(str(bin_folder)) == {**{name: "read" for name in read_safetensors(folder)},
                                          ENC: "tied copy of shared.weight", DEC: "tied copy of shared.weight"}


def test_unknown_tensor_is_an_error_and_transformers_ignored_one_is_skipped(hf_mt5_dir, tmp_path):
  folder, _ = hf_mt5_dir
  state = read_safetensors(folder)
  extra = copy_folder_with(folder, tmp_path / "extra",
                           state={**state, "encoder.adapter.weight": np.zeros((4, 4), np.float32)})
  with pytest.raises(ValueError, match="unexpected tensors: encoder.adapter.weight. Either config.json belongs"):
    xmtf_jax.load_pretrained(extra)
  # transformers' MT5 drops this one without a word (_keys_to_ignore_on_load_unexpected); so do we.
  ignored_name = "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"
  ignored = copy_folder_with(folder, tmp_path / "ignored",
                             state={**state, ignored_name: np.ones((8, 4), np.float32)})
  want, got, _ = transformers_and_our_logits(ignored)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  assert tensor_uses(ignored)[ignored_name] == "ignored"


def test_truncated_weights_name_the_file(hf_mt5_dir, tmp_path, caplog):
  folder, hf_model = hf_mt5_dir
  weights = os.path.join(folder, "model.safetensors")
  data = open(weights, "rb").read()
  for cut, what in ((len(data) - 100, "is truncated: its header describes"), (200, "is truncated: it ends inside its header")):
    bad = copy_folder_with(folder, tmp_path / f"cut{cut}")
    with open(os.path.join(bad, "model.safetensors"), "wb") as f:
      f.write(data[:cut])
    with pytest.raises(ValueError) as error:
      xmtf_jax.load_pretrained(bad)
    message = str(error.value)
    assert message.startswith(f"{os.path.join(bad, 'model.safetensors')} {what}") and "\n" not in message
    assert "download the folder again" in message
  bin_folder = tmp_path / "bin"
  bin_folder.mkdir()
  shutil.copy(os.path.join(folder, "config.json"), bin_folder)
  torch.save(hf_model.state_dict(), bin_folder / "pytorch_model.bin")
  data = (bin_folder / "pytorch_model.bin").read_bytes()
  (bin_folder / "pytorch_model.bin").write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=r"pytorch_model.bin cannot be read as a PyTorch state dict \(.+\)\. "
                                       "An interrupted download"):
    xmtf_jax.load_pretrained(str(bin_folder))
