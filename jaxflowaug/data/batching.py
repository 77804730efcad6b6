"""Deterministic, resumable batch indices for in-memory datasets.

Training step `s` (global, counted from 0) of a dataset of N examples with global batch
size B uses epoch `e = s // S` and batch `b = s % S` of that epoch, `S = N // B` steps
per epoch (the last incomplete batch is dropped). The epoch's order is a permutation
drawn from a numpy Generator seeded with `(seed, e)`, and the global batch is
`perm[b*B:(b+1)*B]`, of which process `p` of `P` takes the contiguous share
`[p*B/P, (p+1)*B/P)`. The indices depend only on `(N, B, seed, s, p, P)`, so a run
resumed at step `s` sees exactly the batches an uninterrupted one would, and each host
computes (and loads) only its own share.
"""
import functools
import operator

import numpy as np


def _non_negative_int(value, name: str) -> int:
  """`value` as a Python int (from int, numpy or jax integer scalars), checked >= 0."""
  try:
    value = operator.index(value)
  except TypeError:
    raise ValueError(f'{name}={value!r} must be a non-negative integer') from None
  if value < 0:
    raise ValueError(f'{name}={value!r} must be a non-negative integer')
  return value


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """`num_examples // global_batch_size`; raises ValueError if that is 0."""
  num_examples = _non_negative_int(num_examples, 'num_examples')
  global_batch_size = _non_negative_int(global_batch_size, 'global_batch_size')
  if global_batch_size == 0 or num_examples < global_batch_size:
    raise ValueError(f'global_batch_size={global_batch_size} must be in '
                     f'[1, num_examples={num_examples}] so that an epoch holds at '
                     'least one full batch; lower the batch size')
  return num_examples // global_batch_size


@functools.lru_cache(maxsize=4)
def _cached_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  perm = np.random.default_rng((seed, epoch)).permutation(num_examples)
  perm.setflags(write=False)
  return perm


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The order of epoch `epoch`: a permutation of `range(num_examples)`, int64 (N,).

  Drawn by `np.random.default_rng((seed, epoch)).permutation(num_examples)`; the
  returned array is read-only (it is cached across the steps of an epoch).
  """
  return _cached_permutation(_non_negative_int(num_examples, 'num_examples'),
                             _non_negative_int(seed, 'seed'),
                             _non_negative_int(epoch, 'epoch'))


def batch_indices(num_examples: int, global_batch_size: int, seed: int, step: int, *,
                  process_index: int = 0, process_count: int = 1) -> np.ndarray:
  """Indices of this process's share of global batch `step`, int64 (B / P,).

  Args:
    num_examples: N, the size of the dataset (or subset) indexed.
    global_batch_size: B, examples per step over all processes.
    seed: the shuffling seed.
    step: the global step s >= 0; epoch s // (N // B), batch s % (N // B).
    process_index: p in [0, P), this host's `jax.process_index()`.
    process_count: P, `jax.process_count()`; must divide B.

  Raises:
    ValueError: a bad argument, named, with the fix.
  """
  spe = steps_per_epoch(num_examples, global_batch_size)
  step = _non_negative_int(step, 'step')
  process_index = _non_negative_int(process_index, 'process_index')
  process_count = _non_negative_int(process_count, 'process_count')
  if process_count == 0 or global_batch_size % process_count:
    raise ValueError(f'process_count={process_count} must be >= 1 and divide '
                     f'global_batch_size={global_batch_size}')
  if process_index >= process_count:
    raise ValueError(f'process_index={process_index} must be < '
                     f'process_count={process_count}')
  epoch, batch = divmod(step, spe)
  share = global_batch_size // process_count
  start = batch * global_batch_size + process_index * share
  return epoch_permutation(num_examples, seed, epoch)[start:start + share].copy()
