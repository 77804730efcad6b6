"""Metrics: classification loss/accuracy, perturbation sizes, FID and KID.

`cross_entropy`, `accuracy` and `perturbation_norms` are pure, jit-safe reductions.
`frechet_distance`, `fid` and `kid` are evaluation-time statistics computed in numpy
float64 on feature arrays (e.g. Inception pool features); they take NumPy/JAX arrays and
return Python floats.
"""
from typing import Dict, Tuple

import jax.numpy as jnp
import numpy as np
import optax


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """Mean softmax cross-entropy, -1/B Σ_b Σ_k p_{b,k} log softmax(logits_b)_k.

  Args:
    logits: (B, K).
    labels: int class indices (B,) (p one-hot) or soft label vectors (B, K) (p rows,
      e.g. from mixup).

  Returns:
    float32 scalar.

  Raises:
    ValueError: if `labels` is neither (B,) integer nor (B, K).
  """
  logits = logits.astype(jnp.float32)
  if labels.shape == logits.shape[:-1] and jnp.issubdtype(labels.dtype, jnp.integer):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
  if labels.shape == logits.shape:
    return jnp.mean(optax.softmax_cross_entropy(logits, labels.astype(jnp.float32)))
  raise ValueError(f'`labels` must be integer indices of shape {logits.shape[:-1]} or soft '
                   f'labels of shape {logits.shape}; got {labels.dtype} {labels.shape}.')


def accuracy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """Fraction of examples with argmax_k logits_{b,k} == labels_b; logits (B, K), labels (B,) int.

  Soft labels (B, K) are reduced with argmax first. Returns a float32 scalar in [0, 1].
  """
  if labels.shape == logits.shape:
    labels = jnp.argmax(labels, axis=-1)
  if labels.shape != logits.shape[:-1]:
    raise ValueError(f'`labels` must have shape {logits.shape[:-1]} (or {logits.shape} for '
                     f'soft labels); got {labels.shape}.')
  return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


def perturbation_norms(x: jnp.ndarray, x_tilde: jnp.ndarray) -> Dict[str, jnp.ndarray]:
  """Per-example image-space size of a perturbation, over all pixels and channels.

  With d_b = x_tilde_b - x_b (images in [0, 1], shape (B, H, W, C)):
  l2_b = sqrt(Σ_i d_{b,i}²), linf_b = max_i |d_{b,i}|. Returns {'l2': (B,), 'linf': (B,)}.
  """
  if x.shape != x_tilde.shape:
    raise ValueError(f'`x` and `x_tilde` must have the same shape; got {x.shape} and '
                     f'{x_tilde.shape}.')
  d = (x_tilde.astype(jnp.float32) - x.astype(jnp.float32)).reshape((x.shape[0], -1))
  return {'l2': jnp.sqrt(jnp.sum(d * d, axis=1)), 'linf': jnp.max(jnp.abs(d), axis=1)}


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
  """Symmetric PSD square root via eigh, negative round-off eigenvalues clipped to 0."""
  w, v = np.linalg.eigh((cov + cov.T) / 2)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
  """Fréchet distance between N(μ1, Σ1) and N(μ2, Σ2):

    ‖μ1 - μ2‖² + tr Σ1 + tr Σ2 - 2 tr (Σ1^{1/2} Σ2 Σ1^{1/2})^{1/2}.

  The trace term is Σ_i sqrt(λ_i) over the eigenvalues of the symmetric PSD matrix
  Σ1^{1/2} Σ2 Σ1^{1/2} (equal to tr (Σ1 Σ2)^{1/2}), with negative round-off clipped, in
  float64; this avoids the complex results of a general sqrtm. mu: (d,), cov: (d, d).
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
  d = mu1.shape[0]
  if mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
    raise ValueError(f'expected mu1, mu2 of shape (d,) and cov1, cov2 of shape (d, d); got '
                     f'{mu1.shape}, {cov1.shape}, {mu2.shape}, {cov2.shape}.')
  s1 = _psd_sqrt(cov1)
  eig = np.linalg.eigvalsh(s1 @ ((cov2 + cov2.T) / 2) @ s1)
  trace_sqrt = np.sum(np.sqrt(np.clip(eig, 0.0, None)))
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt)


def _check_features(feats1: np.ndarray, feats2: np.ndarray, min_rows: int) -> None:
  if feats1.ndim != 2 or feats2.ndim != 2 or feats1.shape[1] != feats2.shape[1]:
    raise ValueError(f'`feats1` and `feats2` must be (N, d) arrays with the same d; got '
                     f'{feats1.shape} and {feats2.shape}.')
  if min(len(feats1), len(feats2)) < min_rows:
    raise ValueError(f'`feats1` and `feats2` need at least {min_rows} rows each; got '
                     f'{len(feats1)} and {len(feats2)}.')


def fid(feats1, feats2) -> float:
  """FID: `frechet_distance` of the Gaussians fitted (mean, unbiased covariance) to two
  feature sets (N1, d) and (N2, d)."""
  feats1, feats2 = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
  _check_features(feats1, feats2, 2)
  return frechet_distance(feats1.mean(0), np.cov(feats1, rowvar=False),
                          feats2.mean(0), np.cov(feats2, rowvar=False))


def kid(feats1, feats2, *, degree: int = 3, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> Tuple[float, float]:
  """KID (Bińkowski et al. 2018): unbiased MMD² with the kernel k(x, y) = (x·y/d + 1)^degree.

  For each of `num_subsets` draws, X (m rows of feats1) and Y (m rows of feats2) are picked
  without replacement (m = `subset_size`) and
    MMD²_u = Σ_{i≠j} k(x_i, x_j)/(m(m-1)) + Σ_{i≠j} k(y_i, y_j)/(m(m-1))
             - 2 Σ_{i,j} k(x_i, y_j)/m².
  Its expectation is 0 when both sets come from the same distribution.

  Args:
    feats1, feats2: (N1, d), (N2, d) features.
    degree: polynomial kernel degree.
    num_subsets: number of subset draws.
    subset_size: m, at most min(N1, N2).
    seed: seed of the numpy generator that draws the subsets.

  Returns:
    (mean, std) of MMD²_u over the subsets.
  """
  feats1, feats2 = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
  _check_features(feats1, feats2, 2)
  m = subset_size
  if not 2 <= m <= min(len(feats1), len(feats2)):
    raise ValueError(f'`subset_size` must be in [2, min(N1, N2) = '
                     f'{min(len(feats1), len(feats2))}]; got {m}.')
  if num_subsets < 1:
    raise ValueError(f'`num_subsets` must be >= 1; got {num_subsets}.')
  d = feats1.shape[1]
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(num_subsets):
    x = feats1[rng.choice(len(feats1), m, replace=False)]
    y = feats2[rng.choice(len(feats2), m, replace=False)]
    kxx = (x @ x.T / d + 1) ** degree
    kyy = (y @ y.T / d + 1) ** degree
    kxy = (x @ y.T / d + 1) ** degree
    values.append((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                  - 2 * kxy.mean())
  return float(np.mean(values)), float(np.std(values))
