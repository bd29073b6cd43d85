"""Continuing a t5x run (train/t5x_optimizer.py): a legacy t5x checkpoint written with Adafactor slots
for step N (tests/t5x_fixtures.py), restored into our train state; the next update must be t5x's
Adafactor update (t5x/adafactor.py `apply_param_gradient`, written out in numpy below) from the same
moments, step and gradients, for factored and full second moments, with and without momentum, in
either layer layout; slots that do not fit are named."""
import os

import jax
import numpy as np
import pytest

from tests import t5x_fixtures
from xmtf_jax.checkpoint import open_model_path
from xmtf_jax.errors import UserError
from xmtf_jax.model import family, layer_stacking
from xmtf_jax.model.config import T5Config
from xmtf_jax.parallel import partitioning
from xmtf_jax.train import checkpoints, loop, optim, reporting, step_assembly, t5x_optimizer

STEP = 1000
# min_dim_size_to_factor 16: wi/wo [16, 24] and the embedding/logits factored; q/k/v/out [16, 8],
# norms and the relative position table ([heads, buckets] = [8, 8], stored transposed) keep a full v.
# 8: every matrix factored, the square table too (ours averages over the axis t5x's other slot does).
CONFIG = T5Config(vocab_size=64, d_model=16, d_kv=1, num_heads=8, d_ff=24, num_encoder_layers=2,
                  num_decoder_layers=1, relative_attention_num_buckets=8, dropout_rate=0.0)
MIN_DIMS = (16, 8)


def _factored(shape, min_dim):
  if len(shape) < 2:
    return None
  order = np.argsort(shape)
  return None if shape[order[-2]] < min_dim else (int(order[-2]), int(order[-1]))


def _slots(target: dict, momentum: bool, min_dim: int, rng) -> dict:
  """t5x's param_states for `target`: used slots random (v > 0), unused ones (1,) zeros."""
  states = {}
  for path, x in t5x_fixtures._flat(target):
    slot = {k: np.zeros((1,), np.float32) for k in t5x_optimizer.SLOTS}
    dims = _factored(x.shape, min_dim)
    if dims is not None:
      d1, d0 = dims
      # Means of one positive matrix, as Adafactor's statistics are: mean(v_row) == mean(v_col).
      full = rng.uniform(0.5, 2.0, x.shape)
      slot["v_row"] = full.mean(axis=d0).astype(np.float32)
      slot["v_col"] = full.mean(axis=d1).astype(np.float32)
    else:
      slot["v"] = rng.uniform(0.5, 2.0, x.shape).astype(np.float32)
    if momentum:
      slot["m"] = rng.normal(0, 1e-3, x.shape).astype(np.float32)
    t5x_fixtures._set(states, path, slot)
  return states


def t5x_update(param, grad, slot, step, lr, beta1, min_dim):
  """t5x's Adafactor (decay_rate 0.8, step_offset 0, clipping 1.0, parameter scale, epsilon1 1e-30,
  epsilon2 1e-3): the update (new param - param) of one parameter, in t5x's layout."""
  decay = 1.0 - (step + 1.0) ** -0.8
  grad_sqr = grad * grad + 1e-30
  dims = _factored(param.shape, min_dim)
  if dims is not None:
    d1, d0 = dims
    v_row = decay * slot["v_row"] + (1 - decay) * grad_sqr.mean(axis=d0)
    v_col = decay * slot["v_col"] + (1 - decay) * grad_sqr.mean(axis=d1)
    row_factor = (v_row / v_row.mean(axis=d1 - 1 if d1 > d0 else d1, keepdims=True)) ** -0.5
    y = grad * np.expand_dims(row_factor, d0) * np.expand_dims(v_col ** -0.5, d1)
  else:
    y = grad * (decay * slot["v"] + (1 - decay) * grad_sqr) ** -0.5
  y = y / max(1.0, np.sqrt(np.mean(y * y)) / 1.0)
  subtrahend = lr * max(np.sqrt(np.mean(param * param)), 1e-3) * y
  if beta1 is not None:
    subtrahend = beta1 * slot["m"] + (1 - beta1) * subtrahend
  return -subtrahend


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """Our per-layer params (numpy), their t5x tree and a t5x model dir per momentum setting."""
  rng = np.random.default_rng(0)
  abstract = family.model_for(CONFIG).abstract_params()
  params = jax.tree.map(lambda a: rng.normal(0, 0.5, a.shape).astype(np.float32), abstract)
  target = t5x_fixtures.t5x_tree(params)
  root = tmp_path_factory.mktemp("t5x_opt")
  dirs, slots = {}, {}
  for key in [(False, MIN_DIMS[0]), (True, MIN_DIMS[0]), (False, MIN_DIMS[1])]:
    slots[key] = _slots(target, key[0], key[1], rng)
    dirs[key] = str(root / f"momentum_{key[0]}_min_dim_{key[1]}")
    t5x_fixtures.write_legacy(os.path.join(dirs[key], f"checkpoint_{STEP}"), target, inline=False,
                              step=STEP, param_states=slots[key])
  return dict(params=params, target=target, slots=slots, dirs=dirs, root=root, rng=rng)


def _optimizer_config(**changes):
  settings = dict(learning_rate=0.01, schedule="rsqrt", warmup_steps=10, min_dim_size_to_factor=MIN_DIMS[0])
  return optim.OptimizerConfig(**{**settings, **changes})


def _train_config(model_dir, initial, **changes):
  settings = dict(model_dir=model_dir, mixture_or_task_name="unused", train_steps=STEP + 5,
                  task_feature_lengths={"inputs": 8, "targets": 8}, initial_checkpoint_path=initial)
  return loop.TrainConfig(**{**settings, **changes})


@pytest.mark.parametrize("scan_layers,momentum,restore_step,min_dim", [
    (False, None, False, MIN_DIMS[0]), (True, 0.9, True, MIN_DIMS[0]), (False, None, False, MIN_DIMS[1])])
def test_next_update_is_t5x_adafactors(run, tmp_path, scan_layers, momentum, restore_step, min_dim):
  config = CONFIG.replace(scan_layers=scan_layers)
  optimizer_config = _optimizer_config(momentum=momentum, min_dim_size_to_factor=min_dim)
  assembly = step_assembly.assemble_step(config, partitioning.PartitioningConfig(), optimizer_config)
  key = (momentum is not None, min_dim)
  train_config = _train_config(str(tmp_path), run["dirs"][key],
                               restore_optimizer_state=True, restore_step=restore_step)
  model_dir = str(tmp_path)
  state = loop.restore_or_initialize(train_config, assembly, checkpoints.Checkpointer(model_dir), None,
                                     reporting.MetricsLog(model_dir), optimizer_config)
  assert int(state.step) == (STEP if restore_step else 0)
  grads = jax.tree.map(lambda p: run["rng"].normal(0, 1.0, p.shape).astype(np.float32), state.params)
  updates, new_opt_state = jax.jit(assembly.optimizer.update)(grads, state.opt_state, state.params)
  if scan_layers:
    updates, grads = (layer_stacking.unstack_layers(jax.device_get(t), config) for t in (updates, grads))
  got = dict(t5x_fixtures._flat(t5x_fixtures.t5x_tree(jax.device_get(updates))))
  grads = dict(t5x_fixtures._flat(t5x_fixtures.t5x_tree(jax.device_get(grads))))
  # The learning rate is the schedule's at our step: t5x's step when it is restored.
  lr = 0.01 * np.sqrt(10 / max(STEP if restore_step else 0, 10))
  slots = dict(t5x_fixtures._flat(run["slots"][key]))
  checked = 0
  for path, param in t5x_fixtures._flat(run["target"]):
    slot = {k: slots[path + (k,)] for k in t5x_optimizer.SLOTS}
    want = t5x_update(param, grads[path], slot, STEP, lr, momentum, min_dim)
    np.testing.assert_allclose(got[path], want, rtol=2e-5, atol=1e-9, err_msg="/".join(path))
    checked += _factored(param.shape, min_dim) is not None
  assert checked >= 4  # factored parameters were among them
  # The moments continue: Adafactor counts STEP + 1 updates now.
  factored_state = [n for n in jax.tree.leaves(new_opt_state, is_leaf=t5x_optimizer._is_state_node)
                    if isinstance(n, t5x_optimizer.FactoredState)]
  assert int(factored_state[0].count) == STEP + 1


def _template(momentum=None, **changes):
  """(our optimizer config, its fresh state of the per-layer model): what a restore fills."""
  optimizer_config = _optimizer_config(momentum=momentum, **changes)
  model = family.model_for(CONFIG)
  optimizer = optim.make_optimizer(optimizer_config, model.param_logical_axes(), model.abstract_params())
  params = jax.tree.map(lambda a: np.zeros(a.shape, np.float32), model.abstract_params())
  return optimizer_config, optimizer.init(params)


def _restore(path, momentum=None, **changes):
  optimizer_config, opt_state = _template(momentum, **changes)
  return t5x_optimizer.restore_adafactor_state(open_model_path(path).t5x(), opt_state, optimizer_config)


@pytest.mark.parametrize("storage", ["legacy_inline", "orbax"])
def test_restored_slots_are_t5xs_in_our_layout(run, storage):
  path = str(run["root"] / storage)
  write = t5x_fixtures.write_legacy if storage == "legacy_inline" else t5x_fixtures.write_orbax
  write(os.path.join(path, f"checkpoint_{STEP}"), run["target"], step=STEP,
        param_states=run["slots"][(False, MIN_DIMS[0])])
  restored = _restore(path)
  factored = restored[0]
  slots = run["slots"][(False, MIN_DIMS[0])]
  wi = slots["encoder"]["layers_1"]["mlp"]["wi_0"]["kernel"]
  np.testing.assert_array_equal(factored.v_row["encoder"]["layers_1"]["mlp"]["wi_0"]["kernel"], wi["v_row"])
  np.testing.assert_array_equal(factored.v_col["encoder"]["layers_1"]["mlp"]["wi_0"]["kernel"], wi["v_col"])
  table = slots["decoder"]["relpos_bias"]["rel_embedding"]["v"]  # [heads, buckets] -> ours [buckets, heads]
  np.testing.assert_array_equal(factored.v["decoder"]["relpos_bias"]["embedding"], table.T)
  query = slots["encoder"]["layers_0"]["attention"]["query"]["kernel"]["v"]  # joined [embed, heads*kv]
  np.testing.assert_array_equal(factored.v["encoder"]["layers_0"]["attention"]["query"]["kernel"], query)
  assert int(factored.count) == STEP


def _rewrite(run, tmp_path, name, change, momentum=False):
  """A copy of the t5x checkpoint whose slot `name` ('/'-joined) is `change(slots)`'s."""
  slots = jax.tree.map(np.copy, run["slots"][(momentum, MIN_DIMS[0])])
  change(slots)
  model_dir = str(tmp_path / name.replace("/", "_"))
  t5x_fixtures.write_legacy(os.path.join(model_dir, f"checkpoint_{STEP}"), run["target"], step=STEP,
                            param_states=slots)
  return model_dir


def test_a_slot_of_the_wrong_shape_is_named(run, tmp_path):
  def change(slots):
    slots["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]["v_row"] = np.ones((24,), np.float32)
  path = _rewrite(run, tmp_path, "wrong_shape", change)
  with pytest.raises(UserError, match=r"state/param_states/encoder/layers_0/mlp/wi_0/kernel/v_row: "
                                      r"shape \[24\], expected \[16\]"):
    _restore(path)


@pytest.mark.parametrize("momentum,changes,message", [
    (0.9, {}, r"/m: shape \[1\], expected \[16, 64\] \(the t5x run had no momentum"),
    (None, {"min_dim_size_to_factor": 128}, r"wi_0/kernel/v_row: shape \[16\], expected \[1\] \(t5x's "
     r"slot is used, ours a placeholder: the runs factor differently"),
    (None, {"decay_offset": 5}, r"decay_offset=5 .*set decay_offset=0"),
])
def test_optimizer_settings_that_do_not_fit_are_named(run, momentum, changes, message):
  with pytest.raises(UserError, match=message):
    _restore(run["dirs"][(False, MIN_DIMS[0])], momentum, **changes)


def test_momentum_in_the_checkpoint_needs_ours(run):
  with pytest.raises(UserError, match=r"/m: shape \[\d+(, \d+)*\], expected \[1\] \(the t5x run used "
                                      r"momentum \(beta1\)"):
    _restore(run["dirs"][(True, MIN_DIMS[0])])


def test_switches_need_a_t5x_checkpoint_and_a_later_train_steps(run, tmp_path, hf_mt5_dir):
  optimizer_config, opt_state = _template()
  state = t5x_optimizer.trainer.TrainState(step=np.int32(0), params={}, opt_state=opt_state)
  # Default: weights only, the state as it was.
  assert t5x_optimizer.continue_initial_checkpoint(
      _train_config(str(tmp_path), run["dirs"][(False, MIN_DIMS[0])]), state, optimizer_config) is state
  with pytest.raises(UserError, match=r"restore_step=True .* t5x step 1000.*TRAIN_STEPS=1000 is not above"):
    t5x_optimizer.continue_initial_checkpoint(
        _train_config(str(tmp_path), run["dirs"][(False, MIN_DIMS[0])], restore_step=True, train_steps=STEP),
        state, optimizer_config)
  with pytest.raises(UserError, match=r"restore_optimizer_state=True continues a t5x checkpoint's run, "
                                      r"but there is HF"):
    t5x_optimizer.continue_initial_checkpoint(
        _train_config(str(tmp_path), hf_mt5_dir[0], restore_optimizer_state=True), state, optimizer_config)


def test_scanned_checkpoints_keep_weights_only(run, tmp_path):
  scanned = t5x_fixtures.scanned_tree(run["target"], {"encoder": 2, "decoder": 1}, four_d=False,
                                      heads=CONFIG.num_heads)
  t5x_fixtures.write_legacy(str(tmp_path / f"checkpoint_{STEP}"), scanned, step=STEP)
  with pytest.raises(UserError, match=r"is scanned .*each layer's relative position table has its own "
                                      r"statistics.*restore_optimizer_state=False"):
    _restore(str(tmp_path))


def test_the_switches_are_gin_bindings():
  import gin
  from xmtf_jax.cli import configurables, gin_flags
  gin.clear_config()
  try:
    gin_flags.parse_gin(["--gin_file=gin/runs/demo.gin", "--gin.TrainConfig.restore_optimizer_state=True",
                         "--gin.TrainConfig.restore_step=True"])
    config = configurables.TrainConfig()
    assert config.restore_optimizer_state and config.restore_step
  finally:
    gin.clear_config()


def test_a_run_continues_the_t5x_step_and_its_checkpoints_are_numbered_on(tmp_path):
  """loop.train from a t5x checkpoint with both switches: steps N+1, N+2, checkpoints named so, and a
  restart resumes from our own checkpoint (the switches then play no part)."""
  import mixtures  # noqa: F401  (registers the demo tasks)
  from xmtf_jax.train import losses
  config = T5Config(vocab_size=2048, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_encoder_layers=1,
                    num_decoder_layers=1, dropout_rate=0.0)
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda a: rng.normal(0, 0.05, a.shape).astype(np.float32),
                        family.model_for(config).abstract_params())
  target = t5x_fixtures.t5x_tree(params)
  t5x_fixtures.write_legacy(str(tmp_path / "t5x" / f"checkpoint_{STEP}"), target, step=STEP,
                            param_states=_slots(target, False, 32, rng))
  optimizer_config = optim.OptimizerConfig(min_dim_size_to_factor=32)
  model_dir = str(tmp_path / "run")

  def train(steps):
    train_config = loop.TrainConfig(
        model_dir=model_dir, mixture_or_task_name="demo_en", task_feature_lengths={"inputs": 32, "targets": 16},
        train_steps=steps, batch_size=8, use_packing=True, checkpoint_period=1, eval_batches=0,
        log_period=1, initial_checkpoint_path=str(tmp_path / "t5x"), restore_optimizer_state=True,
        restore_step=True, async_checkpointing=False)
    return loop.train(train_config, config, partitioning.PartitioningConfig(), optimizer_config,
                      losses.LossConfig())

  assert train(STEP + 2).step == STEP + 2
  assert checkpoints.list_steps(model_dir) == [STEP + 1, STEP + 2]
  assert [r["step"] for r in reporting.read_metrics(model_dir, "train")] == [STEP + 1, STEP + 2]
  assert train(STEP + 3).step == STEP + 3  # resumed from checkpoint_1002
  assert [r["step"] for r in reporting.read_metrics(model_dir, "train")] == [STEP + 1, STEP + 2, STEP + 3]


def test_the_runs_step_offset_sets_the_age_and_other_settings_are_named(run, tmp_path, caplog):
  path = str(tmp_path / "with_gin")
  t5x_fixtures.write_legacy(os.path.join(path, f"checkpoint_{STEP}"), run["target"], step=STEP,
                            param_states=run["slots"][(False, MIN_DIMS[0])])
  with open(os.path.join(path, "config.gin"), "w") as f:
    f.write("OFFSET = 200\n# Parameters for adafactor.Adafactor:\nadafactor.Adafactor.decay_rate = 0.5\n"
            "adafactor.Adafactor.step_offset = %OFFSET\nadafactor.Adafactor.beta1 = None\n")
  with caplog.at_level("WARNING"):
    restored = _restore(path)
  assert int(restored[0].count) == STEP - 200  # t5x's decay: 1 - (step - step_offset + 1) ** -decay_rate
  assert "decay_rate=0.5 there, OptimizerConfig.decay_rate=0.8 here" in caplog.text
  assert "beta1" not in caplog.text  # the same setting in both
