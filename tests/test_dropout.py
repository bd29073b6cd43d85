"""Hash-based dropout (xmtf_jax/dropout.py): rate, scaling, determinism, independence, mesh-independence."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from xmtf_jax.model import dropout
from xmtf_jax.parallel import partitioning


def _seed(n: int):
  return dropout.seed_words(jax.random.key(n, impl="rbg"))


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_keep_fraction_matches_the_rate(rate):
  mask = np.asarray(dropout.keep_mask(_seed(0), (64, 8, 64, 32), rate))
  n = mask.size
  sigma = np.sqrt(rate * (1 - rate) / n)
  assert abs(mask.mean() - (1 - rate)) < 5 * sigma
  # Every slice along every axis keeps about the same share: no dimension is left unmixed.
  for axis in range(mask.ndim):
    shares = mask.mean(axis=tuple(a for a in range(mask.ndim) if a != axis))
    per_slice_sigma = np.sqrt(rate * (1 - rate) * mask.shape[axis] / n)
    assert np.abs(shares - (1 - rate)).max() < 6 * per_slice_sigma, axis


def test_kept_values_are_scaled_and_dropped_ones_are_zero():
  x = jax.random.normal(jax.random.key(1), (32, 128))
  y = np.asarray(dropout.dropout(x, _seed(3), 0.25))
  mask = np.asarray(dropout.keep_mask(_seed(3), x.shape, 0.25))
  np.testing.assert_array_equal(y[~mask], 0.0)
  np.testing.assert_allclose(y[mask], np.asarray(x)[mask] / dropout.keep_probability(0.25), rtol=1e-6)
  assert abs(dropout.keep_probability(0.25) - 0.75) < 2**-31
  np.testing.assert_array_equal(dropout.dropout(x, _seed(3), 0.0), x)
  np.testing.assert_array_equal(dropout.dropout(x, _seed(3), 1.0), np.zeros_like(x))


def test_same_seed_same_mask_and_different_seeds_independent():
  shape, rate = (256, 512), 0.5
  a = np.asarray(dropout.keep_mask(_seed(7), shape, rate))
  np.testing.assert_array_equal(a, dropout.keep_mask(_seed(7), shape, rate))
  for other in (8, 1007):
    b = np.asarray(dropout.keep_mask(_seed(other), shape, rate))
    assert abs((a == b).mean() - 0.5) < 0.01  # chance agreement for independent masks
  # Consecutive fold_in keys (the trainer's per-step keys) give independent masks too.
  base = jax.random.key(0, impl="rbg")
  c = np.asarray(dropout.keep_mask(dropout.seed_words(jax.random.fold_in(base, 1)), shape, rate))
  d = np.asarray(dropout.keep_mask(dropout.seed_words(jax.random.fold_in(base, 2)), shape, rate))
  assert abs((c == d).mean() - 0.5) < 0.01


def test_rows_are_not_shifted_copies_of_each_other():
  mask = np.asarray(dropout.keep_mask(_seed(5), (64, 1024), 0.5))
  for shift in range(0, 4):
    agreement = (mask[1:, shift:] == mask[:-1, :mask.shape[1] - shift]).mean()
    assert abs(agreement - 0.5) < 0.01, shift
  columns = (mask[:, 1:] == mask[:, :-1]).mean()
  assert abs(columns - 0.5) < 0.01


def test_mask_does_not_depend_on_the_mesh():
  shape = (8, 4, 16, 32)  # [batch, heads, q, k], as attention-probability dropout sees it
  x = jnp.ones(shape)
  seed = _seed(11)
  expected = np.asarray(jax.jit(lambda x, s: dropout.dropout(x, s, 0.3))(x, seed))
  for data, model in ((8, 1), (4, 2), (2, 4)):
    mesh = partitioning.make_mesh(num_partitions=model, num_data_partitions=data)
    sharding = NamedSharding(mesh, P("data", "model"))
    sharded = jax.device_put(x, sharding)
    out = jax.jit(lambda x, s: dropout.dropout(x, s, 0.3), out_shardings=sharding)(sharded, seed)
    np.testing.assert_array_equal(np.asarray(out), expected, err_msg=f"mesh {data}x{model}")


def test_module_draws_a_fresh_mask_per_call_and_none_when_deterministic():
  layer = dropout.Dropout(0.5)
  x = jnp.ones((16, 64))
  rngs = {"dropout": jax.random.key(0, impl="rbg")}
  np.testing.assert_array_equal(layer.apply({}, x, deterministic=True, rngs=rngs), x)

  class Twice(dropout.nn.Module):
    @dropout.nn.compact
    def __call__(self, x):
      return dropout.Dropout(0.5)(x, False), dropout.Dropout(0.5)(x, False)

  first, second = Twice().apply({}, x, rngs=rngs)
  assert abs((np.asarray(first) == np.asarray(second)).mean() - 0.5) < 0.1
  again, _ = Twice().apply({}, x, rngs=rngs)
  np.testing.assert_array_equal(first, again)
