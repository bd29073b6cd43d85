"""Adafactor with the t5x finetuning defaults against a numpy implementation of the paper's update, and
the learning-rate schedules against their formulas."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmtf_jax.train import optim


def numpy_adafactor(params, grads_per_step, lr=1e-3, decay=0.8, clip=1.0, eps=1e-30, min_factor=128):
  """Shazeer & Stern (2018) Adafactor, written from the paper: beta2_t = 1 - t^-decay, factored second
  moments for matrices with both sides >= min_factor, update clipping at RMS `clip`, step size
  relative to the parameter's RMS (at least 1e-3), no momentum."""
  params = {k: v.astype(np.float64).copy() for k, v in params.items()}
  stats = {}
  for t, grads in enumerate(grads_per_step, start=1):
    beta2 = 1.0 - t ** (-decay)
    for name, g in grads.items():
      g = g.astype(np.float64)
      g2 = g * g + eps
      p = params[name]
      if g.ndim == 2 and min(g.shape) >= min_factor:
        rows, cols = stats.get(name, (np.zeros(g.shape[0]), np.zeros(g.shape[1])))
        rows = beta2 * rows + (1 - beta2) * g2.mean(axis=1)
        cols = beta2 * cols + (1 - beta2) * g2.mean(axis=0)
        stats[name] = (rows, cols)
        v = np.outer(rows, cols) / rows.mean()
      else:
        v = beta2 * stats.get(name, np.zeros_like(g)) + (1 - beta2) * g2
        stats[name] = v
      update = g / np.sqrt(v)
      update = update / max(1.0, np.sqrt(np.mean(update**2)) / clip)
      scale = max(np.sqrt(np.mean(p**2)), 1e-3)
      params[name] = p - lr * scale * update
  return params


def test_adafactor_defaults_match_the_paper_update():
  rng = np.random.default_rng(0)
  params = {"matrix": rng.normal(size=(130, 140)).astype(np.float32),
            "small_matrix": rng.normal(size=(4, 200)).astype(np.float32),
            "scale": (1 + 0.1 * rng.normal(size=(7,))).astype(np.float32)}
  grads = [{k: rng.normal(size=v.shape).astype(np.float32) * s for k, v in params.items()}
           for s in (1.0, 0.01, 3.0)]
  expected = numpy_adafactor(params, grads)

  optimizer = optim.make_optimizer(optim.OptimizerConfig())
  state = optimizer.init(jax.tree.map(jnp.asarray, params))
  ours = jax.tree.map(jnp.asarray, params)
  for g in grads:
    updates, state = optimizer.update(jax.tree.map(jnp.asarray, g), state, ours)
    ours = jax.tree.map(lambda p, u: p + u, ours, updates)
  for name in params:
    np.testing.assert_allclose(np.asarray(ours[name]), expected[name], rtol=1e-5, atol=1e-6,
                               err_msg=name)
  # The matrix's second moments are factored (a row and a column vector), the others are not.
  v_row = state[0].v_row if hasattr(state[0], "v_row") else None
  assert v_row is not None and v_row["matrix"].ndim == 1 and v_row["small_matrix"].shape == (1,)


def test_attention_kernels_are_factored_as_heads_times_kv_matrices():
  from jax.sharding import PartitionSpec as P
  rng = np.random.default_rng(1)
  params = {"query": rng.normal(size=(160, 4, 64)).astype(np.float32),   # [embed, heads, kv]
            "out": rng.normal(size=(4, 64, 160)).astype(np.float32)}     # [heads, kv, embed]
  axes = {"query": P("embed", "heads", "kv"), "out": P("heads", "kv", "embed")}
  grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
           for _ in range(2)]
  as_matrices = {"query": (160, 256), "out": (256, 160)}
  expected = numpy_adafactor({k: v.reshape(as_matrices[k]) for k, v in params.items()},
                             [{k: v.reshape(as_matrices[k]) for k, v in g.items()} for g in grads])
  optimizer = optim.make_optimizer(optim.OptimizerConfig(), axes, params)
  ours = jax.tree.map(jnp.asarray, params)
  state = optimizer.init(ours)
  for g in grads:
    updates, state = optimizer.update(jax.tree.map(jnp.asarray, g), state, ours)
    ours = jax.tree.map(lambda p, u: p + u, ours, updates)
  for name in params:
    assert ours[name].shape == params[name].shape
    np.testing.assert_allclose(np.asarray(ours[name]).reshape(as_matrices[name]), expected[name],
                               rtol=1e-5, atol=1e-6, err_msg=name)
  # Only row and column statistics are kept: O(rows + columns), not a full second moment.
  assert all(x.size <= 256 for x in jax.tree.leaves(state))


@pytest.mark.parametrize("schedule,kwargs,expected", [
    ("constant", {}, lambda s: 0.01),
    ("linear_warmup", {"warmup_steps": 10}, lambda s: 0.01 * min(s, 10) / 10),
    ("rsqrt", {"warmup_steps": 10}, lambda s: 0.01 * np.sqrt(10 / max(s, 10))),
    ("cosine", {"warmup_steps": 10, "decay_steps": 50, "final_learning_rate": 0.001},
     lambda s: 0.01 * s / 10 if s < 10 else
     0.001 + (0.01 - 0.001) * 0.5 * (1 + np.cos(np.pi * min(s - 10, 40) / 40))),
])
def test_learning_rate_schedules(schedule, kwargs, expected):
  fn = optim.learning_rate_schedule(optim.OptimizerConfig(learning_rate=0.01, schedule=schedule,
                                                          **kwargs))
  for step in (0, 1, 5, 10, 11, 30, 50, 80):
    assert float(fn(step)) == pytest.approx(expected(step), rel=1e-5, abs=1e-9), step


def test_rsqrt_schedule_reproduces_t5x_pretraining_rate():
  # t5x: constant * rsqrt_decay with base 1.0 and 10k warmup steps is 1/sqrt(max(step, 10000)).
  fn = optim.learning_rate_schedule(optim.OptimizerConfig(learning_rate=0.01, schedule="rsqrt",
                                                          warmup_steps=10000))
  for step in (0, 10000, 40000, 1000000):
    assert float(fn(step)) == pytest.approx(1 / np.sqrt(max(step, 10000)), rel=1e-6)


def test_optimizer_config_errors():
  with pytest.raises(ValueError, match="schedule='linear'"):
    optim.OptimizerConfig(schedule="linear")
  with pytest.raises(ValueError, match="warmup_steps"):
    optim.OptimizerConfig(schedule="rsqrt")
  with pytest.raises(ValueError, match="decay_steps"):
    optim.OptimizerConfig(schedule="cosine")
  with pytest.raises(ValueError, match="learning_rate"):
    optim.OptimizerConfig(learning_rate=float("nan"))


def test_decay_offset_continues_t5x_step_count():
  """With decay_offset=N the second-moment decay at our step s is t5x's `1 - (s + N + 1)^-0.8`."""
  n = 1_000_000
  config = optim.OptimizerConfig(decay_offset=n, clipping_threshold=None,
                                 multiply_by_parameter_scale=False)
  opt = optim.make_optimizer(config)
  params = {"bias": jnp.ones((4,), jnp.float32)}  # 1-D and small: an unfactored second moment
  grad = {"bias": jnp.array([1.0, -2.0, 3.0, 0.5], jnp.float32)}
  state = opt.init(params)
  g2 = np.asarray(grad["bias"], np.float64) ** 2 + 1e-30
  # by hand: t5x's decay at its steps 1,000,000 and 1,000,001 (our steps 0 and 1)
  d0 = 1.0 - (n + 1) ** -0.8
  d1 = 1.0 - (n + 2) ** -0.8
  expected = [(1 - d0) * g2, d1 * (1 - d0) * g2 + (1 - d1) * g2]
  for step in range(2):
    updates, state = opt.update(grad, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    factored_state = next(s for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "v"))
                          if hasattr(s, "v"))
    v = np.asarray(jax.tree.leaves(factored_state.v)[0], np.float64)
    # float32 resolves 1 - decay (~1.6e-5 here) to ~6e-8, i.e. ~0.4%; decay_offset=0 would give v = g2.
    np.testing.assert_allclose(v, expected[step], rtol=4e-3)
    assert np.all(np.isfinite(np.asarray(params["bias"])))


def test_negative_decay_offset_is_an_error():
  with pytest.raises(ValueError, match="decay_offset=-5 must be >= 0"):
    optim.OptimizerConfig(decay_offset=-5)
