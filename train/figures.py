"""PNG figures: image grids (Pillow) and the paper's plots (matplotlib, no pyplot state):
Fig. 3 perturbation grids, Fig. 4 learning curves, Fig. 5 accuracy against training-set size."""
import os
from typing import Mapping, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure
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


def _save(fig: Figure, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  return path


def perturbation_grid(original: np.ndarray, perturbed: Sequence[Tuple[str, np.ndarray]],
                      path: str, amplify: float = 5.0) -> str:
  """Fig. 3: rows of N images each, labelled on the left, written as a PNG.

  Rows: the originals x (N, H, W, C) in [0, 1]; each perturbed set x~ (N, H, W, C) under its
  label; then, for each, the amplified difference clip(|x~ - x| * amplify, 0, 1).
  """
  original = np.asarray(original, np.float32)
  rows = [("original", original)] + [(label, np.asarray(x, np.float32)) for label, x in perturbed]
  rows += [(f"|x̃ - x| × {amplify:g}, {label}",
            np.abs(np.asarray(x, np.float32) - original) * amplify) for label, x in perturbed]
  n, h, w, c = original.shape
  fig = Figure(figsize=(max(4.0, 0.9 * n), 0.9 * len(rows) * h / w + 0.3))
  for i, (label, images) in enumerate(rows):
    ax = fig.add_subplot(len(rows), 1, i + 1)
    grid = image_grid(images, ncol=n)
    ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_frame_on(False)
    ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
  return _save(fig, path)


def learning_curves(curves: Sequence[Mapping[str, float]], path: str, title: str = "") -> str:
  """Fig. 4: accuracy (%) against epoch, one line per `*_accuracy` key of the curve points
  (`{"epoch": e, "test_accuracy": a, "train_accuracy": b}`, accuracies in [0, 1])."""
  keys = sorted({k for point in curves for k in point if k.endswith("accuracy")})
  fig = Figure(figsize=(5.0, 3.5))
  ax = fig.add_subplot(1, 1, 1)
  for key in keys:
    points = [(p["epoch"], 100.0 * p[key]) for p in curves if key in p]
    ax.plot(*zip(*points), marker="o", markersize=3, label=key.replace("_accuracy", ""))
  ax.set_xlabel("epoch")
  ax.set_ylabel("accuracy (%)")
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend()
  return _save(fig, path)


def size_sweep(series: Mapping[str, Sequence[Tuple[float, float, float]]], path: str,
               title: str = "", ylabel: str = "test accuracy (%)") -> str:
  """Fig. 5: a value against training-set size (log axis), one line per method with mean ± std
  error bars; `series` maps a method to its points `(size, mean, std)`."""
  fig = Figure(figsize=(5.0, 3.5))
  ax = fig.add_subplot(1, 1, 1)
  for method, points in series.items():
    size, mean, std = zip(*sorted(points))
    ax.errorbar(size, mean, yerr=std, marker="o", markersize=3, capsize=3, label=method)
  ax.set_xscale("log")
  sizes = sorted({point[0] for points in series.values() for point in points})
  ax.set_xticks(sizes, [f"{size:g}" for size in sizes])
  ax.minorticks_off()
  ax.set_xlabel("training images")
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)
