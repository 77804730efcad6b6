"""The datasets of a run, from its `config.data`, fed as sharded global batches.

Splits (all from `data.load`, uint8 NHWC + int32):
- `eval`: `data.eval_split` (or a seeded class-balanced sample of `data.max_eval_examples` of
  it); or, when that is '', `data.holdout` images of `data.train_split`
  held out by a seeded class-balanced draw (for CIFAR-10, whose test split is not used here:
  the split is sorted by class, so a slice such as `train[45000:]` would hold one class);
- `flow_train`: what the flow learns from: `data.train_split` (or a seeded class-balanced
  sample of `data.max_train_examples` of it) less the held-out images;
- `train`: the classifier's training set, a fixed seeded subset of `flow_train`
  (`data.train_size` or `data.train_fraction`, or all; the same subset for every method).

Batches are a pure function of (seed, step): `Loader.batch(step)` gives this process's rows of
global batch `step`, and a resumed run sees exactly the batches an uninterrupted one would.
Images travel to the device as uint8 and become float32 in [0, 1] inside the jitted step.
"""
import dataclasses
import os
from typing import Callable, Iterable, Iterator, Optional

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging
from jax.experimental import multihost_utils

from jaxflowaug import data, parallel


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # (N, H, W, C) uint8
  labels: np.ndarray  # (N,) int32
  latents: Optional[np.ndarray] = None  # (N, H, W, C) float32 flow latents, when cached

  def __len__(self) -> int:
    return len(self.labels)

  def take(self, indices: np.ndarray) -> "Split":
    return Split(self.images[indices], self.labels[indices],
                 None if self.latents is None else self.latents[indices])

  def columns(self, rows: np.ndarray) -> dict:
    """The batch of `rows`: image, label and, when cached, latent."""
    out = {"image": self.images[rows], "label": self.labels[rows]}
    if self.latents is not None:
      out["latent"] = self.latents[rows]
    return out


@dataclasses.dataclass(frozen=True)
class Datasets:
  flow_train: Split
  train: Split
  eval: Split
  num_classes: int
  class_names: tuple
  image_shape: tuple


def data_dir(config: ml_collections.ConfigDict) -> str:
  return os.path.expanduser(config.data.data_dir or os.path.join("~", ".cache", "jaxflowaug", "tfds"))


def _naming(fields: str, fn, *args, **kwargs):
  """`fn(*args, **kwargs)`; a data error it raises is raised again prefixed with the config
  fields that chose the data, so the message says what to change."""
  try:
    return fn(*args, **kwargs)
  except (ValueError, FileNotFoundError) as e:
    raise type(e)(f"{fields}: {e}") from None


def load(config: ml_collections.ConfigDict) -> Datasets:
  """Loads the run's splits; every process loads the same arrays (they are small)."""
  cfg, ddir = config.data, data_dir(config)
  if cfg.train_size and cfg.train_fraction:
    raise ValueError(f"data.train_size={cfg.train_size} and data.train_fraction="
                     f"{cfg.train_fraction} are both set; set one of them to 0.")
  source = f"data.source={cfg.source!r} (data.data_dir={ddir!r})"
  info = _naming(source, data.info, cfg.source, data_dir=ddir, archive_dir=cfg.archive_dir)
  full = Split(*_naming(f"data.train_split={cfg.train_split!r}", data.load, cfg.source,
                        cfg.train_split, data_dir=ddir))
  full = _naming(f"data.max_train_examples={cfg.max_train_examples}", seeded_subset, full,
                 cfg.max_train_examples, cfg.subset_seed, balanced=True)
  if cfg.eval_split:
    evaluation = Split(*_naming(f"data.eval_split={cfg.eval_split!r}", data.load, cfg.source,
                                cfg.eval_split, data_dir=ddir))
    evaluation = _naming(f"data.max_eval_examples={cfg.max_eval_examples}", seeded_subset,
                         evaluation, cfg.max_eval_examples, cfg.subset_seed, balanced=True)
  elif cfg.holdout > 0:
    held = _naming(f"data.holdout={cfg.holdout}", data.subset_indices, full.labels, cfg.holdout,
                   seed=cfg.subset_seed, balanced=True)
    evaluation = full.take(held)
    full = full.take(np.setdiff1d(np.arange(len(full)), held))
  else:
    raise ValueError("data.eval_split is '' and data.holdout is 0: name an evaluation split "
                     "(e.g. 'test') or hold out data.holdout > 0 images of data.train_split.")
  size = cfg.train_size or cfg.train_fraction
  train = full
  if size:
    field = "data.train_size" if cfg.train_size else "data.train_fraction"
    train = full.take(_naming(f"{field}={size!r}", data.subset_indices, full.labels, size,
                              seed=cfg.subset_seed, balanced=cfg.balanced))
  classes = np.unique(train.labels)
  if len(classes) < 2:
    raise ValueError(f"The classifier's training set ({len(train)} images of data.train_split="
                     f"{cfg.train_split!r}, data.train_size={cfg.train_size}) holds only class(es) "
                     f"{classes.tolist()}: nothing to learn. A slice of a class-sorted source is "
                     "one class; use the whole split with data.max_train_examples (a seeded "
                     "class-balanced sample) instead.")
  logging.info("data %s: flow_train %d (%s), train %d (size=%s, seed %d), eval %d (%s)",
               cfg.source, len(full), cfg.train_split, len(train), size or "all",
               cfg.subset_seed, len(evaluation), cfg.eval_split or f"{cfg.holdout} held out")
  return Datasets(flow_train=full, train=train, eval=evaluation, num_classes=info.num_classes,
                  class_names=tuple(info.class_names), image_shape=tuple(full.images.shape[1:]))


class Loader:
  """Global training batches of one split over the mesh, one per step, shuffled every epoch."""

  def __init__(self, split: Split, global_batch_size: int, seed: int, mesh, field: str):
    parallel.check_batch_size(global_batch_size, field)
    if global_batch_size > len(split):
      raise ValueError(f"{field}={global_batch_size} is larger than the training set "
                       f"({len(split)} examples); lower {field} or train on more data.")
    self.split, self.global_batch_size, self.seed, self.mesh = split, global_batch_size, seed, mesh
    self.steps_per_epoch = len(split) // global_batch_size

  def batch(self, step: int) -> dict:
    idx = data.batch_indices(len(self.split), self.global_batch_size, self.seed, step,
                             process_index=jax.process_index(),
                             process_count=jax.process_count())
    return parallel.global_batch(self.split.columns(idx), self.mesh)


def progress(iterable: Iterable, desc: Optional[str], total: Optional[int] = None) -> Iterable:
  """`iterable` with a progress bar named `desc` on process 0 (none when `desc` is None)."""
  return tqdm.tqdm(iterable, desc=desc, total=total, dynamic_ncols=True, leave=False,
                   disable=desc is None or jax.process_index() != 0)


def eval_batches(split: Split, global_batch_size: int, mesh,
                 desc: Optional[str] = None) -> Iterator[dict]:
  """The whole split in order, in global batches; the last one padded, with `mask` 0 on padding
  (with a progress bar named `desc`, if given)."""
  n, per_process = len(split), parallel.process_batch_size(global_batch_size)
  for start in progress(range(0, n, global_batch_size), desc):
    rows = np.arange(start, start + global_batch_size)
    rows = rows[jax.process_index() * per_process:(jax.process_index() + 1) * per_process]
    mask = (rows < n).astype(np.float32)
    rows = np.minimum(rows, n - 1)
    yield parallel.global_batch({"image": split.images[rows], "label": split.labels[rows],
                                 "mask": mask}, mesh)


def mean_over(step_fn: Callable[[dict, int], dict], split: Split, global_batch_size: int,
              mesh) -> dict:
  """Means over the whole split of per-example quantities: `step_fn(batch, index)` returns
  their sums over the batch's unmasked rows and 'count', the number of those rows; the result
  is {key: total / total count} for every other key."""
  totals = {}
  for i, batch in enumerate(eval_batches(split, global_batch_size, mesh)):
    for k, v in parallel.to_host(step_fn(batch, i)).items():
      totals[k] = totals.get(k, 0.0) + float(v)
  count = max(totals.pop("count"), 1.0)
  return {k: v / count for k, v in totals.items()}


def map_batches(fn, split: Split, batch_size: int, mesh, desc: Optional[str] = None) -> dict:
  """`fn(index, global batch)` -> dict of per-example (B, ...) arrays, over the whole split in
  order, gathered from every process, concatenated and trimmed to len(split) (numpy)."""
  parts = [multihost_utils.process_allgather(fn(i, batch), tiled=True)
           for i, batch in enumerate(eval_batches(split, batch_size, mesh, desc))]
  return {k: np.concatenate([p[k] for p in parts])[:len(split)] for k in parts[0]}


def seeded_subset(split: Split, count: int, seed: int, balanced: bool = False) -> Split:
  """`count` examples of the split drawn with `seed` (in split order; `balanced`: as equally
  many per class as possible); all of it if count is 0 or at least its size. Class-sorted
  splits are not read from the front, so the subset covers every class."""
  if not count or count >= len(split):
    return split
  return split.take(data.subset_indices(split.labels, count, seed=seed, balanced=balanced))


def sample_rows(split: Split, count: int, seed: int, mesh) -> dict:
  """A fixed global batch of `count` examples drawn without replacement with `seed` (the first
  `count` of `np.random.default_rng(seed).permutation(len(split))`), rounded down to a multiple
  of the device count: ActNorm's data-dependent init and the reconstruction checks. Not the
  first rows: on a class-sorted split those are all one class."""
  count = min(count, len(split)) // jax.device_count() * jax.device_count()
  drawn = np.random.default_rng(seed).permutation(len(split))[:count]
  per_process = count // jax.process_count()
  rows = drawn[jax.process_index() * per_process:(jax.process_index() + 1) * per_process]
  return parallel.global_batch({"image": split.images[rows], "label": split.labels[rows]}, mesh)
