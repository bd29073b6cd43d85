"""Sharded forward passes on 8 simulated CPU devices, and parameter shardings that follow the rules."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import xmtf_jax
from xmtf_jax.parallel import partitioning
from xmtf_jax.model.config import T5Config
from xmtf_jax.model.encoder_decoder import EncoderDecoderModel

# Logical axes written out by hand per parameter name (independent of the network's annotations).
EXPECTED_LOGICAL = {
    "embedding": ("vocab", "embed"),  # token_embedder; relpos_bias overrides below
    "query": ("embed", "heads", "kv"), "key": ("embed", "heads", "kv"), "value": ("embed", "heads", "kv"),
    "out": ("heads", "kv", "embed"),
    "wi_0": ("embed", "mlp"), "wi_1": ("embed", "mlp"), "wo": ("mlp", "embed"),
    "scale": ("embed",), "relpos_bias": ("relpos_buckets", "heads"), "logits_dense": ("embed", "vocab"),
}


def expected_spec(path, shape, mesh_shape, two_d):
  names = [getattr(k, "key", None) for k in path]
  logical = EXPECTED_LOGICAL["relpos_bias" if "relpos_bias" in names else
                              "logits_dense" if "logits_dense" in names else
                              names[-1] if names[-1] in ("embedding", "scale") else names[-2]]
  to_mesh = {"vocab": "model", "mlp": "model", "heads": "model", "embed": "data" if two_d else None}
  spec = []
  for name, size in zip(logical, shape):
    axis = to_mesh.get(name)
    spec.append(axis if axis and size % mesh_shape[axis] == 0 else None)
  return tuple(spec)


def normalized(spec, ndim):
  return tuple(spec) + (None,) * (ndim - len(spec))


@pytest.fixture(scope="module")
def reference(hf_mt5_dir):
  folder, _ = hf_mt5_dir
  model, params = xmtf_jax.load_pretrained(folder)
  rng = np.random.default_rng(0)
  enc = rng.integers(2, 128, (8, 24)).astype(np.int32)
  enc[::2, 15:] = 0
  dec = rng.integers(2, 128, (8, 16)).astype(np.int32)
  dec[:, 0] = 0
  return folder, enc, dec, np.asarray(model.logits(params, enc, dec))


@pytest.mark.parametrize("data,model_parallel,two_d", [(8, 1, False), (4, 2, False), (2, 4, False),
                                                        (2, 4, True), (8, 1, True)])
def test_sharded_forward_equals_single_device(reference, data, model_parallel, two_d):
  folder, enc, dec, want = reference
  mesh = partitioning.make_mesh(model_parallel, data)
  rules = partitioning.logical_axis_rules(parameter_sharding_2d=two_d)
  model, params = xmtf_jax.load_pretrained(folder, mesh, logical_axis_rules=rules)
  for path, array in jax.tree_util.tree_flatten_with_path(params)[0]:
    assert array.sharding.mesh.shape == {"data": data, "model": model_parallel}
    want_spec = expected_spec(path, array.shape, mesh.shape, two_d)
    assert normalized(array.sharding.spec, array.ndim) == want_spec, jax.tree_util.keystr(path)
  batch = model.shard_batch({"encoder_input_tokens": enc, "decoder_input_tokens": dec})
  assert batch["encoder_input_tokens"].sharding.spec == P("data")
  got = model.logits(params, batch["encoder_input_tokens"], batch["decoder_input_tokens"])
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=0)
  # Logits come out with batch over data and vocab over model, as the activation constraints say.
  assert normalized(got.sharding.spec, 3) == ("data", None, "model" if model_parallel > 1 else None)


def test_init_params_on_mesh_equals_unsharded_init():
  config = T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_heads=4, num_encoder_layers=1,
                    num_decoder_layers=1)
  plain = EncoderDecoderModel(config).init_params(jax.random.key(3))
  mesh = partitioning.make_mesh(4)
  sharded = EncoderDecoderModel(config, mesh).init_params(jax.random.key(3))
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(plain)[0], jax.tree.leaves(sharded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
  assert sharded["decoder"]["logits_dense"]["kernel"].sharding.spec == P(None, "model")


def test_indivisible_dimensions_stay_replicated(caplog):
  # mt5-small: 6 heads do not split over model=4; d_ff 1024 and the vocabulary do. Abstract: no devices.
  model = EncoderDecoderModel(T5Config())
  shardings = model.param_shardings(partitioning.abstract_mesh(2, 4))
  attention = shardings["encoder"]["layers_0"]["attention"]
  assert normalized(attention["query"]["kernel"].spec, 3) == (None, None, None)
  assert normalized(shardings["encoder"]["layers_0"]["mlp"]["wo"]["kernel"].spec, 2) == ("model", None)
  assert normalized(shardings["token_embedder"]["embedding"].spec, 2) == ("model", None)
  assert "not divisible by mesh axis model" in caplog.text


def test_rules_and_mesh_helpers():
  rules = dict(partitioning.logical_axis_rules())
  assert rules["batch"] == "data" and rules["heads"] == rules["mlp"] == rules["vocab"] == "model"
  assert rules["embed"] is None and rules["kv"] is None
  two_d = partitioning.logical_axis_rules(parameter_sharding_2d=True)
  assert two_d.index(("batch", "data")) < two_d.index(("embed", "data"))
  # Activations keep batch over data; parameters get embed over data.
  import flax.linen as nn
  assert nn.logical_to_mesh_axes(("batch", "length", "embed"), two_d) == P("data", None, None)
  assert nn.logical_to_mesh_axes(("embed", "mlp"), two_d) == P("data", "model")
  override = partitioning.logical_axis_rules(extra_rules=[("heads", None)])
  assert nn.logical_to_mesh_axes(("embed", "heads", "kv"), override) == P(None, None, None)
  assert partitioning.make_mesh(2).shape == {"data": 4, "model": 2}
  with pytest.raises(ValueError, match="must divide the 8 devices"):
    partitioning.make_mesh(3)
  with pytest.raises(ValueError, match="needs 16 devices"):
    partitioning.make_mesh(2, 8)


def test_host_local_to_global_round_trip():
  mesh = partitioning.make_mesh(2)
  local = {"encoder_input_tokens": np.arange(8 * 5, dtype=np.int32).reshape(8, 5)}
  global_batch = partitioning.host_local_to_global(local, mesh)
  array = global_batch["encoder_input_tokens"]
  assert array.shape == (8, 5) and array.sharding.spec == P("data")
  assert len({s.device for s in array.addressable_shards}) == 8
  np.testing.assert_array_equal(partitioning.fetch_global(array), local["encoder_input_tokens"])
