"""With bfloat16 activations, weight gradients are produced (and so reduced across data replicas) in
float32: the sharded train step's weight-gradient dots take bfloat16 operands and return float32.

XLA:CPU promotes every bfloat16 all-reduce to float32 by itself, so the compiled CPU program cannot
tell; the lowered program (before partitioning) can: the dot that makes dW decides the dtype of the
all-reduce / reduce-scatter that sums it. On a TPU topology (libtpu installed: requirements-tpu-plan.txt)
the compiled program's collectives are checked directly.
"""
import re

import jax
import jax.numpy as jnp
import pytest

from xmtf_jax.model.config import T5Config
from xmtf_jax.parallel import partitioning
from xmtf_jax.train import step_assembly

# Sizes chosen so that no activation shape ([tokens, features], tokens 160 and 96) looks like a weight.
CONFIG = T5Config(vocab_size=128, d_model=32, d_kv=12, d_ff=80, num_heads=4, num_encoder_layers=1,
                  num_decoder_layers=1, dropout_rate=0.0, dtype="bfloat16")
WEIGHT_SHAPES = {(32, 48), (48, 32), (32, 80), (80, 32), (32, 128)}
# Per encoder layer 4 attention + 3 MLP kernels; per decoder layer 8 + 3; the LM head.
NUM_WEIGHT_MATMULS = 7 + 11 + 1
_DOT = re.compile(r"dot_general .*: \(tensor<([\dx]+)x(\w+)>, tensor<([\dx]+)x(\w+)>\) -> tensor<(\d+)x(\d+)x(\w+)>")


def lowered_train_step(config, mesh):
  assembly = step_assembly.assemble_step(config, mesh=mesh)
  batch = {name: jax.ShapeDtypeStruct((16, length), jnp.int32, sharding=assembly.batch_sharding)
           for name, length in (("encoder_input_tokens", 10), ("decoder_input_tokens", 6),
                                ("decoder_target_tokens", 6), ("decoder_loss_weights", 6))}
  return assembly.train_step.lower(assembly.abstract_state, batch)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_weight_gradient_dots_return_float32_from_bfloat16_operands(scan_layers):
  text = lowered_train_step(CONFIG.replace(scan_layers=scan_layers), partitioning.make_mesh(2)).as_text()
  weight_gradients = []
  for lhs_shape, lhs_dtype, rhs_shape, rhs_dtype, rows, cols, out_dtype in _DOT.findall(text):
    if (int(rows), int(cols)) in WEIGHT_SHAPES:
      weight_gradients.append((lhs_dtype, rhs_dtype, out_dtype, (rows, cols)))
  assert len(weight_gradients) == NUM_WEIGHT_MATMULS, weight_gradients
  for lhs_dtype, rhs_dtype, out_dtype, shape in weight_gradients:
    assert out_dtype == "f32", shape
    if shape != ("32", "128"):  # the LM head's gradient comes from float32 logits: float32 operands
      assert (lhs_dtype, rhs_dtype) == ("bf16", "bf16"), shape


def test_on_a_tpu_topology_parameter_gradients_are_reduced_in_float32():
  pytest.importorskip("libtpu")
  from xmtf_jax.parallel import topologies
  from xmtf_jax.train import plan as train_plan
  mesh = partitioning.make_mesh(1, devices=topologies.tpu_devices("v4-8"))
  compiled = lowered_train_step(CONFIG.replace(d_model=128, d_ff=256), mesh).compile()
  collectives = train_plan.collectives(compiled.as_text())
  reduced = {kind: stats["dtypes"] for kind, stats in collectives.items()
             if kind in ("all-reduce", "reduce-scatter")}
  # Weight gradients, layer-norm scales included, are summed over the 4 data replicas in float32
  # (the int32 token counts of the loss are reduced too).
  assert reduced.get("all-reduce", {}).get("f32", 0) > 4 * 128 * 256, collectives
  assert all(set(dtypes) <= {"f32", "s32"} for dtypes in reduced.values()), reduced
