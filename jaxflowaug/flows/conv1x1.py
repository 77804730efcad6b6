"""Invertible 1x1 convolution (Glow, Kingma & Dhariwal 2018, section 3.2)."""
import math

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

import flax.linen as nn

from jaxflowaug.flows.bijector import Bijector
from jaxflowaug.flows.bijector import check_choice

DECOMPOSITIONS = ('plain', 'lu')


class InvertibleConv1x1(Bijector):
  """A learned channel mixing y[..., :] = x[..., :] @ W with W in R^{C x C} invertible.

      forward:  y = x W          logdet = N * log|det W|
      inverse:  x = y W^{-1}     logdet = -N * log|det W|

  N = positions per example (H*W for (B, H, W, C) input). Both parameterisations start from
  a random orthogonal W_0 (|det W_0| = 1, so the layer is volume-preserving at init):

  * 'plain': W is the param 'kernel'; log|det W| from `slogdet` (as the authors' code).
  * 'lu': W = P L (U + diag(sign(s) * exp(log|s|))) with P a permutation and sign(s) fixed
    at init (collection 'consts': 'permutation', 'sign_s'), L unit-lower-triangular (param
    'lower', strict lower part used), U strictly upper-triangular (param 'upper', strict upper
    part used) and log|s| the param 'log_abs_s'; log|det W| = sum(log|s|).

  The matrix products use HIGHEST precision so that inverse(forward(x)) == x to float32
  round-off on accelerators too. Not checked: that a trained 'plain' W stays well conditioned.

  Attributes:
    decomposition: 'plain' or 'lu'.

  Raises:
    ValueError: for an unknown `decomposition`.
  """
  decomposition: str = 'plain'

  def __post_init__(self):
    check_choice('decomposition', self.decomposition, DECOMPOSITIONS)
    super().__post_init__()

  @nn.compact
  def _weight_and_logabsdet(self, channels):
    """Returns (W (C, C), log|det W|)."""
    orthogonal = jax.nn.initializers.orthogonal()
    if self.decomposition == 'plain':
      w = self.param('kernel', orthogonal, (channels, channels), jnp.float32)
      return w, jnp.linalg.slogdet(w)[1]

    if self.is_initializing() and not self.has_variable('consts', 'permutation'):
      w0 = orthogonal(self.make_rng('params'), (channels, channels), jnp.float32)
      p0, l0, u0 = jsl.lu(w0)
      s0 = jnp.diag(u0)
    else:  # Loaded or applied: the initial values are never used.
      p0 = l0 = u0 = jnp.eye(channels)
      s0 = jnp.ones((channels,))
    permutation = self.variable('consts', 'permutation', lambda: p0).value
    sign_s = self.variable('consts', 'sign_s', lambda: jnp.sign(s0)).value
    lower = self.param('lower', lambda _: l0)
    upper = self.param('upper', lambda _: u0)
    log_abs_s = self.param('log_abs_s', lambda _: jnp.log(jnp.abs(s0)))
    eye = jnp.eye(channels)
    lower = jnp.tril(lower, -1) + eye
    upper = jnp.triu(upper, 1) + jnp.diag(sign_s * jnp.exp(log_abs_s))
    hi = jax.lax.Precision.HIGHEST
    w = jnp.matmul(permutation, jnp.matmul(lower, upper, precision=hi), precision=hi)
    return w, jnp.sum(log_abs_s)

  def _apply(self, x, w, logabsdet, sign):
    positions = math.prod(x.shape[1:-1])
    y = jnp.einsum('...i,ij->...j', x, w, precision=jax.lax.Precision.HIGHEST)
    return y, jnp.full((x.shape[0],), sign * positions * logabsdet)

  def forward(self, x):
    """y = x W over the last axis; returns (y, N log|det W| (B,))."""
    w, logabsdet = self._weight_and_logabsdet(x.shape[-1])
    return self._apply(x, w, logabsdet, 1.0)

  def inverse(self, y):
    """x = y W^{-1} over the last axis; returns (x, -N log|det W| (B,))."""
    w, logabsdet = self._weight_and_logabsdet(y.shape[-1])
    return self._apply(y, jnp.linalg.inv(w), logabsdet, -1.0)
