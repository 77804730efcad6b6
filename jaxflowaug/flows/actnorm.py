"""Activation normalisation (Glow, Kingma & Dhariwal 2018, section 3.1)."""
import math

import jax.numpy as jnp

import flax.linen as nn

from jaxflowaug.flows.bijector import Bijector


class ActNorm(Bijector):
  """Per-channel affine map with data-dependent initialisation.

  For x of shape (B, ..., C) (channels last; typically (B, H, W, C)):

      forward:  y = (x + b) * exp(s)        logdet = N * sum_c s_c
      inverse:  x = y * exp(-s) - b         logdet = -N * sum_c s_c

  with b, s in R^C (params 'bias' and 'log_scale') and N the number of positions per
  example (H*W for images, 1 for (B, C) inputs).

  Initialisation: the first `forward` call under `init` sets b = -mean(x) and
  s = -log(std(x) + eps), statistics over every axis but the last, so that the init
  batch comes out with mean 0 and std 1 per channel. Both are ordinary params, so
  parameters that are loaded are used as they are and are never re-initialised.
  Initialising through `inverse` instead gives the identity (b = 0, s = 0).
  Not checked: a channel that is constant on the init batch gets s = -log(eps).

  Attributes:
    eps: added to the standard deviation at initialisation.
  """
  eps: float = 1e-6

  @nn.compact
  def _bias_and_log_scale(self, x, data_init):
    """Returns (b, s), each (C,); on initialisation from x's statistics if data_init."""
    axes = tuple(range(x.ndim - 1))
    channels = x.shape[-1]

    def bias_init(_):
      return -jnp.mean(x, axis=axes) if data_init else jnp.zeros((channels,), jnp.float32)

    bias = self.param('bias', bias_init)

    def log_scale_init(_):
      if not data_init:
        return jnp.zeros((channels,), jnp.float32)
      return -jnp.log(jnp.std(x + bias, axis=axes) + self.eps)

    return bias, self.param('log_scale', log_scale_init)

  def _logdet(self, x, log_scale):
    positions = math.prod(x.shape[1:-1])
    return jnp.full((x.shape[0],), positions * jnp.sum(log_scale))

  def forward(self, x):
    """y = (x + b) * exp(s); returns (y, logdet (B,))."""
    bias, log_scale = self._bias_and_log_scale(x, data_init=True)
    return (x + bias) * jnp.exp(log_scale), self._logdet(x, log_scale)

  def inverse(self, y):
    """x = y * exp(-s) - b; returns (x, -logdet (B,))."""
    bias, log_scale = self._bias_and_log_scale(y, data_init=False)
    return y * jnp.exp(-log_scale) - bias, -self._logdet(y, log_scale)
