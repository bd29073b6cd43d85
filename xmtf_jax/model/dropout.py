"""Dropout whose mask is a counter-based hash of (seed, global element index).

Why not `flax.linen.Dropout`: its mask comes from `jax.random.bernoulli`, i.e. XLA's random-bit
generator, which on the CPU costs ~9 ns per element (the `rbg` key; `threefry2x32` more) and was 40% of
the tiny model's train step (attention-probability dropout over [batch, heads, q, k] dominates). Here
each element's 32 random bits are a few integer multiplies and shifts of its own coordinates, which XLA
fuses into the consumer: no random-bit buffer, no RNG custom call.

The mask is a pure function of (seed, shape, coordinates). Coordinates are global (`iota` over the
logical shape), so the same seed gives the same mask on one device or on any mesh and sharding (the
SPMD partitioner offsets each shard's iota); `rbg` masks, in contrast, depend on the partitioning.

Keep probability: an element is kept when its hash is >= round(rate * 2**32), so the probability is
exactly `keep_probability(rate)` (within 2**-32 of 1 - rate) and kept values are scaled by its inverse.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = Any

_GOLDEN = np.uint32(0x9E3779B9)  # 2**32 / golden ratio: spreads consecutive indices over 32 bits


def _mix32(x: Array) -> Array:
  """A bijective 32-bit finaliser ("lowbias32", C. Wellons): every input bit flips ~half the output bits."""
  x = x ^ (x >> 16)
  x = x * np.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * np.uint32(0x846CA68B)
  return x ^ (x >> 16)


def _threshold(rate: float) -> int:
  return int(round(rate * 2**32))


def keep_probability(rate: float) -> float:
  """The exact probability that `keep_mask` keeps an element (1 - rate up to 2**-32)."""
  return 1.0 - _threshold(rate) / 2**32


def seed_words(key: Array) -> Array:
  """Two uint32 seed words from a JAX PRNG key (any impl), by hashing its key data."""
  data = jax.random.key_data(key).reshape(-1).astype(jnp.uint32)
  a, b = np.uint32(0x243F6A88), np.uint32(0x85A308D3)  # arbitrary distinct starting values
  for i in range(data.shape[0]):
    a = _mix32(a ^ data[i])
    b = _mix32(b + data[i] * _GOLDEN)
  return jnp.stack([a, _mix32(a ^ b)])


def random_bits(seed: Array, shape: tuple[int, ...]) -> Array:
  """uint32 [*shape]: hash of (seed [2] uint32, each element's coordinates).

  The seed enters twice (added before and xor-ed after the first mix), so two seeds never give
  permuted or shifted copies of each other's rows; each further dimension is chained through another
  mix, and the last one is xor-ed with the row's hash after mixing, so rows with nearby hashes do not
  produce shifted copies of each other.
  """
  seed = jnp.asarray(seed, jnp.uint32)
  h = None
  for dim in range(len(shape)):
    index = jax.lax.broadcasted_iota(jnp.uint32, shape, dim)
    if h is None:
      h = _mix32(_mix32(index * _GOLDEN + seed[0]) ^ seed[1])
    else:
      h = _mix32(h + index * _GOLDEN) ^ h
  if h is None:  # a scalar
    h = _mix32(_mix32(seed[0]) ^ seed[1])
  return _mix32(h)


def keep_mask(seed: Array, shape: tuple[int, ...], rate: float) -> Array:
  """bool [*shape]: True with probability `keep_probability(rate)`, independently per element."""
  return random_bits(seed, shape) >= np.uint32(_threshold(rate))


def dropout(x: Array, seed: Array, rate: float) -> Array:
  """Zeroes elements of x with probability ~rate; scales the rest by 1 / keep_probability(rate)."""
  if rate == 0.0:
    return x
  if rate >= 1.0:
    return jnp.zeros_like(x)
  scale = jnp.asarray(1.0 / keep_probability(rate), x.dtype)
  return jnp.where(keep_mask(seed, x.shape, rate), x * scale, jnp.zeros((), x.dtype))


class Dropout(nn.Module):
  """Drop-in for `nn.Dropout(rate)`: a fresh key per call from the `dropout` RNG collection."""
  rate: float

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    if deterministic or self.rate == 0.0:
      return x
    return dropout(x, seed_words(self.make_rng("dropout")), self.rate)
