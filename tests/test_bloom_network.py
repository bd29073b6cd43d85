"""BLOOM against transformers' PyTorch `BloomForCausalLM` on random tiny models (float32), and the
properties the training and decoding code relies on: padding and packing by segment ids, scanned =
per-layer, cached decoding = the full forward, the HF name/layout mapping, sharding on a mesh."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import PartitionSpec as P

from xmtf_jax.errors import UserError
from xmtf_jax.hf import bloom_mapping
from xmtf_jax.hf import reader as hf_reader
from xmtf_jax.model import bloom_network, family, layer_stacking
from xmtf_jax.model.bloom_config import BloomConfig
from xmtf_jax.model.config import T5Config
from xmtf_jax.model.decoder_only import DecoderOnlyModel
from xmtf_jax.model.encoder_decoder import EncoderDecoderModel
from xmtf_jax.parallel import partitioning

transformers = pytest.importorskip("transformers")

TOL = 1e-4
VOCAB, HIDDEN, LAYERS, PAD = 300, 96, 3, 3
ROWS, LENGTH = 4, 10


def hf_bloom(num_heads: int, seed: int):
  """A random BloomForCausalLM whose LayerNorms and biases are not at their trivial init."""
  torch.manual_seed(seed)
  config = transformers.BloomConfig(vocab_size=VOCAB, hidden_size=HIDDEN, n_layer=LAYERS, n_head=num_heads)
  model = transformers.BloomForCausalLM(config).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "layernorm" in name or "ln_f" in name:
        param.add_(torch.randn_like(param) * 0.2)
      elif name.endswith("bias"):
        param.add_(torch.randn_like(param) * 0.05)
  return model


@pytest.fixture(scope="module")
def models():
  """num_heads -> (HF model, its state dict as numpy, our config, our params)."""
  out = {}
  for num_heads, seed in ((8, 0), (12, 1)):
    hf = hf_bloom(num_heads, seed)
    state = {name: t.numpy().copy() for name, t in hf.state_dict().items()}
    config = bloom_mapping.bloom_config_from_hf(hf.config.to_dict())
    out[num_heads] = hf, state, config, hf_reader.params_from_hf(state, config)
  return out


def padded_batch(seed: int = 0):
  """[ROWS, LENGTH] tokens and segment ids: full rows and left-padded ones (pads: token 3, segment 0)."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(4, VOCAB, (ROWS, LENGTH)).astype(np.int32)
  segments = np.ones_like(tokens)
  for row, pad in ((1, 3), (3, 6)):
    tokens[row, :pad], segments[row, :pad] = PAD, 0
  return tokens, segments


def hf_logits(hf, tokens, segments):
  with torch.no_grad():
    return hf(input_ids=torch.tensor(tokens, dtype=torch.long),
              attention_mask=torch.tensor(segments, dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize("num_heads", [8, 12])
def test_logits_match_hf_with_left_padding(models, num_heads):
  hf, _, config, params = models[num_heads]
  tokens, segments = padded_batch()
  got = np.asarray(DecoderOnlyModel(config).logits(params, tokens, segments))
  want = hf_logits(hf, tokens, segments)
  real = segments > 0
  np.testing.assert_allclose(got[real], want[real], atol=TOL, rtol=0)
  assert np.abs(want[real]).max() > 0.1  # the comparison is not of near-zero logits
  # Without segment ids every token is real: the first row (no padding) is unchanged.
  unsegmented = np.asarray(DecoderOnlyModel(config).logits(params, tokens))
  np.testing.assert_allclose(unsegmented[0], got[0], atol=1e-6)


def test_packed_row_gives_each_example_its_logits_alone(models):
  _, _, config, params = models[12]
  rng = np.random.default_rng(1)
  a, b = rng.integers(4, VOCAB, 4), rng.integers(4, VOCAB, 5)
  tokens = np.full((ROWS, LENGTH), PAD, np.int32)
  segments = np.zeros((ROWS, LENGTH), np.int32)
  tokens[0, :9], segments[0, :9] = np.concatenate([a, b]), [1] * 4 + [2] * 5  # packed, one pad at the end
  tokens[1, :4], segments[1, :4] = a, 1
  tokens[2, :5], segments[2, :5] = b, 1
  tokens[3, 5:], segments[3, 5:] = b, 1  # b left-padded
  logits = np.asarray(DecoderOnlyModel(config).logits(params, tokens, segments))
  np.testing.assert_allclose(logits[0, :4], logits[1, :4], atol=1e-5)
  np.testing.assert_allclose(logits[0, 4:9], logits[2, :5], atol=1e-5)
  np.testing.assert_allclose(logits[3, 5:], logits[2, :5], atol=1e-5)


def test_scanned_equals_per_layer_and_stacking_round_trips(models):
  _, _, config, params = models[8]
  scanned_config = config.replace(scan_layers=True)
  stacked = layer_stacking.stack_layers(params, scanned_config)
  scanned = DecoderOnlyModel(scanned_config)
  assert jax.tree.map(lambda x: x.shape, scanned.abstract_params()) == jax.tree.map(np.shape, stacked)
  qkv = stacked["decoder"]["layers"]["self_attention"]["query_key_value"]["kernel"]
  assert qkv.shape == (LAYERS, HIDDEN, 8, 3, 12)
  mlp_axes = scanned.param_logical_axes()["decoder"]["layers"]["mlp"]["dense_h_to_4h"]["kernel"]
  assert mlp_axes == P("layers", "embed", "mlp")
  tokens, segments = padded_batch()
  want = np.asarray(DecoderOnlyModel(config).logits(params, tokens, segments))
  np.testing.assert_allclose(np.asarray(scanned.logits(stacked, tokens, segments)), want, atol=1e-6)
  back = layer_stacking.unstack_layers(stacked, config)
  assert jax.tree.all(jax.tree.map(np.array_equal, back, params))
  converted = layer_stacking.convert_like(params, scanned.abstract_params(), scanned_config)
  assert jax.tree.all(jax.tree.map(np.array_equal, converted, stacked))
  per_layer_target = layer_stacking.abstract_in_layout(scanned.abstract_params(), config, stacked=False)
  assert (jax.tree.map(lambda x: x.shape, per_layer_target)
          == jax.tree.map(lambda x: x.shape, DecoderOnlyModel(config).abstract_params()))
  # The HF mapping reads a stacked tree through layer_leaf and writes stacked params when scanned.
  state = bloom_mapping.params_to_hf(stacked, scanned_config)
  read = hf_reader.params_from_hf(state, scanned_config)
  assert jax.tree.all(jax.tree.map(np.array_equal, read, stacked))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_cached_decoding_equals_the_full_forward(models, scan_layers):
  _, _, config, params = models[12]
  config = config.replace(scan_layers=scan_layers)
  if scan_layers:
    params = layer_stacking.stack_layers(params, config)
  model = DecoderOnlyModel(config)
  tokens, segments = padded_batch(2)  # rows 1 and 3 left-padded (3 and 6 pads)
  full = np.asarray(model.logits(params, tokens, segments))
  prompt = 7
  cache = model.init_cache(ROWS, LENGTH)
  assert cache["decoder"]["key_valid"].shape == (ROWS, LENGTH)
  layer_cache = cache["decoder"]["layers" if scan_layers else "layers_0"]
  layer_key = layer_cache["self_attention"]["cached_key"]
  assert layer_key.shape == ((ROWS, LAYERS, LENGTH, 12, 8) if scan_layers else (ROWS, LENGTH, 12, 8))
  logits, cache = model.prefill(params, cache, tokens[:, :prompt], segments[:, :prompt])
  real = segments[:, :prompt] > 0
  np.testing.assert_allclose(np.asarray(logits)[real], full[:, :prompt][real], atol=1e-5)
  for step in range(prompt, LENGTH):
    logits, cache = model.decode_step(params, cache, tokens[:, step:step + 1])
    np.testing.assert_allclose(np.asarray(logits)[:, 0], full[:, step], atol=1e-5, err_msg=f"{step=}")
  assert int(cache["decoder"]["cache_index"]) == LENGTH
  np.testing.assert_array_equal(np.asarray(cache["decoder"]["key_valid"]), segments)


def test_bfloat16_forward_is_close_to_float32(models):
  _, _, config, params = models[8]
  tokens, segments = padded_batch()
  want = np.asarray(DecoderOnlyModel(config).logits(params, tokens, segments))
  got = DecoderOnlyModel(config.replace(dtype="bfloat16")).logits(params, tokens, segments)
  assert got.dtype == jnp.float32
  real = segments > 0
  error = np.abs(np.asarray(got) - want)[real]
  assert error.max() < 0.05 * np.abs(want[real]).max(), error.max()


def test_dropout_draws_from_the_rng_and_changes_the_logits(models):
  _, _, config, params = models[8]
  model = DecoderOnlyModel(config.replace(dropout_rate=0.1, attention_dropout_rate=0.1))
  tokens, segments = padded_batch()
  plain = np.asarray(model.logits(params, tokens, segments))
  key = jax.random.key(3)
  first = np.asarray(model.logits(params, tokens, segments, enable_dropout=True, dropout_rng=key))
  again = np.asarray(model.logits(params, tokens, segments, enable_dropout=True, dropout_rng=key))
  other = np.asarray(model.logits(params, tokens, segments, enable_dropout=True,
                                  dropout_rng=jax.random.key(4)))
  np.testing.assert_array_equal(first, again)
  assert np.abs(first - plain).max() > 1e-3 and np.abs(first - other).max() > 1e-3
  with pytest.raises(ValueError, match="dropout_rng"):
    model.logits(params, tokens, enable_dropout=True)


def test_remat_keeps_the_gradients(models):
  _, _, config, params = models[8]
  tokens, segments = padded_batch()

  def grads(cfg, p):
    def loss(p):
      logits = DecoderOnlyModel(cfg).forward(p, tokens, segments)
      return jnp.sum(jnp.where(segments[..., None] > 0, logits, 0) ** 2)
    return jax.jit(jax.grad(loss))(p)

  want = grads(config, params)
  scanned = config.replace(scan_layers=True, remat_policy="dots")
  got = layer_stacking.unstack_layers(grads(scanned, layer_stacking.stack_layers(params, scanned)), config)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-4), got, want)
  with pytest.raises(UserError, match="BloomConfig.remat_policy='some'"):
    DecoderOnlyModel(config.replace(remat_policy="some")).abstract_params()


# The contract's parameter tree: per-layer path -> (shape, logical axes) for HIDDEN=96, 8 heads of 12.
EXPECTED_TREE = {
    "word_embeddings/embedding": ((VOCAB, HIDDEN), ("vocab", "embed")),
    "word_embeddings_layernorm/scale": ((HIDDEN,), ("embed",)),
    "word_embeddings_layernorm/bias": ((HIDDEN,), ("embed",)),
    "input_layernorm/scale": ((HIDDEN,), ("embed",)),
    "input_layernorm/bias": ((HIDDEN,), ("embed",)),
    "self_attention/query_key_value/kernel": ((HIDDEN, 8, 3, 12), ("embed", "heads", "qkv", "kv")),
    "self_attention/query_key_value/bias": ((8, 3, 12), ("heads", "qkv", "kv")),
    "self_attention/dense/kernel": ((8, 12, HIDDEN), ("heads", "kv", "embed")),
    "self_attention/dense/bias": ((HIDDEN,), ("embed",)),
    "post_attention_layernorm/scale": ((HIDDEN,), ("embed",)),
    "post_attention_layernorm/bias": ((HIDDEN,), ("embed",)),
    "mlp/dense_h_to_4h/kernel": ((HIDDEN, 4 * HIDDEN), ("embed", "mlp")),
    "mlp/dense_h_to_4h/bias": ((4 * HIDDEN,), ("mlp",)),
    "mlp/dense_4h_to_h/kernel": ((4 * HIDDEN, HIDDEN), ("mlp", "embed")),
    "mlp/dense_4h_to_h/bias": ((HIDDEN,), ("embed",)),
    "ln_f/scale": ((HIDDEN,), ("embed",)),
    "ln_f/bias": ((HIDDEN,), ("embed",)),
}


def test_init_params_follow_the_contract_tree(models):
  config = models[8][2]
  model = DecoderOnlyModel(config)
  params = model.init_params(jax.random.key(0))
  flat_axes = jax.tree_util.tree_flatten_with_path(model.param_logical_axes(),
                                                   is_leaf=lambda x: isinstance(x, P))[0]
  axes = {layer_stacking.path_keys(path): spec for path, spec in flat_axes}
  seen = set()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = layer_stacking.path_keys(path)
    name = "/".join(keys[2:] if keys[1].startswith("layers_") else keys[1:] if keys[0] == "decoder" else keys)
    shape, logical = EXPECTED_TREE[name]
    assert leaf.shape == shape and leaf.dtype == jnp.float32, name
    assert tuple(axes[keys]) == logical, name
    seen.add(name)
    value = np.asarray(leaf)
    if name.endswith("scale"):
      np.testing.assert_array_equal(value, 1.0)
    elif name.endswith("bias"):
      np.testing.assert_array_equal(value, 0.0)
    else:  # HF's init: normal(0, initializer_range)
      assert abs(value.std() - config.initializer_range) < 0.1 * config.initializer_range, name
  assert seen == set(EXPECTED_TREE)
  assert len(params["decoder"]) == LAYERS + 1


def test_hf_state_dict_round_trip_is_bit_exact(models):
  hf, state, config, params = models[12]
  assert bloom_mapping.LM_HEAD in state  # transformers' state_dict has the tied head: accepted, ignored
  back = bloom_mapping.params_to_hf(params, config)
  assert set(back) == set(state) - {bloom_mapping.LM_HEAD}
  for name, array in back.items():
    assert array.dtype == np.float32 and array.shape == state[name].shape, name
    np.testing.assert_array_equal(array, state[name], err_msg=name)
  # The original bigscience spelling: no `transformer.` prefix, no lm_head.
  bare = {name[len("transformer."):]: a for name, a in back.items()}
  again = hf_reader.params_from_hf(bare, config)
  assert jax.tree.all(jax.tree.map(np.array_equal, again, params))
  # The fused QKV layout is HF's per-head [nh, 3, d]: head 5's key rows are rows 5*3*8 + 8 .. + 16.
  qkv = state["transformer.h.1.self_attention.query_key_value.weight"]
  ours = params["decoder"]["layers_1"]["self_attention"]["query_key_value"]["kernel"]
  np.testing.assert_array_equal(ours[:, 5, 1, :], qkv[5 * 24 + 8:5 * 24 + 16].T)


def test_hf_state_dict_mistakes_are_named(models):
  _, state, config, _ = models[8]
  untied = dict(state, **{bloom_mapping.LM_HEAD: state[bloom_mapping.EMBEDDING] + 1})
  with pytest.raises(UserError, match="lm_head.weight differs"):
    hf_reader.params_from_hf(untied, config)
  missing = {k: v for k, v in state.items() if k != "transformer.h.2.mlp.dense_4h_to_h.bias"}
  with pytest.raises(UserError, match=r"missing tensors: transformer.h.2.mlp.dense_4h_to_h.bias\."):
    hf_reader.params_from_hf(missing, config)
  with pytest.raises(UserError, match="unexpected tensors: transformer.h.3.ln.weight"):
    hf_reader.params_from_hf(dict(state, **{"transformer.h.3.ln.weight": np.zeros(3)}), config)
  with pytest.raises(UserError, match=r"transformer.ln_f.bias \(in state dict\): expected \[96\] from the "
                     r"config, got \[95\]"):
    hf_reader.params_from_hf(dict(state, **{"transformer.ln_f.bias": np.zeros(95)}), config)
  with pytest.raises(UserError, match="unexpected tensors: ln_f.bias"):  # one name in both spellings
    hf_reader.params_from_hf(dict(state, **{"ln_f.bias": state["transformer.ln_f.bias"]}), config)


def test_config_conversion():
  old = {"model_type": "bloom", "vocab_size": 250880, "n_embed": 14336, "num_attention_heads": 112,
         "n_layer": 70, "layer_norm_epsilon": 1e-5, "hidden_dropout": 0.0, "attention_dropout": 0.0,
         "slow_but_exact": False, "pretraining_tp": 4}
  config = bloom_mapping.bloom_config_from_hf(old, dtype="bfloat16")
  assert ((config.hidden_size, config.n_head, config.n_layer, config.d_kv, config.dtype)
          == (14336, 112, 70, 128, "bfloat16"))
  newer = {"vocab_size": 9, "hidden_size": 8, "num_hidden_layers": 2, "n_head": 2}
  assert bloom_mapping.bloom_config_from_hf(newer).n_layer == 2
  hf_dict = bloom_mapping.bloom_config_to_hf(config)
  assert bloom_mapping.bloom_config_from_hf(hf_dict, dtype="bfloat16") == config
  hf_config = transformers.BloomConfig(**hf_dict)
  assert (hf_config.hidden_size, hf_config.n_head, hf_config.n_layer) == (14336, 112, 70)
  assert (hf_config.bos_token_id, hf_config.eos_token_id, hf_config.pad_token_id) == (1, 2, 3)
  assert hf_dict["tie_word_embeddings"] is True and hf_dict["architectures"] == ["BloomForCausalLM"]
  assert hf_dict["apply_residual_connection_post_layernorm"] is False and hf_dict["pretraining_tp"] == 1
  with pytest.raises(UserError, match="not a BLOOM"):
    bloom_mapping.bloom_config_from_hf({**old, "model_type": "gpt2"})
  with pytest.raises(UserError, match=r"missing fields \['n_layer'\]"):
    bloom_mapping.bloom_config_from_hf({k: v for k, v in old.items() if k != "n_layer"})
  with pytest.raises(UserError, match="apply_residual_connection_post_layernorm"):
    bloom_mapping.bloom_config_from_hf({**old, "apply_residual_connection_post_layernorm": True})


@pytest.mark.parametrize("num_heads", [8, 12, 16, 112])
def test_alibi_slopes_match_hf(num_heads):
  from transformers.models.bloom.modeling_bloom import build_alibi_tensor
  alibi = build_alibi_tensor(torch.ones(1, 2, dtype=torch.long), num_heads, torch.float32)
  # Equal up to one float32 ulp: HF's torch.pow is a vectorised pow whose last bit varies with the CPU
  # (16 heads: 2^-6.5 is 1 ulp apart); ours is the correctly rounded power of the same float32 base.
  slopes = bloom_network.alibi_slopes(num_heads)
  assert slopes.dtype == np.float32 and slopes.shape == (num_heads,)
  np.testing.assert_array_max_ulp(slopes, alibi[:, 0, 1].numpy(), maxulp=1)
  if num_heads == 112:  # not monotone: 64 slopes 2^(-i/8), then 2^(-p/16) for odd p
    np.testing.assert_allclose(slopes[[63, 64, 111]], [2**-8, 2**(-1 / 16), 2**(-95 / 16)], rtol=1e-6)


def test_sharded_forward_equals_unsharded(models):
  _, _, config, params = models[8]
  tokens, segments = padded_batch()
  want = np.asarray(DecoderOnlyModel(config).logits(params, tokens, segments))
  mesh = partitioning.make_mesh(num_partitions=2, num_data_partitions=4)
  model = DecoderOnlyModel(config, mesh)
  shardings = model.param_shardings()
  qkv = shardings["decoder"]["layers_0"]["self_attention"]["query_key_value"]
  assert qkv["kernel"].spec == P(None, "model", None, None) and qkv["bias"].spec == P("model", None, None)
  assert shardings["word_embeddings"]["embedding"].spec == P("model", None)
  sharded = jax.device_put(params, shardings)
  batch = model.shard_batch({"decoder_input_tokens": tokens, "decoder_segment_ids": segments})
  got = model.logits(sharded, **model.model_inputs(batch))
  assert got.sharding.spec[0] == "data"
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_family_interface():
  config = BloomConfig(vocab_size=VOCAB, hidden_size=HIDDEN, n_layer=LAYERS, n_head=8)
  model = family.model_for(config)
  assert isinstance(model, DecoderOnlyModel) and model.is_encoder_decoder is False
  assert EncoderDecoderModel.is_encoder_decoder is True
  batch = {"decoder_input_tokens": [[5, 6, 7, 8, 3]], "decoder_target_tokens": [[6, 7, 8, 2, 3]],
           "decoder_loss_weights": [[0, 0, 1, 1, 0]], "decoder_segment_ids": [[1, 1, 1, 1, 0]],
           "decoder_positions": [[0, 1, 2, 3, 0]]}
  batch = {k: np.array(v, np.int32) for k, v in batch.items()}
  want_inputs = {"decoder_input_tokens", "decoder_segment_ids", "decoder_positions"}
  assert set(model.model_inputs(batch)) == want_inputs
  assert int(model.input_token_count(batch)) == 2  # real positions whose target is not a target token
  mt5_batch = {"encoder_input_tokens": np.array([[4, 5, 1, 0]]), "decoder_input_tokens": np.array([[0, 7]])}
  mt5 = EncoderDecoderModel(T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=8, num_heads=2,
                                     num_encoder_layers=1, num_decoder_layers=1))
  assert int(mt5.input_token_count(mt5_batch)) == 3
  assert set(mt5.model_inputs(mt5_batch)) == {"encoder_input_tokens", "decoder_input_tokens"}
