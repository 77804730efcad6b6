"""The paper's Fashion-MNIST flow: GLOW-style coupling blocks with dense subnets (FrEIA)."""
import math

import jax
import jax.numpy as jnp
import numpy as np

import flax.linen as nn

from jaxflowaug.flows.bijector import Bijector
from jaxflowaug.flows.bijector import Flow
from jaxflowaug.flows.bijector import check_int
from jaxflowaug.flows.bijector import check_remat
from jaxflowaug.flows.bijector import scan_layers
from jaxflowaug.flows.bijector import standard_normal_log_prob
from jaxflowaug.flows.bijector import sum_except_batch

# FrEIA's soft clamp: s -> clamp * 0.636 * atan(s / clamp), 0.636 ~ 2 / pi, so |s| < clamp.
_ATAN_FACTOR = 0.636


class DenseSubnet(nn.Module):
  """(B, D_in) [+ one-hot label (B, num_classes)] -> Dense(hidden) -> ReLU -> Dense(out).

  The last layer is zero-initialised (output 0 at init).
  """
  hidden: int
  out_features: int
  num_classes: int = 0

  @nn.compact
  def __call__(self, h, label=None):
    if self.num_classes:
      h = jnp.concatenate([h, jax.nn.one_hot(label, self.num_classes, dtype=h.dtype)], -1)
    h = nn.relu(nn.Dense(self.hidden, name='hidden')(h))
    return nn.Dense(self.out_features, kernel_init=nn.initializers.zeros, name='out')(h)


class GlowCouplingBlock(Bijector):
  """FrEIA's GLOWCouplingBlock on flat x (B, D): both halves transformed in turn.

  x = [x1, x2] with x1 = x[:, :D//2]. With subnets r2(.) -> (s2, t2), r1(.) -> (s1, t1)
  and the soft clamp c(s) = clamp * 0.636 * atan(s / clamp):

      forward:  y1 = exp(c(s2)) * x1 + t2,   (s2, t2) = r2(x2[, label])
                y2 = exp(c(s1)) * x2 + t1,   (s1, t1) = r1(y1[, label])
                logdet = sum c(s2) + sum c(s1)
      inverse:  x2 = (y2 - t1) * exp(-c(s1)),   x1 = (y1 - t2) * exp(-c(s2)),
                logdet = -(the same sum)

  Both subnets end with a zero-initialised layer, so the block is the identity at init.

  Attributes:
    hidden: subnet width (paper: 512).
    num_classes: > 0 to concatenate a one-hot label to each subnet input.
    clamp: soft-clamp bound on the log-scales (paper: 2.0).
  """
  hidden: int = 512
  num_classes: int = 0
  clamp: float = 2.0

  @nn.compact
  def _subnets(self, dim):
    """Returns (r1, r2) for flat inputs of size `dim`."""
    len1 = dim // 2
    len2 = dim - len1
    return (DenseSubnet(self.hidden, 2 * len2, self.num_classes, name='subnet1'),
            DenseSubnet(self.hidden, 2 * len1, self.num_classes, name='subnet2'))

  def _log_scale_and_shift(self, subnet, h, label):
    out = subnet(h, label)
    half = out.shape[-1] // 2
    log_scale = self.clamp * _ATAN_FACTOR * jnp.arctan(out[:, :half] / self.clamp)
    return log_scale, out[:, half:]

  def forward(self, x, label=None):
    """x (B, D) -> (y (B, D), logdet (B,))."""
    subnet1, subnet2 = self._subnets(x.shape[-1])
    x1, x2 = x[:, :x.shape[-1] // 2], x[:, x.shape[-1] // 2:]
    s2, t2 = self._log_scale_and_shift(subnet2, x2, label)
    y1 = jnp.exp(s2) * x1 + t2
    s1, t1 = self._log_scale_and_shift(subnet1, y1, label)
    y2 = jnp.exp(s1) * x2 + t1
    return jnp.concatenate([y1, y2], -1), sum_except_batch(s1) + sum_except_batch(s2)

  def inverse(self, y, label=None):
    """y (B, D) -> (x (B, D), logdet (B,))."""
    subnet1, subnet2 = self._subnets(y.shape[-1])
    y1, y2 = y[:, :y.shape[-1] // 2], y[:, y.shape[-1] // 2:]
    s1, t1 = self._log_scale_and_shift(subnet1, y1, label)
    x2 = (y2 - t1) * jnp.exp(-s1)
    s2, t2 = self._log_scale_and_shift(subnet2, x2, label)
    x1 = (y1 - t2) * jnp.exp(-s2)
    return jnp.concatenate([x1, x2], -1), -(sum_except_batch(s1) + sum_except_batch(s2))


def _coupling_then_permute(block, h, permutation, label):
  h, logdet = block.forward(h, label)
  return jnp.take(h, permutation, axis=1), logdet


def _unpermute_then_uncouple(block, h, permutation, label):
  h = jnp.take(h, jnp.argsort(permutation), axis=1)
  return block.inverse(h, label)


class DenseFlow(Flow):
  """Class-conditional flow on flattened images (the paper's Fashion-MNIST flow, FrEIA cINN).

  x (B, H, W, C) is flattened to (B, D), D = H*W*C; then `num_blocks` times
  [GlowCouplingBlock -> fixed random permutation of the D entries]; z is reshaped back to
  x's shape, prior N(0, I). The blocks run under `nn.scan` (params stacked on a leading
  axis). The permutations, (num_blocks, D) int32 drawn with numpy from `permutation_seed`,
  are stored in the non-trainable collection 'consts' (keep them in checkpoints, do not
  train them). Dequantisation is Gaussian input noise x + noise_std * eps (rng 'dequant');
  there is no logit transform, and the inverse is exact (decoded images are not clipped).

  Attributes:
    num_blocks: coupling blocks (paper: 12).
    hidden: subnet width (paper: 512).
    num_classes: classes for the one-hot conditioning (0: unconditional).
    clamp: soft clamp of the log-scales (paper: 2.0).
    noise_std: std of the dequantisation noise (paper: 0.1).
    image_shape: (H, W, C) of the inputs.
    permutation_seed: numpy seed of the fixed permutations.
    remat: what the backward pass keeps of each block: 'none' (everything; here as fast as
      'dots', which keeps the matmul outputs), or 'full' (the block's input; least memory,
      one more forward). See `scan_layers`.

  Raises:
    ValueError: for an invalid attribute (at construction) or input (at call).
  """
  num_blocks: int = 12
  hidden: int = 512
  num_classes: int = 10
  clamp: float = 2.0
  noise_std: float = 0.1
  image_shape: tuple = (28, 28, 1)
  permutation_seed: int = 0
  remat: str = 'none'

  def __post_init__(self):
    check_int('num_blocks', self.num_blocks, 1)
    check_int('hidden', self.hidden, 1)
    check_int('num_classes', self.num_classes, 0)
    check_int('permutation_seed', self.permutation_seed, 0)
    check_remat(self.remat)
    if not self.clamp > 0:
      raise ValueError(f'clamp={self.clamp}; it must be > 0 (paper: 2.0).')
    if not self.noise_std >= 0:
      raise ValueError(f'noise_std={self.noise_std}; it must be >= 0 (paper: 0.1).')
    if (len(tuple(self.image_shape)) != 3
        or not all(isinstance(n, int) and n > 0 for n in self.image_shape)
        or math.prod(self.image_shape) < 2):
      raise ValueError(f'image_shape={self.image_shape}; give (H, W, C) positive integers '
                       'with H*W*C >= 2, e.g. (28, 28, 1).')
    super().__post_init__()

  def setup(self):
    dim = math.prod(self.image_shape)

    def permutations():
      rng = np.random.default_rng(self.permutation_seed)
      return jnp.asarray(np.stack([rng.permutation(dim) for _ in range(self.num_blocks)]),
                         jnp.int32)

    self.permutations = self.variable('consts', 'permutations', permutations)
    self.block = GlowCouplingBlock(self.hidden, self.num_classes, self.clamp)

  def _check_inputs(self, x, y, name):
    if x.shape[1:] != tuple(self.image_shape):
      raise ValueError(f'{name}.shape={x.shape}; expected (B, *image_shape) with '
                       f'image_shape={tuple(self.image_shape)}.')
    if self.num_classes and (y is None or y.shape != x.shape[:1]
                             or not jnp.issubdtype(y.dtype, jnp.integer)):
      raise ValueError(f'num_classes={self.num_classes}: pass integer labels y of shape '
                       f'({x.shape[0]},), got {None if y is None else (y.shape, y.dtype)}.')
    if not self.num_classes and y is not None:
      raise ValueError('num_classes=0: this flow is unconditional, pass y=None.')

  def _blocks(self, h, y, inverse):
    body = _unpermute_then_uncouple if inverse else _coupling_then_permute
    return scan_layers(body, self.block, h, self.permutations.value, y,
                       length=self.num_blocks, reverse=inverse, in_axes=(0, nn.broadcast),
                       remat=self.remat)

  def forward(self, x, y=None, dequantize=False):
    """x (B, H, W, C) -> (z (B, H, W, C), logdet (B,)); noise added if `dequantize`."""
    self._check_inputs(x, y, 'x')
    h = x.reshape(x.shape[0], -1)
    if dequantize:
      h = h + self.noise_std * jax.random.normal(self.make_rng('dequant'), h.shape, h.dtype)
    h, logdet = self._blocks(h, y, inverse=False)
    return h.reshape(x.shape), logdet

  def inverse(self, z, y=None):
    """z (B, H, W, C) -> (x (B, H, W, C), log|det dx/dz| (B,)); exact inverse of forward."""
    self._check_inputs(z, y, 'z')
    h, logdet = self._blocks(z.reshape(z.shape[0], -1), y, inverse=True)
    return h.reshape(z.shape), logdet

  def log_prob(self, x, y=None, dequantize=False):
    """Log-density (B,) of the (noised, if `dequantize`) image x + noise_std * eps.

    log p = log N(z; 0, I) + log|det dz/dx|. Gaussian noise is not a uniform dequantiser,
    so `bits_per_dim` of this flow is the paper's nominal figure, not a bound.
    """
    z, logdet = self.forward(x, y, dequantize)
    return standard_normal_log_prob(z) + logdet
