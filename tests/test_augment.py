"""Tests for jaxflowaug.augment: shapes, exact numpy references, and properties."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflowaug import augment


def _images(n=16, h=8, w=8, c=3, seed=0):
  """Random images in [0.1, 1] (no zeros, so zeroed pixels are identifiable)."""
  return np.random.default_rng(seed).uniform(0.1, 1.0, (n, h, w, c)).astype(np.float32)


@pytest.mark.parametrize('mode', ['constant', 'reflect'])
def test_random_crop_flip_matches_numpy_reference(mode):
  x, pad, key = _images(), 2, jax.random.key(1)
  out = jax.jit(lambda k, x: augment.random_crop_flip(k, x, pad=pad, mode=mode))(key, x)
  chex.assert_shape(out, x.shape)
  chex.assert_type(out, x.dtype)
  out = np.asarray(out)
  # The draws the docstring specifies, applied with numpy.
  k_crop, k_flip = jax.random.split(key)
  offsets = np.asarray(jax.random.randint(k_crop, (16, 2), 0, 2 * pad + 1))
  flips = np.asarray(jax.random.bernoulli(k_flip, 0.5, (16,)))
  padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=mode)
  for n in range(16):
    oy, ox = offsets[n]
    want = padded[n, oy:oy + 8, ox:ox + 8]
    np.testing.assert_array_equal(out[n], want[:, ::-1] if flips[n] else want)
  assert 0 < flips.sum() < 16  # Both branches are exercised.
  assert len({tuple(o) for o in offsets}) > 1


def test_random_crop_flip_zero_padding_and_no_flip():
  x = _images(n=64)
  out = augment.random_crop_flip(jax.random.key(2), x, pad=3, flip=False)
  # Every output is x shifted by (dy, dx) in [-3, 3]^2, never mirrored; zero fill.
  xn, on = x, np.asarray(out)
  for n in range(64):
    zero_rows = int((on[n] == 0).all(axis=(1, 2)).sum())
    zero_cols = int((on[n] == 0).all(axis=(0, 2)).sum())
    assert zero_rows <= 3 and zero_cols <= 3
    matches = [(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)
               if np.array_equal(on[n][max(dy, 0):8 + min(dy, 0), max(dx, 0):8 + min(dx, 0)],
                                 xn[n][max(-dy, 0):8 - max(dy, 0), max(-dx, 0):8 - max(dx, 0)])]
    assert len(matches) == 1
    assert (zero_rows, zero_cols) == (abs(matches[0][0]), abs(matches[0][1]))


def test_random_crop_flip_pad_zero_only_flips():
  x = _images(n=32)
  out = np.asarray(augment.random_crop_flip(jax.random.key(3), x, pad=0))
  flipped = [bool(np.array_equal(out[n], x[n, :, ::-1])) for n in range(32)]
  same = [bool(np.array_equal(out[n], x[n])) for n in range(32)]
  assert all(f != s for f, s in zip(flipped, same))
  assert 4 < sum(flipped) < 28


def test_random_translate_shifts_within_range_with_zero_fill():
  x = _images(n=64, h=20, w=10)  # max_frac .1 -> |dy| <= 2, |dx| <= 1.
  out = np.asarray(jax.jit(lambda k, x: augment.random_translate(k, x))(
      jax.random.key(4), x))
  chex.assert_shape(out, x.shape)
  seen = set()
  for n in range(64):
    for dy in range(-2, 3):
      for dx in range(-1, 2):
        want = np.zeros_like(out[n])
        want[max(dy, 0):20 + min(dy, 0), max(dx, 0):10 + min(dx, 0)] = (
            x[n, max(-dy, 0):20 - max(dy, 0), max(-dx, 0):10 - max(dx, 0)])
        if np.array_equal(out[n], want):
          seen.add((dy, dx))
          break
      else:
        continue
      break
    else:
      pytest.fail(f'image {n} is not a translate of its input within range')
  assert len(seen) > 5  # Shifts vary per example.


def test_cutout_zeroes_one_square_per_image():
  x, size = _images(n=64, h=12, w=12), 4
  out = np.asarray(jax.jit(lambda k, x: augment.cutout(k, x, size=size))(
      jax.random.key(5), x))
  chex.assert_shape(out, x.shape)
  interior = 0
  for n in range(64):
    zero = (out[n] == 0).all(axis=-1)
    assert not ((out[n] == 0) & ~zero[..., None]).any()  # All channels or none.
    np.testing.assert_array_equal(out[n][~zero], x[n][~zero])
    rows, cols = np.nonzero(zero)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    assert zero.sum() == (r1 - r0) * (c1 - c0)  # A filled rectangle.
    assert r1 - r0 <= size and c1 - c0 <= size
    if r0 > 0 and c0 > 0 and r1 < 12 and c1 < 12:
      interior += 1
      assert zero.sum() == size * size
  assert interior > 10


def test_mixup_is_convex_combination_with_soft_labels():
  n = 10
  x = _images(n=n)
  y = np.eye(n, dtype=np.float32)  # Distinct classes identify the partners.
  x_mix, y_mix = jax.jit(lambda k, x, y: augment.mixup(k, x, y, alpha=0.4))(
      jax.random.key(6), x, y)
  chex.assert_shape(x_mix, x.shape)
  chex.assert_shape(y_mix, y.shape)
  x_mix, y_mix = np.asarray(x_mix), np.asarray(y_mix)
  np.testing.assert_allclose(y_mix.sum(-1), 1.0, atol=1e-6)
  lams, partners = set(), []
  for i in range(n):
    nonzero = np.flatnonzero(y_mix[i] > 1e-7)
    assert i in nonzero and len(nonzero) <= 2
    lam = float(y_mix[i, i])
    partner = [j for j in nonzero if j != i] or [i]
    partners.append(partner[0])
    if partner[0] != i:
      lams.add(round(lam, 5))
    np.testing.assert_allclose(x_mix[i], lam * x[i] + (1 - lam) * x[partner[0]],
                               atol=1e-6)
  assert sorted(partners) == list(range(n))  # A permutation of the batch.
  assert len(lams) == 1 and 0.0 < lams.pop() < 1.0  # One lambda for the batch.


@pytest.mark.parametrize('alpha', [0.2, 1.0])
def test_mixup_lambda_follows_beta(alpha):
  n = 8
  x = _images(n=n, h=1, w=1, c=1)
  def lam(key):
    _, y_mix = augment.mixup(key, x, jnp.eye(n), alpha=alpha)
    return jnp.diagonal(y_mix).min()  # lambda on moved rows, 1 on fixed points.
  lams = np.asarray(jax.jit(jax.vmap(lam))(jax.random.split(jax.random.key(7), 4000)))
  # For Beta(a, a): E[lambda] = 1/2 and E[lambda (1 - lambda)] = a / (2 (2a + 1)).
  assert abs(lams.mean() - 0.5) < 0.03
  assert abs(np.mean(lams * (1 - lams)) - alpha / (2 * (2 * alpha + 1))) < 0.008


@pytest.mark.parametrize('fn, kwargs, match', [
    (augment.random_crop_flip, {'pad': -1}, 'pad'),
    (augment.random_crop_flip, {'mode': 'wrap'}, 'mode'),
    (augment.random_translate, {'max_frac': 1.5}, 'max_frac'),
    (augment.cutout, {'size': 0}, 'size'),
    (augment.cutout, {'size': 9}, 'size'),
])
def test_bad_arguments_raise(fn, kwargs, match):
  with pytest.raises(ValueError, match=match):
    fn(jax.random.key(0), _images(n=2), **kwargs)


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match='N, H, W, C'):
    augment.cutout(jax.random.key(0), jnp.zeros((8, 8, 3)), size=2)
  with pytest.raises(ValueError, match='y_onehot'):
    augment.mixup(jax.random.key(0), _images(n=4), jnp.zeros((3, 10)), alpha=1.0)
  with pytest.raises(ValueError, match='alpha'):
    augment.mixup(jax.random.key(0), _images(n=4), jnp.eye(4), alpha=0.0)
