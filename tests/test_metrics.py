"""Tests for jaxflowaug.metrics against hand-computed values and closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflowaug import metrics


def test_cross_entropy_int_and_soft_labels_match_hand_values():
  logits = jnp.array([[0.0, np.log(3.0)], [2.0, 2.0]])
  # softmax rows: (1/4, 3/4) and (1/2, 1/2).
  expected_int = (-np.log(0.75) - np.log(0.5)) / 2
  np.testing.assert_allclose(metrics.cross_entropy(logits, jnp.array([1, 0])), expected_int,
                             rtol=1e-6)
  soft = jnp.array([[0.5, 0.5], [1.0, 0.0]])
  expected_soft = (-(0.5 * np.log(0.25) + 0.5 * np.log(0.75)) - np.log(0.5)) / 2
  np.testing.assert_allclose(jax.jit(metrics.cross_entropy)(logits, soft), expected_soft,
                             rtol=1e-6)
  with pytest.raises(ValueError, match='labels'):
    metrics.cross_entropy(logits, jnp.array([0, 1, 1]))


def test_accuracy():
  logits = jnp.array([[1.0, 0.0], [0.0, 1.0], [3.0, 2.0], [0.0, 5.0]])
  np.testing.assert_allclose(metrics.accuracy(logits, jnp.array([0, 1, 1, 0])), 0.5)
  np.testing.assert_allclose(metrics.accuracy(logits, jax.nn.one_hot(jnp.array([0, 1, 0, 1]), 2)),
                             1.0)


def test_perturbation_norms_hand_values():
  x = jnp.zeros((2, 1, 2, 2))
  x_tilde = x.at[0, 0, 0, 0].set(0.3).at[0, 0, 1, 1].set(-0.4).at[1].set(0.5)
  norms = jax.jit(metrics.perturbation_norms)(x, x_tilde)
  np.testing.assert_allclose(norms['l2'], [0.5, 1.0], rtol=1e-6)     # 3-4-5; sqrt(4 * 0.25)
  np.testing.assert_allclose(norms['linf'], [0.4, 0.5], rtol=1e-6)


def test_fid_of_a_set_against_itself_is_zero():
  feats = np.random.default_rng(0).normal(size=(200, 16)) @ np.diag(np.arange(1, 17))
  assert abs(metrics.fid(feats, feats)) < 1e-6
  assert metrics.fid(feats, feats + 1.0) == pytest.approx(16.0, rel=1e-6)   # ‖μ1 - μ2‖²


def test_frechet_distance_commuting_covariances_closed_form():
  rng = np.random.default_rng(1)
  d = 6
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))
  s1, s2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
  cov1, cov2 = q @ np.diag(s1 ** 2) @ q.T, q @ np.diag(s2 ** 2) @ q.T   # share eigenvectors
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
  assert metrics.frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-9)
  # Rank-deficient covariances stay finite and non-negative (no complex sqrtm).
  low_rank = np.outer(mu1, mu1)
  assert metrics.frechet_distance(mu1, low_rank, mu1, low_rank) == pytest.approx(0, abs=1e-6)


def test_frechet_distance_non_commuting_matches_2x2_formula():
  # For 2x2 SPD M, tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)); here M = Σ1 Σ2.
  cov1 = np.array([[2.0, 0.5], [0.5, 1.0]])
  cov2 = np.array([[1.0, -0.3], [-0.3, 0.5]])
  m = cov1 @ cov2
  tr_sqrt = np.sqrt(np.trace(m) + 2 * np.sqrt(np.linalg.det(m)))
  expected = np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt
  assert metrics.frechet_distance(np.zeros(2), cov1, np.zeros(2), cov2) == pytest.approx(
      expected, rel=1e-9)


def _mmd2_unbiased_loops(x, y, degree=3):
  """Direct double-loop reference for the unbiased MMD² with (x·y/d + 1)^degree."""
  m, d = x.shape
  k = lambda a, b: (a @ b / d + 1) ** degree
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
  return xx + yy - 2 * xy


def test_kid_matches_exact_computation_for_a_shift():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(12, 4))
  y = x + 0.7
  # With subset_size = N every subset is a permutation of all rows: the estimate is exact.
  mean, std = metrics.kid(x, y, num_subsets=3, subset_size=12)
  assert mean == pytest.approx(_mmd2_unbiased_loops(x, y), rel=1e-9)
  assert std == pytest.approx(0.0, abs=1e-9)


def test_kid_is_unbiased_for_samples_of_the_same_distribution():
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(1000, 8)), rng.normal(size=(1000, 8))
  mean, std = metrics.kid(x, y, num_subsets=50, subset_size=100)
  # The biased (V-statistic) estimate would be ≈ E[k(x,x) - k(x,y)]·2/m ≈ 0.18 here.
  assert abs(mean) < 0.02 and std > 0
  shifted, _ = metrics.kid(x, y + 1.0, num_subsets=50, subset_size=100)
  assert shifted > 20 * abs(mean)


def test_kid_and_fid_validate_arguments():
  x = np.zeros((10, 3))
  with pytest.raises(ValueError, match='subset_size'):
    metrics.kid(x, x, subset_size=11)
  with pytest.raises(ValueError, match='feats'):
    metrics.fid(x, np.zeros((10, 4)))
