"""Fixed, seeded training subsets (the low-data regime) and disjoint validation slices.

The subset depends only on the labels, the size, the seed and `exclude`, so every method
and every run trains on the same examples (the authors use seed 9999).
"""
import numpy as np

AUTHORS_SEED = 9999


def _count(size, num_examples: int) -> int:
  """An int count, or a float fraction in (0, 1] of `num_examples`, as a count."""
  if isinstance(size, (float, np.floating)):
    if not 0.0 < size <= 1.0:
      raise ValueError(f'size={size} as a fraction must be in (0, 1]; pass an int '
                       'for a count of examples')
    return max(1, int(round(size * num_examples)))
  if isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size > 0:
    return int(size)
  raise ValueError(f'size={size!r} must be a positive int count or a float '
                   'fraction in (0, 1]')


def subset_indices(labels, size, *, seed: int = AUTHORS_SEED, balanced: bool = False,
                   exclude=None) -> np.ndarray:
  """A seeded random subset of the examples, as sorted int64 indices into `labels`.

  With `rng = np.random.default_rng(seed)` and candidates `C = [0, N) \\ exclude`:
  unbalanced, the first `n` of `rng.permutation(C)`; balanced over the K classes
  present in `labels`, `n // K` from each class (the first of `rng.permutation` of
  the class's candidates, classes in label order) plus one more from each of
  `n % K` classes chosen by `rng.permutation(K)`.

  Args:
    labels: int array (N,) of class labels.
    size: n as an int count, or a float fraction in (0, 1] of N (rounded).
    seed: the subset seed; default 9999 as in the authors' code.
    balanced: draw (as nearly as possible) equally many examples per class.
    exclude: optional indices that may not be drawn (e.g. a training subset when
      drawing a validation slice).

  Raises:
    ValueError: a bad `size`, or more examples asked (overall or, if `balanced`, from
      one class) than the candidates hold.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f'labels must be 1-D, got shape {labels.shape}')
  n = _count(size, len(labels))
  candidates = np.ones(len(labels), bool)
  if exclude is not None:
    candidates[np.asarray(exclude, np.int64)] = False
  candidates = np.flatnonzero(candidates)
  if n > len(candidates):
    raise ValueError(
        f'size={size!r} asks for {n} examples but only {len(candidates)} are '
        f'available ({len(labels)} in the split'
        f'{f", minus {len(labels) - len(candidates)} excluded" if exclude is not None else ""}'
        '); use a smaller size or a larger split')
  rng = np.random.default_rng(seed)
  if not balanced:
    return np.sort(rng.permutation(candidates)[:n])
  classes = np.unique(labels)
  quota = np.full(len(classes), n // len(classes))
  quota[rng.permutation(len(classes))[:n % len(classes)]] += 1
  chosen = []
  for cls, want in zip(classes, quota):
    pool = candidates[labels[candidates] == cls]
    if want > len(pool):
      raise ValueError(
          f'balanced size={size!r} needs {want} examples of class {cls} but only '
          f'{len(pool)} are available; use a smaller size or balanced=False')
    chosen.append(rng.permutation(pool)[:want])
  return np.sort(np.concatenate(chosen))


def train_val_indices(labels, train_size, val_size, *, seed: int = AUTHORS_SEED,
                      balanced: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """A training subset and a validation slice disjoint from it.

  The training subset equals `subset_indices(labels, train_size, seed=seed,
  balanced=balanced)` (so it does not depend on `val_size`); the validation slice is
  `subset_indices(labels, val_size, seed=seed, balanced=balanced, exclude=train)`.
  """
  train = subset_indices(labels, train_size, seed=seed, balanced=balanced)
  val = subset_indices(labels, val_size, seed=seed, balanced=balanced, exclude=train)
  return train, val
