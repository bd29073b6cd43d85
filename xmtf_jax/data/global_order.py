"""Where every example of a mixture goes, as a pure function of (seed, rates, index): no data is read.

Two pieces, both computable for any index in O(number of tasks):

* `Permutation(n, key)`: a pseudo-random bijection of [0, n) (a 4-round Feistel network on the
  smallest power-of-4 domain >= n, walking cycles back into range). It shuffles a task's lines
  per epoch without materialising the shuffled order, so epoch e of a 10-million-line file costs
  nothing until its lines are asked for.
* `MixingOrder(rates, seed)`: global example i -> (task, k), k being the task's own count. Examples
  come in blocks of about `block_size`; task t's share of the first b blocks is
  floor(rate_t * block_size * b + phase_t) - floor(phase_t) (a seeded phase per task), so after any
  block every task has its configured share to within one example, and counting a task's examples
  before any position needs no pass over the earlier ones. Inside a block the slots are shuffled
  by a Permutation keyed by the block.

This is what lets the indexed input pipeline resume at step 100,000 as fast as at step 10.
"""
from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser: a cheap, well-mixed hash of uint64 values."""
  with np.errstate(over="ignore"):
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def derive_key(*parts) -> int:
  """A 64-bit key from ints and strings (strings by CRC32), stable across processes and versions."""
  words = [zlib.crc32(p.encode("utf-8")) if isinstance(p, str) else int(p) & 0xFFFFFFFF
           for p in parts]
  state = np.random.SeedSequence(words).generate_state(2, np.uint32)
  return int(state[0]) << 32 | int(state[1])


class Permutation:
  """A bijection of [0, n) picked by `key`; `perm(indices)` maps a numpy array of indices."""

  ROUNDS = 4

  def __init__(self, n: int, key: int):
    if n < 1:
      raise ValueError(f"cannot permute {n} items")
    self.n = int(n)
    self._half_bits = max(1, (int(n - 1).bit_length() + 1) // 2)
    self._half_mask = np.uint64((1 << self._half_bits) - 1)
    keys = np.random.SeedSequence([key & 0xFFFFFFFF, key >> 32]).generate_state(self.ROUNDS,
                                                                                  np.uint64)
    self._keys = keys

  def _feistel(self, x: np.ndarray) -> np.ndarray:
    h = np.uint64(self._half_bits)
    left, right = x >> h, x & self._half_mask
    for key in self._keys:
      with np.errstate(over="ignore"):
        left, right = right, left ^ (_mix64(right + key) & self._half_mask)
    return (left << h) | right

  def __call__(self, indices) -> np.ndarray:
    x = np.asarray(indices, dtype=np.int64)
    if x.size and (x.min() < 0 or x.max() >= self.n):
      raise IndexError(f"index out of range [0, {self.n})")
    if self.n == 1:
      return np.zeros_like(x)
    y = self._feistel(x.astype(np.uint64))
    out = y >= np.uint64(self.n)
    while out.any():  # cycle-walk: the domain is < 4n, so ~1.3 rounds on average
      y[out] = self._feistel(y[out])
      out = y >= np.uint64(self.n)
    return y.astype(np.int64)


class MixingOrder:
  """The global interleaving of tasks: index -> (task number, index within the task)."""

  def __init__(self, rates: Sequence[float], seed: int, block_size: int = 4096):
    rates = np.asarray(rates, dtype=np.float64)
    if rates.ndim != 1 or not len(rates) or (rates < 0).any() or rates.sum() <= 0:
      raise ValueError(f"mixing rates must be non-negative with a positive sum, got {list(rates)}")
    self.rates = rates / rates.sum()
    self.seed = int(seed)
    self.block_size = int(block_size)
    self._phase = np.random.default_rng(derive_key("phase", self.seed)).random(len(rates))
    self._slack = -(-len(rates) // self.block_size) + 1  # blocks a block start can be off by

  @property
  def num_tasks(self) -> int:
    return len(self.rates)

  def counts_before_block(self, blocks: np.ndarray) -> np.ndarray:
    """[len(blocks), tasks] examples of each task in the blocks before each of `blocks`."""
    total = np.asarray(blocks, np.float64)[:, None] * float(self.block_size)
    return (np.floor(self.rates[None, :] * total + self._phase[None, :])
            - np.floor(self._phase)[None, :]).astype(np.int64)

  def counts_before(self, index: int) -> np.ndarray:
    """Examples of each task among global examples [0, index)."""
    block = int(self._block_of(np.array([index]))[0])
    before = self.counts_before_block(np.array([block]))[0]
    tasks, _ = self.assign(np.arange(int(before.sum()), index))
    return before + np.bincount(tasks, minlength=self.num_tasks)

  def _block_of(self, indices: np.ndarray) -> np.ndarray:
    guess = indices // self.block_size
    lo = max(int(guess.min()) - self._slack, 0)
    candidates = np.arange(lo, int(guess.max()) + self._slack + 2)
    starts = self.counts_before_block(candidates).sum(axis=1)
    return candidates[np.searchsorted(starts, indices, side="right") - 1]

  def assign(self, indices) -> tuple[np.ndarray, np.ndarray]:
    """(task number, index within that task) of each global example index."""
    indices = np.asarray(indices, np.int64)
    tasks = np.empty(indices.shape, np.int64)
    within = np.empty(indices.shape, np.int64)
    if not indices.size:
      return tasks, within
    blocks = self._block_of(indices)
    for block in np.unique(blocks):
      where = blocks == block
      before, after = self.counts_before_block(np.array([block, block + 1]))
      quota = after - before
      ends = np.cumsum(quota)
      slots = Permutation(int(ends[-1]), derive_key("block", self.seed, int(block)))(
          indices[where] - int(before.sum()))
      task = np.searchsorted(ends, slots, side="right")
      tasks[where] = task
      within[where] = before[task] + slots - (ends[task] - quota[task])
    return tasks, within
