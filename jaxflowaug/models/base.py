"""Input handling shared by the classifiers: validation and per-channel standardisation."""
from typing import Sequence

import jax.numpy as jnp


def standardize(x: jnp.ndarray, mean: Sequence[float], std: Sequence[float]) -> jnp.ndarray:
  """Validates a batch of images and returns `(x - mean) / std` per channel.

  Args:
    x: float images, shape (B, H, W, C), values in [0, 1].
    mean: per-channel means, length C.
    std: per-channel standard deviations, length C, all > 0.

  Returns:
    float32 array of shape (B, H, W, C).

  Raises:
    ValueError: if `x` is not a rank-4 floating NHWC batch with C == len(mean), or if
      `mean` and `std` differ in length or `std` has a non-positive entry.
  """
  if len(mean) != len(std) or min(std) <= 0:
    raise ValueError(
        f'model fields `mean` and `std` must have the same length (one entry per channel) '
        f'and `std` must be positive; got mean={tuple(mean)}, std={tuple(std)}.')
  if x.ndim != 4:
    raise ValueError(
        f'model input `x` must be a rank-4 NHWC batch (B, H, W, C); got shape {x.shape}. '
        'Add a batch axis with x[None] or a channel axis with x[..., None].')
  if x.shape[-1] != len(mean):
    raise ValueError(
        f'model input `x` has {x.shape[-1]} channels but the model expects {len(mean)} '
        f'(the length of its `mean`/`std` fields); got shape {x.shape}. Pass images with '
        f'{len(mean)} channels or set `mean`/`std` to {x.shape[-1]} entries.')
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(
        f'model input `x` must be floating point in [0, 1]; got dtype {x.dtype}. '
        'Convert uint8 images with x.astype(jnp.float32) / 255.')
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (x.astype(jnp.float32) - mean) / std
