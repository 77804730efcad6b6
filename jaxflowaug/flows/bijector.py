"""Base classes shared by every flow layer and by the whole flows.

A *bijector* layer is a Linen module with

    forward(x, *cond) -> (y, logdet),   logdet = log|det dy/dx|, shape (B,)
    inverse(y, *cond) -> (x, logdet),   logdet = log|det dx/dy| = -forward logdet

where the determinant is over all non-batch axes of one example.

A *flow* maps an image batch x (B, H, W, C) to a latent z of the same shape with a
standard-normal prior N(0, I) on z, with the same pair convention: `forward(x, y) -> (z,
logdet)`, `inverse(z, y) -> (x, logdet)`; `encode` and `decode` return the array alone.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxflowaug.conv import SAVEABLE


def sum_except_batch(x):
  """Sums (B, ...) -> (B,) over every axis but the first."""
  return jnp.sum(x, axis=tuple(range(1, x.ndim)))


def standard_normal_log_prob(z):
  """log N(z; 0, I) per example: -0.5 * sum(z**2) - D/2 * log(2 pi), (B, ...) -> (B,)."""
  d = math.prod(z.shape[1:])
  return -0.5 * sum_except_batch(jnp.square(z)) - 0.5 * d * math.log(2 * math.pi)


class Bijector(nn.Module):
  """A Linen bijector: subclasses define `forward` and `inverse` (see module docstring)."""


class Flow(nn.Module):
  """A whole flow x (B, H, W, C) <-> z (same shape) with prior N(0, I) on z.

  Subclasses define `forward(x, y=None, dequantize=False) -> (z, log|det dz/dx|)`,
  `inverse(z, y=None) -> (x, log|det dx/dz|)` (the negated forward logdet at the matching
  point; both (B,)) and `log_prob`.
  """

  def encode(self, x, y=None):
    """x (B, H, W, C) -> z (B, H, W, C): `forward` without dequantisation or logdet."""
    return self.forward(x, y)[0]

  def decode(self, z, y=None):
    """z (B, H, W, C) -> x (B, H, W, C): `inverse` without the logdet."""
    return self.inverse(z, y)[0]

  def bits_per_dim(self, x, y=None, dequantize=True):
    """Discrete-data bits/dim of 8-bit images x, (B, H, W, C) -> (B,).

    bpd = -(log_prob(x) - D log 256) / (D log 2), D = H*W*C, with `log_prob` the log-density
    of the dequantised image in [0, 1]^D (each 8-bit level owns a bin of width 1/256).
    With `dequantize=True` (rng stream 'dequant') this is a one-sample estimate of the
    usual upper bound on the negative log-likelihood of the discrete data.
    """
    d = math.prod(x.shape[1:])
    log_p = self.log_prob(x, y, dequantize)
    return -(log_p - d * math.log(256.0)) / (d * math.log(2.0))


def check_choice(name, value, choices):
  """Raises ValueError naming `name` unless value is one of `choices`."""
  if value not in choices:
    raise ValueError(f'{name}={value!r}; use one of {tuple(choices)}.')


def check_int(name, value, minimum):
  """Raises ValueError naming `name` unless value is an int >= minimum."""
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f'{name}={value!r}; it must be an integer >= {minimum}.')


# What the backward pass of a scanned step keeps from its forward pass (`scan_layers`' remat).
REMAT = {
    'none': None,                                    # every intermediate
    'dots': jax.checkpoint_policies.save_from_both_policies(  # matmul/conv outputs (also
        jax.checkpoint_policies.dots_saveable,                  # oneDNN's, by name); element-
        jax.checkpoint_policies.save_only_these_names(SAVEABLE)),  # wise work redone
    'full': jax.checkpoint_policies.nothing_saveable,  # only the step's input; one more forward
}


def check_remat(remat):
  """Raises ValueError unless `remat` is a key of `REMAT`."""
  check_choice('remat', remat, tuple(REMAT))


def scan_layers(body, layer, x, *args, length, reverse, in_axes, remat='dots'):
  """Applies `body(layer, x, *args) -> (x, logdet)` `length` times with jax.lax.scan.

  `layer`'s variables ('params' and 'consts') get a leading axis of size `length`, one slice
  per application, so compile time does not grow with depth. `in_axes` says, per entry of
  `args`, `flax.linen.broadcast` (the same every time) or 0 (scanned over its leading axis).
  `reverse=True` runs the slices from last to first, as an inverse needs.

  `remat` (a key of `REMAT`, validated by the flows' `check_remat`) chooses what the backward pass keeps of each application
  (`nn.remat` with that policy); the gradients are the same. 'dots' keeps the matmul and
  convolution outputs and recomputes the element-wise ops from them: on XLA:CPU the stacked
  per-step residuals of a scan are zero-filled and copied in and out, so storing fewer of
  them made the Glow 3x32x512 train step ~8-15% faster than 'none' (`benchmarks`), with less
  memory. 'full' keeps only each step's input: activation memory of one step instead of
  `length`, for one more forward pass.
  Returns (x, summed logdet (B,)).
  """
  if REMAT[remat] is not None:
    body = nn.remat(body, policy=REMAT[remat])
  scanned = nn.scan(body, variable_axes={'params': 0, 'consts': 0},
                    split_rngs={'params': True}, in_axes=in_axes, length=length,
                    reverse=reverse)
  x, logdets = scanned(layer, x, *args)
  return x, jnp.sum(logdets, axis=0)
