"""The train step on 8 simulated devices: micro-batches equal the full batch, optimizer-state shardings
follow the parameters, and a checkpoint restores onto other meshes with the same next step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmtf_jax.model.config import T5Config
from xmtf_jax.parallel import partitioning
from xmtf_jax.train import checkpoints, losses, optim, step_assembly, trainer

# One layer each side keeps compilation short; d_kv * heads != d_model as in mT5.
CONFIG = T5Config(vocab_size=64, d_model=32, d_kv=12, d_ff=48, num_heads=4, num_encoder_layers=1,
                  num_decoder_layers=1, dropout_rate=0.0)
# Factor even these small matrices, so that the sharding of factored statistics is exercised.
OPTIMIZER = optim.OptimizerConfig(learning_rate=0.01, min_dim_size_to_factor=8)
LOSS = losses.LossConfig("average_per_sequence", z_loss=1e-4)


def packed_batch(rows=16, seed=0):
  """A packed batch: every row holds two examples of random lengths, some rows end in padding."""
  rng = np.random.default_rng(seed)
  batch = {k: np.zeros((rows, n), np.int32) for k, n in
           (("encoder_input_tokens", 10), ("encoder_segment_ids", 10), ("encoder_positions", 10),
            ("decoder_input_tokens", 6), ("decoder_target_tokens", 6), ("decoder_segment_ids", 6),
            ("decoder_positions", 6), ("decoder_loss_weights", 6))}
  for r in range(rows):
    for prefix, length in (("encoder", 10), ("decoder", 6)):
      first = int(rng.integers(1, length // 2 + 1))
      second = int(rng.integers(1, length - first + 1))
      segments = [1] * first + [2] * second + [0] * (length - first - second)
      batch[f"{prefix}_segment_ids"][r] = segments
      batch[f"{prefix}_positions"][r] = [list(segments[:i + 1]).count(s) - 1 if s else 0
                                         for i, s in enumerate(segments)]
    used_in = batch["encoder_segment_ids"][r] > 0
    used_out = batch["decoder_segment_ids"][r] > 0
    batch["encoder_input_tokens"][r] = np.where(used_in, rng.integers(2, 64, 10), 0)
    targets = np.where(used_out, rng.integers(2, 64, 6), 0)
    batch["decoder_target_tokens"][r] = targets
    starts = batch["decoder_positions"][r] == 0
    shifted = np.concatenate([[0], targets[:-1]])
    batch["decoder_input_tokens"][r] = np.where(starts | ~used_out, 0, shifted)
    batch["decoder_loss_weights"][r] = used_out
  return batch


_ASSEMBLIES = {}


def setup(num_partitions, devices=None, num_microbatches=1):
  """The step assembly on a (data, model) mesh, one per (mesh, micro-batches), shared by the tests of
  this module."""
  key = (num_partitions, devices and tuple(d.id for d in devices), num_microbatches)
  if key not in _ASSEMBLIES:
    _ASSEMBLIES[key] = step_assembly.assemble_step(
        CONFIG, partitioning.PartitioningConfig(num_partitions=num_partitions), OPTIMIZER, LOSS,
        step_assembly.StepSettings(num_microbatches=num_microbatches), devices=devices)
  return _ASSEMBLIES[key]


@pytest.fixture(scope="module")
def mesh_4x2():
  assembly = setup(2)
  host_params = jax.device_get(assembly.model.init_params(jax.random.key(0, impl="rbg")))
  return assembly, host_params


def fresh_state(assembly, host_params):
  params = jax.tree.map(lambda x, s: jax.device_put(x, s), host_params, assembly.state_shardings.params)
  return assembly.init_state(params)


def test_optimizer_state_shardings_follow_the_parameters(mesh_4x2):
  shardings = mesh_4x2[0].state_shardings
  spec = lambda s: tuple(s.spec)
  # token embedding [vocab, embed]: vocab over 'model'; its factored statistics keep that axis.
  assert spec(shardings.params["token_embedder"]["embedding"]) == ("model", None)
  adafactor_state = shardings.opt_state[0]
  factored = [spec(adafactor_state.v_row["token_embedder"]["embedding"]),
              spec(adafactor_state.v_col["token_embedder"]["embedding"])]
  assert ("model",) in factored and (None,) in factored
  # An MLP kernel [embed, mlp]: mlp over 'model' in the parameter and in one statistic.
  mlp = [spec(adafactor_state.v_row["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]),
         spec(adafactor_state.v_col["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"])]
  assert ("model",) in mlp
  assert spec(shardings.step) == ()


def test_four_microbatches_give_the_full_batch_update(mesh_4x2):
  _, host_params = mesh_4x2
  results = {}
  for m in (1, 4):
    assembly = setup(2, num_microbatches=m)
    batch = partitioning.host_local_to_global(packed_batch(), assembly.mesh)
    state = fresh_state(assembly, host_params)
    new_state, metrics = assembly.train_step(state, batch)
    results[m] = (jax.device_get(new_state.params), trainer.host_metrics(metrics))
  (full_params, full_metrics), (micro_params, micro_metrics) = results[1], results[4]
  for key in ("loss", "cross_entropy", "z_loss", "accuracy", "grad_norm", "num_target_tokens",
              "normalizing_factor"):
    assert micro_metrics[key] == pytest.approx(full_metrics[key], rel=1e-5), key
  assert full_metrics["normalizing_factor"] == 2 * 16  # two packed examples per row
  flat_full, flat_micro = jax.tree.leaves(full_params), jax.tree.leaves(micro_params)
  for a, b, p in zip(flat_full, flat_micro, jax.tree.leaves(host_params)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert not np.allclose(a, p)  # the step changed every parameter


def test_checkpoint_restores_onto_other_meshes_with_the_same_next_step(mesh_4x2, tmp_path):
  assembly, host_params = mesh_4x2
  state = fresh_state(assembly, host_params)
  step_4x2 = assembly.train_step
  state, _ = step_4x2(state, partitioning.host_local_to_global(packed_batch(seed=1), assembly.mesh))
  saved_params, saved_opt = jax.device_get(state.params), jax.device_get(state.opt_state)
  checkpointer = checkpoints.Checkpointer(str(tmp_path), save_period=1)
  checkpointer.save(1, state.params, state.opt_state, {"t5_config": CONFIG.to_dict()},
                    [{"batches_consumed": 1}])
  checkpointer.wait_until_finished()
  next_batch = packed_batch(seed=2)
  _, reference = step_4x2(state, partitioning.host_local_to_global(next_batch, assembly.mesh))
  reference = trainer.host_metrics(reference)

  for num_partitions, devices in ((4, None), (1, jax.devices()[:1])):  # 2x4, then one device
    other = setup(num_partitions, devices)
    other_shardings, abstract = other.state_shardings, other.abstract_state
    restored = checkpointer.restore(1, abstract.params, abstract.opt_state)
    assert restored.metadata["step"] == 1  # input position: one entry per saving process
    assert restored.input_position == [[{"batches_consumed": 1}]]
    embedding = restored.params["token_embedder"]["embedding"]
    assert embedding.sharding == other_shardings.params["token_embedder"]["embedding"]
    for a, b in zip(jax.tree.leaves(jax.device_get(restored.params)), jax.tree.leaves(saved_params)):
      np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(jax.device_get(restored.opt_state)), jax.tree.leaves(saved_opt)):
      np.testing.assert_array_equal(a, b)
    other_state = trainer.TrainState(step=jnp.asarray(1, jnp.int32), params=restored.params,
                                     opt_state=restored.opt_state)
    other_state = jax.device_put(other_state, other_shardings)
    _, metrics = other.train_step(other_state,
                                  partitioning.host_local_to_global(next_batch, other.mesh))
    metrics = trainer.host_metrics(metrics)
    for key in ("loss", "grad_norm", "param_norm", "accuracy"):
      assert metrics[key] == pytest.approx(reference[key], rel=1e-5), (num_partitions, key)
  checkpointer.close()


def test_training_flops_count_by_hand():
  # One encoder layer and one decoder layer, d 2, heads*kv 3, ff 5, vocab 7; lengths 4 / 2; batch 1.
  config = T5Config(vocab_size=7, d_model=2, d_kv=3, d_ff=5, num_heads=1, num_encoder_layers=1,
                    num_decoder_layers=1)
  encoder = 4 * (4 * 2 * 3 + 3 * 2 * 5 + 2 * 4 * 3)
  decoder = 2 * (4 * 2 * 3 + 2 * 2 * 3 + 3 * 2 * 5) + 2 * (2 * 2 * 3 + 2 * 4 * 3) + 4 * 2 * 2 * 3
  head = 2 * 2 * 7
  assert trainer.training_flops_per_step(config, 1, 4, 2) == 6 * (encoder + decoder + head)
