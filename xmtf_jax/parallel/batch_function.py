"""Evaluation-style batched calls on a mesh: numpy in, numpy out, one compilation per shape.

Lengths are bucketed to powers of two (`bucket_length`) so a whole evaluation or generation run
compiles only a handful of shapes.

Scoring and generation feed every process the same host batches (built identically on each host), so
their rows are split over the mesh's `data` axis here and the result is replicated back.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def bucket_length(length: int, minimum: int = 8, maximum: int | None = None) -> int:
  """The smallest power of two >= length (at least `minimum`, at most `maximum`)."""
  bucket = minimum
  while bucket < length:
    bucket *= 2
  return min(bucket, maximum) if maximum else bucket


class BatchFunction:
  """`fn(params, *batch_arrays, **other_args)` jit-compiled once per shape, numpy in and out.

  With a mesh, the batch arrays' rows are split over its `data` axis (padded with zero rows to a
  multiple of it, the padding dropped from the result) and the result is replicated, so every
  process can read it. Params are an argument, so new params (e.g. after more training) reuse the
  compiled function.
  """

  def __init__(self, fn, mesh: Mesh | None = None):
    self.mesh = mesh
    if mesh is None:
      self._jitted = jax.jit(fn)
    else:
      self._batch_sharding = NamedSharding(mesh, P("data"))
      self._jitted = jax.jit(fn, out_shardings=NamedSharding(mesh, P()))

  def __call__(self, params: Any, *arrays: np.ndarray, **other_args) -> np.ndarray:
    if self.mesh is None:
      return np.asarray(self._jitted(params, *arrays, **other_args))
    rows = arrays[0].shape[0]
    arrays = [global_array(pad_rows(np.asarray(a), self.mesh.shape["data"]), self._batch_sharding)
              for a in arrays]
    out = self._jitted(params, *arrays, **other_args)
    return np.asarray(out.addressable_data(0))[:rows]


def pad_rows(array: np.ndarray, multiple: int) -> np.ndarray:
  """Zero rows appended so the batch divides over `multiple` data shards."""
  extra = -array.shape[0] % multiple
  if not extra:
    return array
  return np.concatenate([array, np.zeros((extra,) + array.shape[1:], array.dtype)])


def global_array(host_array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from a numpy array every process holds in full (evaluation batches are built
  identically on every host), so every process can also read the replicated result."""
  return jax.make_array_from_callback(host_array.shape, sharding, lambda index: host_array[index])
