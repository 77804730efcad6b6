"""Dequantisation and logit preprocessing of 8-bit images (RealNVP, section 4.1)."""
import math

import jax
import jax.numpy as jnp

from jaxflowaug.flows.bijector import Bijector
from jaxflowaug.flows.bijector import sum_except_batch


def check_logit_bound(logit_bound):
  """Raises ValueError unless 0 < logit_bound < 1."""
  if not 0.0 < logit_bound < 1.0:
    raise ValueError(f'logit_bound={logit_bound} must be in (0, 1); the authors use 0.9.')


def authors_decoded(x, logit_bound):
  """What the authors' sigmoid-only decode returns for the latent of images x (B, ...) in
  [0, 1] (u = 1/2): p = a + b (255 x + 1/2) / 256, a = (1 - b) / 2, b = `logit_bound`; an
  affine contrast compression of x (for b = 0.9, about 0.05 + 0.9 x)."""
  return (1.0 - logit_bound) / 2.0 + logit_bound * (255.0 * x + 0.5) / 256.0


class Preprocess(Bijector):
  """Maps images x in [0, 1] (pixel k/255) to logit space, exactly invertibly.

  With bound b = `logit_bound` and a = (1 - b) / 2 (the authors' b = 0.9, a = 0.05):

      forward:  y = (255 x + u) / 256,   p = a + b y,   v = logit(p) = log p - log(1 - p)
                logdet = sum_i [log(255/256) + log b - log p_i - log(1 - p_i)]
      inverse:  p = sigmoid(v),   y = (p - a) / b,   x = (256 y - 1/2) / 255
                logdet = -(the forward formula at the same p)

  u ~ U[0, 1) per entry when `dequantize=True` (rng stream 'dequant'), else u = 1/2 (the bin
  centre); the inverse always uses u = 1/2, so inverse(forward(x)) == x for the deterministic
  forward. logdet is the exact log|det dv/dx| for the given u. Since p in (0, 1) for any v,
  a decoded latent that did not come from an image gives x in about (-0.058, 1.058) for
  b = 0.9, outside [0, 1]; clip it if needed.

  With `authors_decode=True` the inverse returns p = sigmoid(v) = a + b y like the authors'
  code (a 10% contrast compression plus the dequantisation offset, see PAPER.md) with
  logdet = sum log(p (1 - p)), the log-det of that map; it is then not the inverse of forward:
  inverse(forward(x)) = `authors_decoded(x, b)`.

  Attributes:
    logit_bound: b in (0, 1).
    authors_decode: reproduce the authors' sigmoid-only decode.

  Raises:
    ValueError: if `logit_bound` is not in (0, 1).
  """
  logit_bound: float = 0.9
  authors_decode: bool = False

  def __post_init__(self):
    check_logit_bound(self.logit_bound)
    super().__post_init__()

  def _offset(self):
    return (1.0 - self.logit_bound) / 2.0

  def _logdet(self, log_p, log_1mp):
    """sum[log(255/256) + log b - log p - log(1-p)]: the forward log-det, (B,)."""
    const = math.log(255.0 / 256.0) + math.log(self.logit_bound)
    return sum_except_batch(const - log_p - log_1mp)

  def forward(self, x, dequantize=False):
    """x (B, ...) in [0, 1] -> (v = logit(a + b (255 x + u) / 256), logdet (B,))."""
    if dequantize:
      u = jax.random.uniform(self.make_rng('dequant'), x.shape, x.dtype)
    else:
      u = 0.5
    p = self._offset() + self.logit_bound * (255.0 * x + u) / 256.0
    log_p, log_1mp = jnp.log(p), jnp.log1p(-p)
    return log_p - log_1mp, self._logdet(log_p, log_1mp)

  def inverse(self, v):
    """v (B, ...) -> (x = (256 (sigmoid(v) - a) / b - 1/2) / 255, logdet (B,))."""
    log_p, log_1mp = jax.nn.log_sigmoid(v), jax.nn.log_sigmoid(-v)
    p = jax.nn.sigmoid(v)
    if self.authors_decode:
      return p, sum_except_batch(log_p + log_1mp)
    x = (256.0 * (p - self._offset()) / self.logit_bound - 0.5) / 255.0
    return x, -self._logdet(log_p, log_1mp)
