"""Image-space augmentations: pure, jittable, per-example random, on device.

Every function takes an explicit `jax.random` key and a float batch `x` of shape
`(N, H, W, C)` with values in [0, 1], and returns arrays of the same shape and dtype.
Shape arguments (`pad`, `size`, ...) are static: they are checked when traced.
"""
import jax
import jax.numpy as jnp

_PAD_MODES = ('constant', 'reflect')


def _as_images(x) -> jax.Array:
  """`x` as a jax array, checked to be an (N, H, W, C) batch."""
  x = jnp.asarray(x)
  if x.ndim != 4:
    raise ValueError(f'x must be an (N, H, W, C) batch of images, got shape {x.shape}')
  return x


def _shift_crop(x, offsets, pad_h: int, pad_w: int, mode: str):
  """Pads `x` by (pad_h, pad_w) on each side and crops H x W at per-example offsets.

  out[n, i, j] = padded[n, offsets[n, 0] + i, offsets[n, 1] + j] with offsets in
  [0, 2*pad_h] x [0, 2*pad_w]; an offset of (pad_h, pad_w) returns x[n] unchanged.
  """
  n, h, w, c = x.shape
  padded = jnp.pad(x, ((0, 0), (pad_h, pad_h), (pad_w, pad_w), (0, 0)), mode=mode)
  crop = lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (h, w, c))
  return jax.vmap(crop)(padded, offsets)


def random_crop_flip(key, x, *, pad: int = 4, flip: bool = True,
                     mode: str = 'constant'):
  """Random pad-and-crop plus random horizontal flip (the CIFAR augmentation).

  With `k_crop, k_flip = jax.random.split(key)`, offsets
  `o = jax.random.randint(k_crop, (N, 2), 0, 2*pad + 1)` and flips
  `f = jax.random.bernoulli(k_flip, 0.5, (N,))`:

    y[n, i, j] = pad(x)[n, o[n,0] + i, o[n,1] + j]      (crop, i < H, j < W)
    out[n, i, j] = y[n, i, W-1-j] if f[n] else y[n, i, j]

  i.e. each image is shifted by (pad - o[n]) pixels, filled by zeros
  (`mode='constant'`, as the authors) or mirrored pixels (`mode='reflect'`).

  Args:
    key: PRNG key.
    x: float images (N, H, W, C).
    pad: p >= 0; shifts are in [-p, p] on each axis.
    flip: whether to flip half of the images (p = 0.5 each) left-right.
    mode: 'constant' (zero padding) or 'reflect'.

  Returns:
    float images (N, H, W, C), dtype of x.
  """
  x = _as_images(x)
  if pad < 0 or mode not in _PAD_MODES:
    raise ValueError(f'need pad >= 0 and mode in {_PAD_MODES}, got pad={pad}, '
                     f'mode={mode!r}')
  k_crop, k_flip = jax.random.split(key)
  offsets = jax.random.randint(k_crop, (x.shape[0], 2), 0, 2 * pad + 1)
  y = _shift_crop(x, offsets, pad, pad, mode)
  if not flip:
    return y
  flips = jax.random.bernoulli(k_flip, 0.5, (x.shape[0],))
  return jnp.where(flips[:, None, None, None], y[:, :, ::-1], y)


def random_translate(key, x, *, max_frac: float = 0.1):
  """Random integer translation with zero fill (the SVHN augmentation).

  Each image is shifted by (dy, dx) pixels, dy uniform in {-m_h..m_h} and dx in
  {-m_w..m_w}, m_h = floor(max_frac * H), m_w = floor(max_frac * W), independently per
  example; pixels shifted in are 0:

    out[n, i, j] = x[n, i - dy, j - dx] if inside the image else 0.

  Args:
    key: PRNG key.
    x: float images (N, H, W, C).
    max_frac: the largest shift as a fraction of the side, in [0, 1).

  Returns:
    float images (N, H, W, C), dtype of x.
  """
  x = _as_images(x)
  if not 0.0 <= max_frac < 1.0:
    raise ValueError(f'max_frac={max_frac} must be in [0, 1)')
  _, h, w, _ = x.shape
  m_h, m_w = int(max_frac * h), int(max_frac * w)
  offsets = jax.random.randint(key, (x.shape[0], 2), 0,
                               jnp.array([2 * m_h + 1, 2 * m_w + 1]))
  return _shift_crop(x, offsets, m_h, m_w, 'constant')


def geometric(key, x, *, crop_flip: bool = False, crop_pad: int = 4, flip: bool = True,
              translate: float = 0.0):
  """The geometric augmentation of a config's `augment` fields: `random_crop_flip(pad=crop_pad,
  flip=flip)` if `crop_flip`, else `random_translate(max_frac=translate)` if `translate` > 0,
  else x unchanged. (N, H, W, C) -> (N, H, W, C)."""
  if crop_flip:
    return random_crop_flip(key, x, pad=crop_pad, flip=flip)
  if translate:
    return random_translate(key, x, max_frac=translate)
  return x


def cutout(key, x, *, size: int):
  """Cutout (DeVries & Taylor 2017): zero a size x size square per image.

  The centre (cy, cx) is uniform over the H x W pixel grid, per example; the square
  covers rows [cy - size//2, cy - size//2 + size) and likewise columns, clipped to the
  image, so it holds exactly size**2 pixels when it lies inside and fewer at borders:

    out[n, i, j, c] = 0 if (i, j) in square[n] else x[n, i, j, c].

  Args:
    key: PRNG key.
    x: float images (N, H, W, C).
    size: the side of the square, 1 <= size <= min(H, W).

  Returns:
    float images (N, H, W, C), dtype of x.
  """
  x = _as_images(x)
  n, h, w, _ = x.shape
  if not 1 <= size <= min(h, w):
    raise ValueError(f'size={size} must be in [1, min(H, W)={min(h, w)}]')
  k_y, k_x = jax.random.split(key)
  top = jax.random.randint(k_y, (n, 1, 1), 0, h) - size // 2
  left = jax.random.randint(k_x, (n, 1, 1), 0, w) - size // 2
  rows = jnp.arange(h)[None, :, None]
  cols = jnp.arange(w)[None, None, :]
  inside = ((rows >= top) & (rows < top + size) & (cols >= left)
            & (cols < left + size))
  return jnp.where(inside[..., None], jnp.zeros((), x.dtype), x)


def mixup(key, x, y_onehot, *, alpha: float):
  """Mixup (Zhang et al. 2018): convex combinations of the batch with a permutation.

  One lambda ~ Beta(alpha, alpha) per batch (as the reference implementation) and a
  uniform random permutation pi of the batch:

    x_mix = lambda * x + (1 - lambda) * x[pi]
    y_mix = lambda * y + (1 - lambda) * y[pi]

  Args:
    key: PRNG key.
    x: float images (N, H, W, C).
    y_onehot: float labels (N, K), one-hot (or any rows summing to 1).
    alpha: the Beta concentration, > 0.

  Returns:
    (x_mix (N, H, W, C) dtype of x, y_mix (N, K) soft labels whose rows sum to 1).
  """
  x = _as_images(x)
  y_onehot = jnp.asarray(y_onehot)
  if y_onehot.ndim != 2 or y_onehot.shape[0] != x.shape[0]:
    raise ValueError(f'y_onehot must have shape (N={x.shape[0]}, K), got '
                     f'{y_onehot.shape}')
  if not alpha > 0:
    raise ValueError(f'alpha={alpha} must be > 0 (alpha -> 0 means no mixing)')
  k_lam, k_perm = jax.random.split(key)
  lam = jax.random.beta(k_lam, alpha, alpha)
  perm = jax.random.permutation(k_perm, x.shape[0])
  x_mix = (lam * x + (1 - lam) * x[perm]).astype(x.dtype)
  y_mix = (lam * y_onehot + (1 - lam) * y_onehot[perm]).astype(y_onehot.dtype)
  return x_mix, y_mix
