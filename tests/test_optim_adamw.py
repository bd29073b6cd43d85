"""AdamW as BLOOMZ trained with it (Megatron-DeepSpeed: apex FusedAdam, decoupled weight decay off
biases and LayerNorm parameters, gradients clipped to global norm 1.0): one step against a NumPy hand
computation, several against torch.optim.AdamW, the decay mask on BLOOM's tree, the state's shardings
on 8 devices and its checkpoint round trip."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests import bloom_param_tree
from test_trainer import packed_batch
from xmtf_jax.errors import UserError
from xmtf_jax.model.bloom_config import BloomConfig
from xmtf_jax.model.config import T5Config
from xmtf_jax.parallel import partitioning
from xmtf_jax.train import checkpoints, losses, optim, step_assembly, trainer

TINY = BloomConfig(vocab_size=40, hidden_size=8, n_layer=2, n_head=2)
# Large enough learning rate and decay that the decay term is far above float32 rounding.
CONFIG = optim.OptimizerConfig(name="adamw", learning_rate=0.01, adam_beta1=0.9, adam_beta2=0.95,
                               adam_epsilon=1e-8, weight_decay=0.1, max_grad_norm=1.0)


def flat(tree):
  return {jax.tree_util.keystr(path): np.asarray(x) for path, x in
          jax.tree_util.tree_flatten_with_path(tree)[0]}


def specs(shardings):
  """{path: mesh PartitionSpec as a tuple} of a tree of NamedShardings."""
  return {jax.tree_util.keystr(path): tuple(s.spec) for path, s in
          jax.tree_util.tree_flatten_with_path(shardings)[0]}


def random_tree(shapes, rng, scale=1.0):
  return jax.tree.map(lambda s: (scale * rng.normal(size=s)).astype(np.float32), shapes,
                      is_leaf=lambda x: isinstance(x, tuple))


def run_ours(config, params, grads_per_step):
  optimizer = optim.make_optimizer(config)
  params = jax.tree.map(jnp.asarray, params)
  state = optimizer.init(params)
  for grads in grads_per_step:
    updates, state = optimizer.update(jax.tree.map(jnp.asarray, grads), state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  return flat(params)


def is_decayed(name):
  return name.endswith("['kernel']") or name.endswith("['embedding']")


def numpy_adamw(params, grads_per_step, lr, b1, b2, eps, wd, clip):
  """Loshchilov & Hutter's AdamW as apex FusedAdam (adam_w_mode) computes it, after Megatron's global
  gradient-norm clipping: p <- p - lr * (m_hat / (sqrt(v_hat) + eps) + wd * p), decay on kernels and
  the embedding only."""
  p = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for t, grads in enumerate(grads_per_step, start=1):
    g = {k: x.astype(np.float64) for k, x in grads.items()}
    norm = np.sqrt(sum(np.sum(x * x) for x in g.values()))
    g = {k: x * min(1.0, clip / norm) for k, x in g.items()}
    for k in p:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      update = (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
      p[k] = p[k] - lr * (update + (wd * p[k] if is_decayed(k) else 0.0))
  return p


def test_adamw_steps_equal_the_hand_computation():
  rng = np.random.default_rng(0)
  shapes = bloom_param_tree.shapes(TINY)
  params = random_tree(shapes, rng)
  # Norms of about 30, 0.3 and 3: clipped, not clipped, clipped.
  grads = [random_tree(shapes, rng, s) for s in (1.0, 0.01, 0.1)]
  expected = numpy_adamw(flat(params), [flat(g) for g in grads], 0.01, 0.9, 0.95, 1e-8, 0.1, 1.0)
  ours = run_ours(CONFIG, params, grads)
  assert ours.keys() == expected.keys()
  for name in expected:
    np.testing.assert_allclose(ours[name], expected[name], rtol=2e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("mask", ["except_bias_and_norm", "all"])
def test_weight_decay_reaches_only_the_masked_leaves(mask):
  """With zero gradients the Adam part is 0, so one step is p * (1 - lr * wd) on decayed leaves only."""
  params = random_tree(bloom_param_tree.shapes(TINY), np.random.default_rng(1))
  zeros = jax.tree.map(np.zeros_like, params)
  config = optim.OptimizerConfig(name="adamw", learning_rate=0.5, weight_decay=0.2,
                                 weight_decay_mask=mask)
  after, before = run_ours(config, params, [zeros]), flat(params)
  decayed = {name for name in before if not np.array_equal(after[name], before[name])}
  for name in decayed:
    np.testing.assert_allclose(after[name], before[name] * (1 - 0.5 * 0.2), rtol=1e-6)
  if mask == "all":
    assert decayed == set(before)
  else:  # the word embedding and 2 x 4 kernels; every bias and LayerNorm parameter kept
    assert decayed == {n for n in before if is_decayed(n)} and len(decayed) == 1 + 2 * 4
    assert "['decoder']['layers_0']['self_attention']['query_key_value']['bias']" not in decayed


@pytest.mark.parametrize("scanned", [False, True])
def test_decay_mask_is_megatrons_rule_on_bloom_tree(scanned):
  """Megatron decays all but LayerNorm parameters and biases, whatever their rank: BLOOM's fused QKV
  bias is 3-D and scanned LayerNorm parameters are 2-D, yet neither is decayed."""
  params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32),
                        bloom_param_tree.shapes(TINY, scanned), is_leaf=lambda x: isinstance(x, tuple))
  mask = flat(optim.weight_decay_mask(params))
  assert {name for name, on in mask.items() if on} == {name for name in mask if is_decayed(name)}
  layer = "['decoder']['layers']" if scanned else "['decoder']['layers_1']"
  qkv_bias = f"{layer}['self_attention']['query_key_value']['bias']"
  norm_scale = f"{layer}['input_layernorm']['scale']"
  ndim = {name: x.ndim for name, x in flat(jax.tree.map(np.zeros, bloom_param_tree.shapes(
      TINY, scanned), is_leaf=lambda x: isinstance(x, tuple))).items()}
  assert ndim[qkv_bias] == 3 + scanned and not mask[qkv_bias]
  assert ndim[norm_scale] == 1 + scanned and not mask[norm_scale]


def test_adamw_equals_torch_adamw_with_grad_clipping():
  """torch.optim.AdamW with Megatron's two parameter groups and clip_grad_norm_(1.0), five steps, at
  the BLOOMZ recipe's betas, epsilon and weight decay."""
  config = optim.OptimizerConfig(name="adamw", learning_rate=1e-3, adam_beta1=0.9, adam_beta2=0.95,
                                 adam_epsilon=1e-8, weight_decay=1e-4, max_grad_norm=1.0)
  rng = np.random.default_rng(2)
  shapes = bloom_param_tree.shapes(TINY)
  params = random_tree(shapes, rng)
  grads = [random_tree(shapes, rng, s) for s in (1.0, 0.02, 0.5, 0.05, 2.0)]
  tensors = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in flat(params).items()}
  groups = [{"params": [t for k, t in tensors.items() if is_decayed(k)], "weight_decay": 1e-4},
            {"params": [t for k, t in tensors.items() if not is_decayed(k)], "weight_decay": 0.0}]
  reference = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
  for g in grads:
    for k, value in flat(g).items():
      tensors[k].grad = torch.tensor(value)
    torch.nn.utils.clip_grad_norm_(list(tensors.values()), 1.0)
    reference.step()
  ours = run_ours(config, params, grads)
  for name, t in tensors.items():
    np.testing.assert_allclose(ours[name], t.detach().numpy(), rtol=1e-5, atol=1e-7, err_msg=name)
    assert not np.allclose(ours[name], flat(params)[name], rtol=1e-4, atol=0), name  # it moved


def test_adamw_config_errors():
  with pytest.raises(UserError, match="name='adam'"):
    optim.OptimizerConfig(name="adam")
  with pytest.raises(UserError, match="weight_decay_mask='biases'"):
    optim.OptimizerConfig(name="adamw", weight_decay_mask="biases")
  with pytest.raises(UserError, match="adam_beta2=1.0 must be in"):
    optim.OptimizerConfig(name="adamw", adam_beta2=1.0)
  with pytest.raises(UserError, match="Adafactor's weight decay is OptimizerConfig.weight_decay_rate"):
    optim.OptimizerConfig(weight_decay=1e-4)
  with pytest.raises(UserError, match="AdamW's weight decay is OptimizerConfig.weight_decay"):
    optim.OptimizerConfig(name="adamw", weight_decay_rate=1e-4)


def test_describe_names_the_recipe():
  config = optim.OptimizerConfig(name="adamw", learning_rate=2e-5, adam_beta2=0.95, weight_decay=1e-4,
                                 max_grad_norm=1.0)
  assert optim.describe(config) == ("AdamW(b1 0.9, b2 0.95, eps 1e-08, weight decay 0.0001 except "
                                    "biases and norms, grad norm clip 1.0) learning rate 2e-05 constant")
  assert optim.describe(optim.OptimizerConfig()).startswith("Adafactor(decay 0.8")


# ---- shardings and checkpoints ------------------------------------------------------------------------

@pytest.mark.parametrize("scanned", [False, True])
def test_adamw_moments_are_sharded_as_their_parameters_on_8_devices(scanned):
  config = BloomConfig(vocab_size=64, hidden_size=16, n_layer=2, n_head=4, scan_layers=scanned)
  assembly = step_assembly.assemble_step(  # data 2 x model 4
      config, partitioning.PartitioningConfig(num_partitions=4),
      optim.OptimizerConfig(name="adamw", weight_decay=1e-4, max_grad_norm=1.0))
  assert assembly.mesh.devices.size == 8
  shardings = assembly.state_shardings
  params = specs(shardings.params)
  adam_state = shardings.opt_state[1][0]  # chain(clip, adamw = chain(scale_by_adam, decay, lr))
  for moment in (adam_state.mu, adam_state.nu):
    assert specs(moment) == params
  layer = "layers" if scanned else "layers_0"
  lead = (None,) if scanned else ()
  qkv = params[f"['decoder']['{layer}']['self_attention']['query_key_value']['kernel']"]
  assert qkv == lead + (None, "model", None, None)  # heads over `model`, qkv on none
  assert params["['word_embeddings']['embedding']"] == ("model", None)
  assert params[f"['decoder']['{layer}']['mlp']['dense_4h_to_h']['kernel']"] == lead + ("model", None)
  assert tuple(adam_state.count.spec) == ()


T5_TINY = T5Config(vocab_size=64, d_model=32, d_kv=12, d_ff=48, num_heads=4, num_encoder_layers=1,
                   num_decoder_layers=1, dropout_rate=0.0)


def test_adamw_state_checkpoint_round_trip_and_resume(tmp_path):
  """One AdamW step on a 4x2 mesh, saved; restored onto 2x4 and 4x2 with equal arrays; the next step
  from the restored state equals the step from the saved one."""
  config = optim.OptimizerConfig(name="adamw", learning_rate=1e-3, adam_beta2=0.95, weight_decay=0.1,
                                 max_grad_norm=1.0)
  assemble = lambda n: step_assembly.assemble_step(
      T5_TINY, partitioning.PartitioningConfig(num_partitions=n), config,
      losses.LossConfig("average_per_sequence"))
  assembly = assemble(2)
  params = assembly.model.init_params(jax.random.key(0, impl="rbg"))
  state = assembly.init_state(jax.device_put(params, assembly.state_shardings.params))
  state, _ = assembly.train_step(state, partitioning.host_local_to_global(packed_batch(seed=1),
                                                                           assembly.mesh))
  saved_opt = jax.device_get(state.opt_state)
  checkpointer = checkpoints.Checkpointer(str(tmp_path), save_period=1)
  checkpointer.save(1, state.params, state.opt_state, {"t5_config": T5_TINY.to_dict()}, [{}])
  checkpointer.wait_until_finished()
  next_batch = packed_batch(seed=2)
  _, reference = assembly.train_step(state, partitioning.host_local_to_global(next_batch, assembly.mesh))
  reference = trainer.host_metrics(reference)

  for other in (assemble(4), assembly):
    abstract = other.abstract_state
    restored = checkpointer.restore(1, abstract.params, abstract.opt_state)
    assert jax.tree.structure(restored.opt_state) == jax.tree.structure(saved_opt)
    for a, b, s in zip(jax.tree.leaves(restored.opt_state), jax.tree.leaves(saved_opt),
                       jax.tree.leaves(other.state_shardings.opt_state)):
      np.testing.assert_array_equal(np.asarray(jax.device_get(a)), b)
      assert a.sharding == s
  resumed = trainer.TrainState(step=jnp.asarray(1, jnp.int32), params=restored.params,
                               opt_state=restored.opt_state)
  _, metrics = assembly.train_step(jax.device_put(resumed, assembly.state_shardings),
                                   partitioning.host_local_to_global(next_batch, assembly.mesh))
  metrics = trainer.host_metrics(metrics)
  for key in ("loss", "grad_norm", "param_norm"):
    assert metrics[key] == pytest.approx(reference[key], rel=1e-6), key
  checkpointer.close()


def test_adamw_state_written_scanned_restores_per_layer(tmp_path):
  """The moments of a scanned run's checkpoint restore into the per-layer layout, layer by layer."""
  config = optim.OptimizerConfig(name="adamw", learning_rate=1e-3, weight_decay=0.1)
  scanned = T5_TINY.replace(num_decoder_layers=2, scan_layers=True)
  assemble = lambda model_config: step_assembly.assemble_step(
      model_config, partitioning.PartitioningConfig(num_partitions=2), config,
      losses.LossConfig("average_per_sequence"))
  writer = assemble(scanned)
  params = writer.model.init_params(jax.random.key(1, impl="rbg"))
  state = writer.init_state(jax.device_put(params, writer.state_shardings.params))
  state, _ = writer.train_step(state, partitioning.host_local_to_global(packed_batch(seed=3),
                                                                         writer.mesh))
  saved = jax.device_get(state.opt_state)
  checkpointer = checkpoints.Checkpointer(str(tmp_path), save_period=1, async_save=False)
  checkpointer.save(1, state.params, state.opt_state, {"t5_config": scanned.to_dict()}, [{}], force=True)
  abstract = assemble(scanned.replace(scan_layers=False)).abstract_state
  restored = jax.device_get(checkpointer.restore(1, abstract.params, abstract.opt_state).opt_state)
  checkpointer.close()
  for moment in ("mu", "nu"):
    stacked = getattr(saved[0], moment)["decoder"]["layers"]["mlp"]["wi_0"]["kernel"]
    for i in range(2):
      per_layer = getattr(restored[0], moment)["decoder"][f"layers_{i}"]["mlp"]["wi_0"]["kernel"]
      np.testing.assert_array_equal(per_layer, stacked[i])
    assert np.any(stacked != 0)
  assert int(restored[0].count) == 1
