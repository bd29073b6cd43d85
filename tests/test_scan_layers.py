"""Scanned layers (`T5Config.scan_layers`) compute what the per-layer model computes: logits, the loss,
gradients and one Adafactor step, cached decoding; checkpoints and HF exports convert between layouts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from xmtf_jax.hf import export as hf_export
from xmtf_jax.hf import sources as export_sources
from xmtf_jax.inference import generation
from xmtf_jax.model import layer_stacking
from xmtf_jax.model.config import T5Config
from xmtf_jax.model.encoder_decoder import EncoderDecoderModel
from xmtf_jax.parallel import partitioning
from xmtf_jax.train import checkpoints, losses, optim, pretrained, step_assembly, trainer

from test_hf_export import train_spm
from test_trainer import packed_batch

TINY = T5Config(vocab_size=64, d_model=64, d_kv=16, d_ff=128, num_heads=4, num_encoder_layers=2,
                num_decoder_layers=2, dropout_rate=0.0)
# Unequal depths, heads * d_kv != d_model, few buckets.
UNEQUAL = T5Config(vocab_size=256, d_model=32, d_kv=12, d_ff=48, num_heads=4, num_encoder_layers=2,
                   num_decoder_layers=3, relative_attention_num_buckets=8,
                   relative_attention_max_distance=20, dropout_rate=0.0)
OPTIMIZER = optim.OptimizerConfig(learning_rate=0.01, min_dim_size_to_factor=8)
LOSS = losses.LossConfig("average_per_sequence", z_loss=1e-4)


def both(config, seed=0, mesh=None):
  """(per-layer model, params), (scanned model, the same params stacked)."""
  flat = EncoderDecoderModel(config, mesh)
  scanned = EncoderDecoderModel(config.replace(scan_layers=True), mesh)
  params = jax.device_get(flat.init_params(jax.random.key(seed)))
  return (flat, params), (scanned, layer_stacking.stack_layers(params, config))


def assert_trees_close(a, b, **tolerances):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tolerances)


def test_stacked_tree_shapes_axes_and_round_trip():
  (flat, params), (scanned, stacked) = both(UNEQUAL)
  abstract = scanned.abstract_params()
  assert jax.tree.map(lambda x: x.shape, abstract) == jax.tree.map(np.shape, stacked)
  assert abstract["decoder"]["layers"]["self_attention"]["query"]["kernel"].shape == (3, 32, 4, 12)
  assert abstract["encoder"]["layers"]["mlp"]["wo"]["kernel"].shape == (2, 48, 32)
  assert tuple(scanned.param_logical_axes()["decoder"]["layers"]["mlp"]["wi_0"]["kernel"]) == (
      "layers", "embed", "mlp")
  # The `layers` axis is replicated: a 4 x 2 mesh shards the stacked kernel as the per-layer one.
  mesh = partitioning.make_mesh(2)
  spec = scanned.param_shardings(mesh)["decoder"]["layers"]["mlp"]["wi_0"]["kernel"].spec
  assert tuple(spec) == (None, None, "model")
  assert_trees_close(layer_stacking.unstack_layers(stacked, UNEQUAL), params, rtol=0, atol=0)
  np.testing.assert_array_equal(stacked["decoder"]["layers"]["mlp"]["wo"]["kernel"][2],
                                params["decoder"]["layers_2"]["mlp"]["wo"]["kernel"])


@pytest.mark.parametrize("config", [TINY, UNEQUAL], ids=["tiny", "unequal"])
def test_logits_equal_padded_and_packed(config):
  (flat, params), (scanned, stacked) = both(config)
  batch = packed_batch(rows=4)
  packed = {k: batch[k] for k in ("encoder_input_tokens", "decoder_input_tokens", "encoder_segment_ids",
                                  "decoder_segment_ids", "encoder_positions", "decoder_positions")}
  for inputs in (dict(encoder_input_tokens=batch["encoder_input_tokens"],
                      decoder_input_tokens=batch["decoder_input_tokens"]), packed):
    want = np.asarray(flat.logits(params, **inputs))
    got = np.asarray(scanned.logits(stacked, **inputs))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.abs(want).max() > 0.1


def assemble(config, mesh):
  return step_assembly.assemble_step(config, optimizer_config=OPTIMIZER, loss_config=LOSS, mesh=mesh)


def _one_step(model, params, batch, remat="none"):
  assembly = assemble(model.config.replace(remat_policy=remat), model.mesh)
  state = assembly.init_state(jax.device_put(params, assembly.state_shardings.params))
  new_state, metrics = assembly.train_step(state, partitioning.host_local_to_global(batch, model.mesh))
  return jax.device_get(new_state), trainer.host_metrics(metrics)


@pytest.mark.parametrize("remat", ["none", "minimal", "dots"])
def test_one_train_step_gives_the_same_loss_gradients_and_parameters(remat):
  mesh = partitioning.make_mesh(2)
  (flat, params), (scanned, stacked) = both(UNEQUAL, mesh=mesh)
  batch = packed_batch(rows=16, seed=3)
  flat_state, flat_metrics = _one_step(flat, params, batch)
  scan_state, scan_metrics = _one_step(scanned, stacked, batch, remat)
  for key in ("loss", "cross_entropy", "z_loss", "accuracy", "grad_norm", "param_norm"):
    assert scan_metrics[key] == pytest.approx(flat_metrics[key], rel=1e-5), key
  # Adafactor: per-layer clipping and parameter scale, factored statistics stacked per layer.
  assert_trees_close(layer_stacking.unstack_layers(scan_state.params, UNEQUAL), flat_state.params,
                     rtol=1e-5, atol=1e-6)
  moved = np.abs(flat_state.params["decoder"]["layers_1"]["mlp"]["wo"]["kernel"]
                 - params["decoder"]["layers_1"]["mlp"]["wo"]["kernel"]).max()
  assert moved > 1e-4
  v_row = scan_state.opt_state[0].v_row["decoder"]["layers"]["mlp"]["wi_0"]["kernel"]
  assert v_row.shape == (3, 32)
  np.testing.assert_allclose(v_row[1], flat_state.opt_state[0].v_row["decoder"]["layers_1"]["mlp"]
                             ["wi_0"]["kernel"], rtol=1e-5)

  # Gradients themselves (before the optimizer), through the same loss the step differentiates.
  def grads(model, p):
    weights, factor = losses.normalized_loss_weights(batch, LOSS)
    def loss(p):
      logits = model.forward(p, **{k: batch[k] for k in ("encoder_input_tokens", "decoder_input_tokens",
                                                          "encoder_segment_ids", "decoder_segment_ids",
                                                          "encoder_positions", "decoder_positions")})
      sums = losses.loss_sums(logits, batch["decoder_target_tokens"], weights, LOSS)
      return (sums["cross_entropy_sum"] + sums["z_loss_sum"]) / factor
    return jax.device_get(jax.jit(jax.grad(loss))(p))
  remat_scanned = EncoderDecoderModel(UNEQUAL.replace(scan_layers=True, remat_policy=remat))
  assert_trees_close(layer_stacking.unstack_layers(grads(remat_scanned, stacked), UNEQUAL),
                     grads(EncoderDecoderModel(UNEQUAL), params), rtol=1e-5, atol=1e-6)


def test_cached_decoding_equal_greedy_and_beam():
  (flat, params), (scanned, stacked) = both(UNEQUAL, seed=2)
  cache = scanned.init_cache(3, 5, 10)
  # Stacked on axis 1: rows stay first, as beam search's reordering needs.
  assert cache["decoder"]["layers"]["self_attention"]["cached_key"].shape == (3, 3, 5, 4, 12)
  tokens = packed_batch(rows=3, seed=4)["encoder_input_tokens"]
  for method, beams in (("greedy", 1), ("beam", 3)):
    config = generation.DecodingConfig(method=method, num_beams=beams, max_decode_length=5)
    want = jax.jit(lambda p, t: generation.predict_batch(flat, p, t, config))(params, tokens)
    got = jax.jit(lambda p, t: generation.predict_batch(scanned, p, t, config))(stacked, tokens)
    np.testing.assert_array_equal(np.asarray(got.sequences), np.asarray(want.sequences))
    np.testing.assert_allclose(np.asarray(got.scores), np.asarray(want.scores), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("written_scanned", [True, False], ids=["scanned->per-layer", "per-layer->scanned"])
def test_checkpoint_restores_into_the_other_layout(written_scanned, tmp_path):
  mesh = partitioning.make_mesh(2)
  (flat, params), (scanned, stacked) = both(UNEQUAL, mesh=mesh)
  batch = packed_batch(rows=16, seed=5)
  writer, reader = (scanned, flat) if written_scanned else (flat, scanned)
  written_params = stacked if written_scanned else params
  state, _ = _one_step(writer, written_params, batch)  # a real optimizer state, not zeros
  checkpointer = checkpoints.Checkpointer(str(tmp_path), save_period=1, async_save=False)
  checkpointer.save(1, state.params, state.opt_state, {"t5_config": writer.config.to_dict()}, [{}],
                    force=True)
  reader_step, writer_step = assemble(reader.config, mesh), assemble(writer.config, mesh)
  abstract = reader_step.abstract_state
  restored = checkpointer.restore(1, abstract.params, abstract.opt_state)
  checkpointer.close()
  convert = layer_stacking.unstack_layers if written_scanned else layer_stacking.stack_layers
  assert_trees_close(jax.device_get(restored.params), convert(state.params, UNEQUAL), rtol=0, atol=0)
  embedding = restored.params["decoder"]["logits_dense"]["kernel"]
  assert embedding.sharding.spec == abstract.params["decoder"]["logits_dense"]["kernel"].sharding.spec
  # The optimizer state converts too: the next step from it is the writer's next step.
  next_batch = packed_batch(rows=16, seed=6)
  reader_state = trainer.TrainState(step=jnp.asarray(1, jnp.int32), params=restored.params,
                                    opt_state=restored.opt_state)
  _, got = reader_step.train_step(jax.device_put(reader_state, reader_step.state_shardings),
                                  partitioning.host_local_to_global(next_batch, mesh))
  _, want = writer_step.train_step(jax.device_put(state, writer_step.state_shardings),
                                   partitioning.host_local_to_global(next_batch, mesh))
  got, want = trainer.host_metrics(got), trainer.host_metrics(want)
  for key in ("loss", "grad_norm", "param_norm"):
    assert got[key] == pytest.approx(want[key], rel=1e-5), key
  # The export source reads one layer's tensor from either layout.
  source = export_sources.CheckpointParams(str(tmp_path))
  source.check()
  np.testing.assert_array_equal(source.read(("decoder", "layers_2", "mlp", "wo", "kernel")),
                                layer_stacking.layer_leaf(state.params, ("decoder", "layers_2", "mlp", "wo",
                                                                         "kernel")))
  # load_params (what load_pretrained uses) reads it in either layout as well.
  config, loaded = pretrained.load_params(str(tmp_path), scan_layers=not written_scanned)
  assert config.scan_layers == (not written_scanned)
  assert_trees_close(jax.device_get(loaded), convert(state.params, UNEQUAL), rtol=0, atol=0)


def test_hf_export_of_a_scanned_model_loads_in_transformers(tmp_path):
  (flat, params), (scanned, stacked) = both(UNEQUAL, seed=7)
  folder = str(tmp_path / "scanned-export")
  spm = train_spm(tmp_path / "spm.model")
  hf_export.export(scanned.config, stacked, spm, folder, model=scanned, verify=False)
  from transformers import MT5ForConditionalGeneration
  torch_model = MT5ForConditionalGeneration.from_pretrained(folder).eval()
  batch = packed_batch(rows=3, seed=8)
  encoder, decoder = batch["encoder_input_tokens"], batch["decoder_input_tokens"]
  with torch.no_grad():
    hf_logits = torch_model(input_ids=torch.tensor(encoder), attention_mask=torch.tensor(encoder > 0),
                            decoder_input_ids=torch.tensor(decoder)).logits.numpy()
  np.testing.assert_allclose(np.asarray(scanned.logits(stacked, encoder, decoder)), hf_logits,
                             rtol=1e-4, atol=1e-4)
  # And back: an HF folder loads straight into the stacked layout.
  from xmtf_jax.hf import reader
  config, loaded = reader.load_hf_folder(folder, scan_layers=True)
  assert config.scan_layers
  assert_trees_close(jax.device_get(loaded), stacked, rtol=0, atol=0)
