"""umT5 (`T5Config.relative_attention_per_layer`, HF UMT5ForConditionalGeneration) against transformers
on random weights: logits, scanned vs per layer, cached greedy decoding, HF -> ours -> HF bit-exact.

transformers 5.x's UMT5 multiplies the decoder output by d_model**-0.5 (see hf/verify.py); ours, like
umT5 itself, does not: logits are compared through `hf_verify.hf_logit_scale`, which reads the
condition as transformers' forward does, and greedy decoding (argmax) is unaffected."""
import json
import os

import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import xmtf_jax
from xmtf_jax.cli import param_count
from xmtf_jax.errors import UserError
from xmtf_jax.hf import export as hf_export
from xmtf_jax.hf import families, mapping, model_card
from xmtf_jax.hf import verify as hf_verify
from xmtf_jax.inference import generation
from xmtf_jax.model import layer_stacking
from xmtf_jax.model.config import T5Config
from xmtf_jax.model.network import Transformer
from xmtf_jax.parallel import partitioning

from conftest import TINY_HF_MT5
from test_hf_export import train_spm
from test_network_hf import hf_logits, pack, pad_batch, random_examples

TOL = 1e-4
TINY_HF_UMT5 = {**TINY_HF_MT5, "vocab_size": 256}  # room for the SentencePiece model of the export


def build_random_hf_umt5(seed: int = 0):
  """A UMT5ForConditionalGeneration with random weights everywhere, every block's own relative position
  table, and an LM head distinct from the input embedding (as Google's umT5 folders)."""
  from transformers import UMT5Config, UMT5ForConditionalGeneration
  torch.manual_seed(seed)
  config = UMT5Config(**TINY_HF_UMT5)
  model = UMT5ForConditionalGeneration(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif name == "shared.weight" or "relative_attention_bias" in name:
        p.copy_(torch.randn_like(p))
      else:
        p.copy_(torch.randn_like(p) * (p.shape[-1] ** -0.5 if p.ndim == 2 else 0.5))
    model.lm_head.weight = torch.nn.Parameter(torch.randn(config.vocab_size, config.d_model) * 0.2)
  assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
  return model


@pytest.fixture(scope="module")
def hf_umt5(tmp_path_factory):
  """(folder, torch model) saved by transformers, and ours loaded from it, per layer and scanned."""
  hf_model = build_random_hf_umt5()
  folder = str(tmp_path_factory.mktemp("hf_umt5"))
  hf_model.save_pretrained(folder)
  model, params = xmtf_jax.load_pretrained(folder)
  scanned, scanned_params = xmtf_jax.load_pretrained(folder, scan_layers=True)
  return folder, hf_model, (model, params), (scanned, scanned_params)


def test_folder_reads_as_per_layer_tables(hf_umt5):
  folder, hf_model, (model, params), (scanned, scanned_params) = hf_umt5
  config = model.config
  assert config.relative_attention_per_layer and families.for_config(config) is families.UMT5
  with open(os.path.join(folder, "config.json")) as f:
    assert families.for_hf_config(json.load(f)) is families.UMT5
  assert "relpos_bias" not in params["encoder"] and "relpos_bias" not in params["decoder"]
  for stack, depth in (("encoder", 2), ("decoder", 3)):
    for i in range(depth):
      want = hf_model.state_dict()[f"{stack}.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight"]
      np.testing.assert_array_equal(np.asarray(params[stack][f"layers_{i}"]["relpos_bias"]["embedding"]),
                                    want.numpy())
    # Scanned: the tables stacked on the `layers` axis, layer i at index i.
    stacked = np.asarray(scanned_params[stack]["layers"]["relpos_bias"]["embedding"])
    assert stacked.shape == (depth, 8, 4)
  unstacked = layer_stacking.unstack_layers(jax.device_get(scanned_params), scanned.config)
  jax.tree.map(np.testing.assert_array_equal, unstacked, jax.device_get(params))


def test_padded_and_packed_logits_match_hf(hf_umt5):
  _, hf_model, (model, params), (scanned, scanned_params) = hf_umt5
  rng = np.random.default_rng(0)
  # Lengths past max_distance (20) reach the clipped buckets; padding in both encoder and decoder.
  examples = random_examples(rng, 4, model.config.vocab_size, (3, 30), (2, 26))
  enc, dec = pad_batch(examples, 30, 26)
  want = hf_logits(hf_model, enc, dec)
  scale = hf_verify.hf_logit_scale(hf_model)
  got = np.asarray(model.logits(params, enc, dec))
  assert got.shape == want.shape == (4, 26, model.config.vocab_size)
  np.testing.assert_allclose(got * scale, want, atol=TOL, rtol=0)
  # Scanned (and rematerialised) stacks compute the same numbers.
  np.testing.assert_allclose(np.asarray(scanned.logits(scanned_params, enc, dec)), got, atol=1e-5, rtol=0)
  remat = Transformer(scanned.config.replace(remat_policy="full"))
  np.testing.assert_allclose(np.asarray(remat.apply({"params": scanned_params}, enc, dec)), got, atol=1e-5,
                             rtol=0)
  # Packed: each example sees its own positions in every layer's table, as when run alone.
  batch = pack([examples[:2], examples[2:]], 60, 52)
  packed = np.asarray(Transformer(model.config).apply(
      {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
      batch["encoder_segment_ids"], batch["decoder_segment_ids"], batch["encoder_positions"],
      batch["decoder_positions"]))
  for row, group in enumerate([examples[:2], examples[2:]]):
    at = 0
    for e, d in group:
      alone = hf_logits(hf_model, e[None], d[None])[0] / scale
      np.testing.assert_allclose(packed[row, at:at + len(d)], alone, atol=TOL, rtol=0)
      at += len(d)


def test_cached_greedy_decoding_matches_hf_generate(hf_umt5):
  _, hf_model, (model, params), (scanned, scanned_params) = hf_umt5
  rng = np.random.default_rng(1)
  enc, _ = pad_batch(random_examples(rng, 3, model.config.vocab_size, (4, 25), (2, 3)), 25, 2)
  config = generation.DecodingConfig(method="greedy", max_decode_length=24)
  ours = np.asarray(generation.predict_batch(model, params, enc, config).sequences)
  ours_scanned = np.asarray(generation.predict_batch(scanned, scanned_params, enc, config).sequences)
  np.testing.assert_array_equal(ours_scanned, ours)
  with torch.no_grad():
    inputs = torch.tensor(enc, dtype=torch.long)
    # transformers 5.23 sizes its KV cache by the encoder's depth (2 here, 3 decoder layers): no cache.
    theirs = hf_model.generate(input_ids=inputs, attention_mask=(inputs > 0).long(), max_new_tokens=24,
                               do_sample=False, num_beams=1, use_cache=False).numpy()[:, 1:]
  for row_ours, row_theirs in zip(ours, theirs):
    n = len(row_theirs)
    assert list(row_ours[:n]) == list(row_theirs), (row_ours, row_theirs)


def test_hf_to_ours_to_hf_is_bit_exact(hf_umt5):
  _, hf_model, (model, params), (scanned, scanned_params) = hf_umt5
  want = {k: v.numpy() for k, v in hf_model.state_dict().items() if "embed_tokens" not in k}
  for config, tree in ((model.config, params), (scanned.config, scanned_params)):
    got = mapping.params_to_hf(jax.device_get(tree), config)
    assert sorted(got) == sorted(want)
    for name, value in want.items():
      np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_export_is_a_umt5_folder_transformers_loads(hf_umt5, tmp_path):
  _, hf_model, (model, params), (scanned, scanned_params) = hf_umt5
  spm_path = train_spm(tmp_path / "spm.model")
  out = str(tmp_path / "umt5-export")
  # From the scanned tree: the export unstacks every layer's table.
  result = hf_export.export(scanned.config, scanned_params, spm_path, out, model=scanned, verify=True)
  assert result.verification.ok and result.verification.architecture == "UMT5ForConditionalGeneration"
  with open(os.path.join(out, "config.json")) as f:
    config = json.load(f)
  assert config["model_type"] == "umt5" and config["architectures"] == ["UMT5ForConditionalGeneration"]
  assert os.path.exists(os.path.join(out, "spiece.model"))
  with open(os.path.join(out, "README.md")) as f:
    readme = f.read()
  assert "UMT5ForConditionalGeneration.from_pretrained(PATH)" in readme
  assert "MT5ForConditionalGeneration" not in readme.replace("UMT5ForConditionalGeneration", "")
  assert "- umt5" in readme and "d_model**-0.5" in readme
  tensors = load_file(os.path.join(out, "model.safetensors"))
  for name, value in hf_model.state_dict().items():
    if "embed_tokens" not in name:
      np.testing.assert_array_equal(tensors[name], value.numpy(), err_msg=name)
  from transformers import UMT5ForConditionalGeneration
  reloaded = UMT5ForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
  enc, dec = pad_batch(random_examples(np.random.default_rng(2), 2, 256, (3, 12), (2, 9)), 12, 9)
  np.testing.assert_array_equal(hf_logits(reloaded, enc, dec), hf_logits(hf_model, enc, dec))
  # And back: the exported folder reads as the model it came from.
  _, again = xmtf_jax.load_pretrained(out)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(again), jax.device_get(params))


def test_default_config_keeps_one_table_per_stack_and_config_round_trips():
  mt5 = T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_heads=2, num_encoder_layers=2,
                 num_decoder_layers=2)
  assert families.for_config(mt5) is families.MT5
  assert [hf for _, hf, _ in mapping.parameter_mapping(mt5) if "relative" in hf] == [
      "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
      "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
  umt5 = mt5.replace(relative_attention_per_layer=True)
  hf = mapping.t5config_to_hf(umt5)
  assert hf["model_type"] == "umt5" and mapping.t5config_from_hf(hf) == umt5
  assert mapping.t5config_from_hf(mapping.t5config_to_hf(mt5)) == mt5
  # param_count: per-layer tables are counted in the same group, once per layer, in either layout.
  mesh = partitioning.abstract_mesh(1, 1)
  groups = param_count.count(umt5, mesh, partitioning.PartitioningConfig())["groups"]
  assert groups["encoder/relpos_bias"][0] == groups["decoder/relpos_bias"][0] == 2 * 32 * 2
  scanned = param_count.count(umt5.replace(scan_layers=True), mesh, partitioning.PartitioningConfig())
  assert scanned["groups"] == groups
  assert param_count.count(mt5, mesh, partitioning.PartitioningConfig())["groups"][
      "encoder/relpos_bias"][0] == 32 * 2
  # The model card of an mT5 export stays mT5's.
  card = model_card.render(model_card.ModelCard(), config=mt5, dtype="float32", num_parameters=1,
                           tokenizer_class="T5TokenizerFast")
  assert "MT5ForConditionalGeneration.from_pretrained" in card and "UMT5" not in card
  assert "- mt5" in card and "d_model**-0.5" not in card


def test_umt5_folder_with_shared_tables_config_is_refused(hf_umt5):
  folder = hf_umt5[0]
  with pytest.raises(UserError, match="relative_attention_bias"):
    xmtf_jax.load_pretrained(folder, relative_attention_per_layer=False)


def test_training_from_umt5_with_a_shared_table_gin_model_names_the_field():
  from xmtf_jax.train import run_checks
  mt5 = T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_heads=2)
  with pytest.raises(UserError, match="relative_attention_per_layer: True there vs False in gin"):
    run_checks.check_same_shapes(mt5.replace(relative_attention_per_layer=True), mt5, "/umt5-folder")


def test_train_step_and_checkpoint_convert_per_layer_tables_between_layouts(tmp_path):
  """One Adafactor step per layer equals the scanned one (each table its own block), and a checkpoint
  written per layer restores stacked (params and optimizer state: the next step is the same)."""
  from test_scan_layers import UNEQUAL, _one_step, assemble, assert_trees_close, both
  from test_trainer import packed_batch
  from xmtf_jax.train import checkpoints, trainer
  config = UNEQUAL.replace(relative_attention_per_layer=True)
  mesh = partitioning.make_mesh(2)
  (flat, params), (scanned, stacked) = both(config, mesh=mesh)
  assert stacked["decoder"]["layers"]["relpos_bias"]["embedding"].shape == (3, 8, 4)
  assert tuple(scanned.param_logical_axes()["decoder"]["layers"]["relpos_bias"]["embedding"]) == (
      "layers", "relpos_buckets", "heads")
  assert jax.tree.map(lambda x: x.shape, scanned.abstract_params()) == jax.tree.map(np.shape, stacked)
  batch = packed_batch(rows=16, seed=3)
  flat_state, flat_metrics = _one_step(flat, params, batch)
  scan_state, scan_metrics = _one_step(scanned, stacked, batch)
  for key in ("loss", "grad_norm", "param_norm"):
    assert scan_metrics[key] == pytest.approx(flat_metrics[key], rel=1e-5), key
  assert_trees_close(layer_stacking.unstack_layers(scan_state.params, config), flat_state.params,
                     rtol=1e-5, atol=1e-6)
  for i in range(3):  # every layer's table is trained
    table = ("decoder", f"layers_{i}", "relpos_bias", "embedding")
    assert np.abs(layer_stacking.layer_leaf(flat_state.params, table) -
                  layer_stacking.layer_leaf(params, table)).max() > 1e-4

  checkpointer = checkpoints.Checkpointer(str(tmp_path), save_period=1, async_save=False)
  checkpointer.save(1, flat_state.params, flat_state.opt_state, {"t5_config": config.to_dict()}, [{}],
                    force=True)
  scan_step, flat_step = assemble(scanned.config, mesh), assemble(config, mesh)
  restored = checkpointer.restore(1, scan_step.abstract_state.params, scan_step.abstract_state.opt_state)
  checkpointer.close()
  assert_trees_close(jax.device_get(restored.params), layer_stacking.stack_layers(flat_state.params, config),
                     rtol=0, atol=0)
  next_batch = packed_batch(rows=16, seed=6)
  state = trainer.TrainState(step=jax.numpy.asarray(1, jax.numpy.int32), params=restored.params,
                             opt_state=restored.opt_state)
  _, got = scan_step.train_step(jax.device_put(state, scan_step.state_shardings),
                                partitioning.host_local_to_global(next_batch, mesh))
  _, want = flat_step.train_step(jax.device_put(flat_state, flat_step.state_shardings),
                                 partitioning.host_local_to_global(next_batch, mesh))
  got, want = trainer.host_metrics(got), trainer.host_metrics(want)
  for key in ("loss", "grad_norm", "param_norm"):
    assert got[key] == pytest.approx(want[key], rel=1e-5), key
