"""PNG figures: image grids (samples, Fig. 3) written with Pillow."""
import os

import numpy as np
from PIL import Image


def image_grid(images: np.ndarray, ncol: int, pad: int = 1) -> np.ndarray:
  """(N, H, W, C) floats in [0, 1] -> one (rows*(H+pad)+pad, ncol*(W+pad)+pad, C) grid, white gaps."""
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  n, h, w, c = images.shape
  nrow = -(-n // ncol)
  grid = np.ones((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), np.float32)
  for i, img in enumerate(images):
    r, k = divmod(i, ncol)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + k * (w + pad):pad + k * (w + pad) + w] = img
  return grid


def save_png(grid: np.ndarray, path: str, scale: int = 2) -> str:
  """Writes an HWC float image in [0, 1] as PNG, upscaled `scale`x (nearest) for viewing."""
  pixels = np.round(np.clip(grid, 0, 1) * 255).astype(np.uint8)
  if pixels.shape[-1] == 1:
    pixels = pixels[..., 0]
  img = Image.fromarray(pixels)
  if scale > 1:
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  img.save(path)
  return path
