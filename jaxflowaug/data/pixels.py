"""Pixel encoding: sources and batches hold uint8 images; models take float32 in [0, 1]."""
import jax
import jax.numpy as jnp


def to_float(images: jax.Array) -> jax.Array:
  """uint8 pixels p (any shape) -> float32 p / 255 in [0, 1]."""
  return images.astype(jnp.float32) / 255.0
