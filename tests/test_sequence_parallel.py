"""Sequence parallelism (`PartitioningConfig.sequence_parallel`, gin/partitioning/sequence_parallel.gin)
changes where the residual stream lives and which collectives move it, never a result: one train step
on a 4 x 2 cpu mesh gives the same loss, gradients' norm and parameters as the default rules."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from xmtf_jax.model.config import T5Config
from xmtf_jax.parallel import hlo_collectives, partitioning
from xmtf_jax.train import losses, optim, step_assembly, trainer

from test_trainer import packed_batch

# Unequal depths, heads * d_kv != d_model; scanned with 'minimal' remat like the shipped XXL recipe.
CONFIG = T5Config(vocab_size=64, d_model=32, d_kv=12, d_ff=48, num_heads=4, num_encoder_layers=2,
                  num_decoder_layers=3, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                  dropout_rate=0.0, scan_layers=True, remat_policy="minimal")
OPTIMIZER = optim.OptimizerConfig(learning_rate=0.01, min_dim_size_to_factor=8)


def test_the_rule_splits_only_the_residual_streams_length_over_model():
  rules = partitioning.logical_axis_rules(parameter_sharding_2d=True, sequence_parallel=True)
  mesh = partitioning.abstract_mesh(4, 2)
  spec = lambda *names: partitioning.mesh_spec(PartitionSpec(*names), rules, mesh)
  assert spec("batch", "length", "embed") == PartitionSpec("data", "model", None)
  # Inside the blocks heads / mlp / vocab take `model` first; the sequence stays whole.
  assert spec("batch", "length", "heads", "kv") == PartitionSpec("data", None, "model", None)
  assert spec("batch", "length", "mlp") == PartitionSpec("data", None, "model")
  assert spec("batch", "length", "vocab") == PartitionSpec("data", None, "model")
  # Parameters have no `length`: unchanged.
  assert spec("embed", "mlp") == partitioning.mesh_spec(
      PartitionSpec("embed", "mlp"), partitioning.logical_axis_rules(parameter_sharding_2d=True), mesh)


def _step(sequence_parallel: bool, fsdp: bool):
  part = partitioning.PartitioningConfig(num_partitions=2, parameter_sharding_2d=fsdp,
                                         sequence_parallel=sequence_parallel)
  assembly = step_assembly.assemble_step(CONFIG, part, OPTIMIZER, losses.LossConfig())
  params = assembly.model.init_params(jax.random.key(0))
  state = assembly.init_state(jax.device_put(params, assembly.state_shardings.params))
  batch = partitioning.host_local_to_global(packed_batch(rows=16, seed=5), assembly.mesh)
  text = assembly.train_step.lower(state, batch).compile().as_text()
  new_state, metrics = assembly.train_step(state, batch)
  return jax.device_get(new_state.params), trainer.host_metrics(metrics), text


@pytest.mark.parametrize("fsdp", [False, True])
def test_one_train_step_is_unchanged_and_the_blocks_gather_the_sequence(fsdp):
  params, metrics, text = _step(False, fsdp)
  sp_params, sp_metrics, sp_text = _step(True, fsdp)
  for key in ("loss", "cross_entropy", "z_loss", "accuracy", "grad_norm", "param_norm"):
    assert sp_metrics[key] == pytest.approx(metrics[key], rel=1e-5, abs=1e-6), key
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(sp_params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5,
                               err_msg=jax.tree_util.keystr(path))
  mesh = {"data": 4, "model": 2}
  before = hlo_collectives.collectives_by_axis(text, mesh).get("model", {})
  after = hlo_collectives.collectives_by_axis(sp_text, mesh).get("model", {})
  # The residual stream now enters each block split over `model`: the blocks all-gather it. (XLA:CPU
  # leaves each block's closing all-reduce followed by a slice; libtpu turns that pair into a
  # reduce-scatter: docs/pod_planning.md has the XXL v4-256 compile before and after.)
  assert after["all-gather"]["count"] > before.get("all-gather", {}).get("count", 0) + 2 * 5
