"""Multi-scale Glow (Kingma & Dhariwal 2018) with every latent packed into one image-shaped z."""
import math

import jax.numpy as jnp

import flax.linen as nn

from jaxflowaug.flows.actnorm import ActNorm
from jaxflowaug.flows.bijector import Bijector
from jaxflowaug.flows.bijector import Flow
from jaxflowaug.flows.bijector import check_choice
from jaxflowaug.flows.bijector import check_int
from jaxflowaug.flows.bijector import check_remat
from jaxflowaug.flows.bijector import scan_layers
from jaxflowaug.flows.bijector import standard_normal_log_prob
from jaxflowaug.flows.conv1x1 import DECOMPOSITIONS
from jaxflowaug.flows.conv1x1 import InvertibleConv1x1
from jaxflowaug.flows.coupling import KINDS
from jaxflowaug.flows.coupling import SCALE_FNS
from jaxflowaug.flows.coupling import Coupling
from jaxflowaug.flows.preprocess import Preprocess
from jaxflowaug.flows.preprocess import check_logit_bound
from jaxflowaug.flows.squeeze import squeeze
from jaxflowaug.flows.squeeze import unsqueeze


class GlowStep(Bijector):
  """One step of flow: ActNorm -> invertible 1x1 conv -> coupling, on (B, H, W, C).

      forward:  y = coupling(conv1x1(actnorm(x)), label)   logdet = sum of the three
      inverse:  the three inverses in reverse order          logdet = -forward logdet

  Attributes: as the same-named `Glow` attributes (`coupling` is `Coupling.kind`,
  `permutation` is `InvertibleConv1x1.decomposition`).
  """
  hidden_channels: int
  coupling: str = 'affine'
  scale_fn: str = 'tanh'
  permutation: str = 'plain'
  num_classes: int = 0
  class_embed_dim: int = 16

  def setup(self):
    self.norm = ActNorm()
    self.mixing = InvertibleConv1x1(self.permutation)
    self.coupling_layer = Coupling(self.hidden_channels, self.coupling, self.scale_fn,
                                   self.num_classes, self.class_embed_dim)

  def forward(self, x, label=None):
    """Returns (step(x), logdet (B,))."""
    x, ld_norm = self.norm.forward(x)
    x, ld_mixing = self.mixing.forward(x)
    x, ld_coupling = self.coupling_layer.forward(x, label)
    return x, ld_norm + ld_mixing + ld_coupling

  def inverse(self, y, label=None):
    """Returns (step^{-1}(y), logdet (B,))."""
    y, ld_coupling = self.coupling_layer.inverse(y, label)
    y, ld_mixing = self.mixing.inverse(y)
    y, ld_norm = self.norm.inverse(y)
    return y, ld_norm + ld_mixing + ld_coupling


def _split(h):
  half = h.shape[-1] // 2
  return h[..., :half], h[..., half:]


class Glow(Flow):
  """Multi-scale Glow on images x (B, H, W, C) in [0, 1]; z has the shape of x.

  forward: v = Preprocess(x) (dequantise + logit, see `Preprocess`); then for level
  l = 0..L-1: h = squeeze(h) (channels x4); K `GlowStep`s; for l < L-1 split the channels
  in half, h = first half goes on, z_l = second half is a latent. The latents are packed back
  in reverse, h = unsqueeze(concat([h, z_l])), into one z of x's shape, so one norm covers
  every scale and nothing is resampled on the inverse (the authors' layout; no split prior).
  The prior is N(0, I) on all of z. logdet = log|det dz/dx| (B,) includes the preprocessing.

  The K steps of a level run under `nn.scan` (params stacked on a leading axis of size K,
  the inverse scanned in reverse), so compile time does not depend on K.

  Variables: 'params', plus 'consts' (the fixed permutation and signs) when
  permutation='lu'; keep both in checkpoints, train only 'params'. `flow.init(key, x,
  method=Glow.forward)` runs ActNorm's data-dependent init on the batch x.

  Attributes:
    num_levels: L >= 1; H and W must be divisible by 2**L.
    num_steps: K >= 1 steps per level.
    hidden_channels: coupling-net width (authors: 512).
    num_classes: > 0 for a class-conditional flow (labels (B,) int required), else 0.
    coupling: 'affine' or 'additive'.
    scale_fn: 'tanh' (authors: s = scale * tanh(r)) or 'sigmoid' (Glow: sigmoid(r + 2)).
    permutation: 1x1 conv parameterisation, 'plain' (authors) or 'lu' (Glow).
    logit_bound: preprocessing bound b in (0, 1) (authors: 0.9).
    authors_decode: if True, the inverse ends in sigmoid only (see `Preprocess`).
    class_embed_dim: class embedding size of each coupling net (num_classes > 0).
    remat: what the backward pass keeps of each step: 'dots' (matmul outputs; the
      fastest on CPU), 'none' (everything) or 'full' (the step's input; least memory,
      one more forward). See `scan_layers`.

  Raises:
    ValueError: for an invalid attribute (at construction) or input (at call).
  """
  num_levels: int
  num_steps: int
  hidden_channels: int
  num_classes: int = 0
  coupling: str = 'affine'
  scale_fn: str = 'tanh'
  permutation: str = 'plain'
  logit_bound: float = 0.9
  authors_decode: bool = False
  class_embed_dim: int = 16
  remat: str = 'dots'

  def __post_init__(self):
    check_int('num_levels', self.num_levels, 1)
    check_int('num_steps', self.num_steps, 1)
    check_int('hidden_channels', self.hidden_channels, 1)
    check_int('num_classes', self.num_classes, 0)
    check_int('class_embed_dim', self.class_embed_dim, 1)
    check_choice('coupling', self.coupling, KINDS)
    check_choice('scale_fn', self.scale_fn, SCALE_FNS)
    check_choice('permutation', self.permutation, DECOMPOSITIONS)
    check_logit_bound(self.logit_bound)
    check_remat(self.remat)
    super().__post_init__()

  def setup(self):
    self.preprocess = Preprocess(self.logit_bound, self.authors_decode)
    self.levels = [
        GlowStep(self.hidden_channels, self.coupling, self.scale_fn, self.permutation,
                 self.num_classes, self.class_embed_dim)
        for _ in range(self.num_levels)]

  def _check_inputs(self, x, y, name):
    """Validates an image-shaped input `name` (x or z) and the labels y."""
    if x.ndim != 4:
      raise ValueError(f'{name} must be (B, H, W, C), got {name}.shape={x.shape}.')
    factor = 2 ** self.num_levels
    if x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(f'{name}.shape={x.shape}: H and W must be divisible by '
                       f'2**num_levels={factor}; crop or pad, or use fewer levels.')
    params = self.variables.get('params', {})
    if 'levels_0' in params:
      channels = params['levels_0']['norm']['bias'].shape[-1] // 4
      if x.shape[-1] != channels:
        raise ValueError(f'{name}.shape={x.shape} has {x.shape[-1]} channels but the flow '
                         f'was initialised for {channels}.')
    if self.num_classes and (y is None or y.shape != x.shape[:1]
                             or not jnp.issubdtype(y.dtype, jnp.integer)):
      raise ValueError(f'num_classes={self.num_classes}: pass integer labels y of shape '
                       f'({x.shape[0]},), got '
                       f'{None if y is None else (y.shape, y.dtype)}.')
    if not self.num_classes and y is not None:
      raise ValueError('num_classes=0: this flow is unconditional, pass y=None.')

  def _steps(self, level, h, y, inverse):
    step = GlowStep.inverse if inverse else GlowStep.forward
    return scan_layers(step, level, h, y, length=self.num_steps, reverse=inverse,
                       in_axes=nn.broadcast, remat=self.remat)

  def forward(self, x, y=None, dequantize=False):
    """x (B, H, W, C) in [0, 1] -> (z (B, H, W, C), logdet (B,)).

    `dequantize=True` adds uniform dequantisation noise (rng stream 'dequant').
    """
    self._check_inputs(x, y, 'x')
    h, logdet = self.preprocess.forward(x, dequantize)
    latents = []
    for index, level in enumerate(self.levels):
      h, level_logdet = self._steps(level, squeeze(h), y, inverse=False)
      logdet = logdet + level_logdet
      if index < self.num_levels - 1:
        h, z_level = _split(h)
        latents.append(z_level)
    h = unsqueeze(h)
    for z_level in reversed(latents):
      h = unsqueeze(jnp.concatenate([h, z_level], axis=-1))
    return h, logdet

  def inverse(self, z, y=None):
    """z (B, H, W, C) -> (x (B, H, W, C), log|det dx/dz| (B,)); exact inverse of forward."""
    self._check_inputs(z, y, 'z')
    h, latents = z, []
    for _ in range(self.num_levels - 1):
      h, z_level = _split(squeeze(h))
      latents.append(z_level)
    h = squeeze(h)
    logdet = jnp.zeros((z.shape[0],), z.dtype)
    for index in reversed(range(self.num_levels)):
      if index < self.num_levels - 1:
        h = jnp.concatenate([unsqueeze(h), latents[index]], axis=-1)
      h, level_logdet = self._steps(self.levels[index], h, y, inverse=True)
      logdet = logdet + level_logdet
    x, preprocess_logdet = self.preprocess.inverse(unsqueeze(h))
    return x, logdet + preprocess_logdet

  def log_prob(self, x, y=None, dequantize=False):
    """Log-density (B,) of the dequantised image y = (255 x + u) / 256 in [0, 1]^D.

    log p(y) = log N(z; 0, I) + log|det dz/dx| + D log(256/255), the last term because
    dx/dy = 256/255 per entry (u fixed). `dequantize=True` draws u (rng 'dequant').
    """
    z, logdet = self.forward(x, y, dequantize)
    d = math.prod(x.shape[1:])
    return standard_normal_log_prob(z) + logdet + d * math.log(256.0 / 255.0)
