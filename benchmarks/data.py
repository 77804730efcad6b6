"""Input pipeline speed: time to first batch, and batch + augmentation throughput.

Run from the repository root: `python -m benchmarks.data [--steps N]`. Reads the CIFAR-10
tar in `../shared/data` and prints and returns

* ``cold_first_batch_s``: `data.load` into an empty data_dir (decode the tar and
  materialise it as a TFDS dataset) plus the first batch;
* ``cached_first_batch_s``: the same from the materialised copy;
* ``assembly_img_per_s``: host batch assembly only (`batch_indices` + gathering 128
  uint8 images);
* ``pipeline_img_per_s``: assembly, transfer, uint8 -> float and `random_crop_flip` on
  the default device, batch 128, blocking on each batch.
"""
import argparse
import json
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp

from jaxflowaug import augment
from jaxflowaug import data

SOURCE = 'folder:' + str(pathlib.Path(__file__).resolve().parents[1] / '..' / 'shared'
                         / 'data' / 'cifar10-jpeg-train.tar.xz')
BATCH = 128


def _first_batch_seconds(data_dir) -> float:
  start = time.perf_counter()
  images, _ = data.load(SOURCE, 'train', data_dir=data_dir)
  images[data.batch_indices(len(images), BATCH, 0, 0)]
  return time.perf_counter() - start


def run(steps: int = 200) -> dict:
  """Measures the numbers in the module docstring over `steps` batches."""
  with tempfile.TemporaryDirectory() as data_dir:
    cold = _first_batch_seconds(data_dir)
    cached = _first_batch_seconds(data_dir)
    images, _ = data.load(SOURCE, 'train', data_dir=data_dir)

  def batch(step):
    return images[data.batch_indices(len(images), BATCH, 0, step)]

  start = time.perf_counter()
  for step in range(steps):
    batch(step)
  assembly = steps * BATCH / (time.perf_counter() - start)

  crop_flip = jax.jit(lambda key, x: augment.random_crop_flip(
      key, x.astype(jnp.float32) / 255.0))
  key = jax.random.key(0)
  crop_flip(key, batch(0)).block_until_ready()  # Compile.
  start = time.perf_counter()
  for step in range(steps):
    crop_flip(jax.random.fold_in(key, step), batch(step)).block_until_ready()
  pipeline = steps * BATCH / (time.perf_counter() - start)
  return {'device': str(jax.devices()[0]), 'num_images': len(images),
          'cold_first_batch_s': round(cold, 2), 'cached_first_batch_s': round(cached, 2),
          'assembly_img_per_s': round(assembly), 'pipeline_img_per_s': round(pipeline)}


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=200)
  print(json.dumps(run(parser.parse_args().steps), indent=2))
