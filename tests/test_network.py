"""Network behaviour beyond HF parity: KV-cache decoding, remat, dropout, the parameter tree."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import xmtf_jax
from xmtf_jax.model.config import T5Config
from xmtf_jax.model.encoder_decoder import EncoderDecoderModel


@pytest.fixture(scope="module")
def tiny(hf_mt5_dir):
  folder, _ = hf_mt5_dir
  return xmtf_jax.load_pretrained(folder)


def test_kv_cache_decoding_equals_teacher_forcing(tiny):
  model, params = tiny
  rng = np.random.default_rng(0)
  enc = rng.integers(2, 128, (3, 14)).astype(np.int32)
  enc[1, 6:] = 0  # padded encoder row
  dec = rng.integers(2, 128, (3, 25)).astype(np.int32)  # past max_distance=20: clipped buckets
  dec[:, 0] = 0
  full = np.asarray(model.logits(params, enc, dec))
  encoded = model.encode(params, enc)
  cache = model.init_cache(batch_size=3, max_decode_length=25, encoder_length=14)
  assert cache["decoder"]["layers_0"]["self_attention"]["cached_key"].shape == (3, 25, 4, 12)
  assert cache["decoder"]["layers_2"]["encoder_decoder_attention"]["cached_value"].shape == (3, 14, 4, 12)
  steps = []
  for i in range(25):
    logits, cache = model.decode_step(params, cache, encoded, enc, dec[:, i:i + 1])
    steps.append(np.asarray(logits))
  assert int(cache["decoder"]["cache_index"]) == 25
  np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5, rtol=0)
  # Cross-attention keys/values come from the cache after the first step: the encoder output passed
  # later is not read again.
  cache = model.init_cache(batch_size=3, max_decode_length=25, encoder_length=14)
  _, cache = model.decode_step(params, cache, encoded, enc, dec[:, :1])
  second, _ = model.decode_step(params, cache, jnp.zeros_like(encoded), enc, dec[:, 1:2])
  np.testing.assert_allclose(second, full[:, 1:2], atol=1e-5, rtol=0)

  # Several tokens per call (e.g. a forced prefix) write consecutive cache slots.
  cache = model.init_cache(batch_size=3, max_decode_length=25, encoder_length=14)
  first, cache = model.decode_step(params, cache, encoded, enc, dec[:, :10])
  rest, cache = model.decode_step(params, cache, encoded, enc, dec[:, 10:])
  np.testing.assert_allclose(np.concatenate([first, rest], axis=1), full, atol=1e-5, rtol=0)


def test_remat_policies_change_nothing_but_memory(tiny):
  model, params = tiny
  enc = np.array([[4, 5, 6, 7, 0], [8, 9, 10, 0, 0]], np.int32)
  dec = np.array([[0, 3, 4], [0, 5, 0]], np.int32)

  def loss_and_grads(m):
    loss = lambda p: jnp.mean(m.forward(p, enc, dec) ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)

  base_loss, base_grads = loss_and_grads(model)
  for policy in ("full", "dots"):
    loss, grads = loss_and_grads(EncoderDecoderModel(model.config.replace(remat_policy=policy)))
    np.testing.assert_allclose(loss, base_loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(base_grads)):
      np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match="remat_policy='some'"):
    EncoderDecoderModel(model.config.replace(remat_policy="some")).logits(params, enc, dec)


def test_dropout(tiny):
  model, params = tiny
  dropping = EncoderDecoderModel(model.config.replace(dropout_rate=0.3))
  enc = np.array([[4, 5, 6, 7, 0]], np.int32)
  dec = np.array([[0, 3, 4]], np.int32)
  plain = np.asarray(dropping.logits(params, enc, dec))
  np.testing.assert_array_equal(plain, np.asarray(model.logits(params, enc, dec)))  # off by default
  a = np.asarray(dropping.logits(params, enc, dec, enable_dropout=True, dropout_rng=jax.random.key(1)))
  b = np.asarray(dropping.logits(params, enc, dec, enable_dropout=True, dropout_rng=jax.random.key(1)))
  c = np.asarray(dropping.logits(params, enc, dec, enable_dropout=True, dropout_rng=jax.random.key(2)))
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - plain).max() > 1e-2 and np.abs(a - c).max() > 1e-2
  with pytest.raises(ValueError, match="needs a dropout_rng"):
    dropping.logits(params, enc, dec, enable_dropout=True)


def test_parameter_tree_and_logical_axes():
  config = T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_heads=2, num_encoder_layers=1,
                    num_decoder_layers=2)
  model = EncoderDecoderModel(config)
  shapes = jax.tree.map(lambda s: s.shape, model.abstract_params())
  assert shapes["token_embedder"]["embedding"] == (64, 16)
  assert shapes["encoder"]["layers_0"]["attention"]["query"]["kernel"] == (16, 2, 8)
  assert shapes["decoder"]["layers_1"]["encoder_decoder_attention"]["out"]["kernel"] == (2, 8, 16)
  assert shapes["decoder"]["logits_dense"]["kernel"] == (16, 64)
  assert shapes["decoder"]["relpos_bias"]["embedding"] == (32, 2)
  axes = model.param_logical_axes()
  assert tuple(axes["decoder"]["layers_0"]["mlp"]["wo"]["kernel"]) == ("mlp", "embed")
  assert tuple(axes["encoder"]["relpos_bias"]["embedding"]) == ("relpos_buckets", "heads")
  assert jax.tree.structure(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)) == \
      jax.tree.structure(shapes, is_leaf=lambda x: isinstance(x, tuple))
