"""Channel-wise affine and additive coupling (RealNVP / Glow) with a CNN conditioner."""
import jax
import jax.numpy as jnp

import flax.linen as nn

from jaxflowaug.conv import Conv
from jaxflowaug.flows.actnorm import ActNorm
from jaxflowaug.flows.bijector import Bijector
from jaxflowaug.flows.bijector import check_choice
from jaxflowaug.flows.bijector import check_int
from jaxflowaug.flows.bijector import sum_except_batch

KINDS = ('affine', 'additive')
SCALE_FNS = ('tanh', 'sigmoid')


# OpenAI Glow's `Conv2dZeros` (and the authors' `NN`, flpert/models/glow/coupling.py):
# the zero-initialised output conv is followed by a learned per-channel scale exp(3 logs).
LOGSCALE_FACTOR = 3.0


class CouplingNet(nn.Module):
  """Conditioner: conv3x3 -> ActNorm -> ReLU -> conv1x1 -> ActNorm -> ReLU -> conv3x3 -> scale.

  (B, H, W, C_in) -> (B, H, W, out_channels). The last conv (kernel W, bias c) is
  zero-initialised and its output is scaled per channel, out = (W * h + c) exp(3 logs) with
  `logs` (out_channels,) learned from 0 (Glow's `Conv2dZeros`), so the output is 0 at init.
  With `num_classes > 0`, a learned class embedding (B, E) is broadcast over H, W and
  concatenated to the input channels.

  Attributes:
    hidden_channels: width of the two hidden layers.
    out_channels: output channels.
    num_classes: 0 for an unconditional net.
    class_embed_dim: E, the class embedding size (used when num_classes > 0).
  """
  hidden_channels: int
  out_channels: int
  num_classes: int = 0
  class_embed_dim: int = 16

  @nn.compact
  def __call__(self, x, y=None):
    if self.num_classes:
      emb = nn.Embed(self.num_classes, self.class_embed_dim, name='class_embed')(y)
      emb = jnp.broadcast_to(emb[:, None, None, :], x.shape[:3] + emb.shape[-1:])
      x = jnp.concatenate([x, emb], axis=-1)
    h = Conv(self.hidden_channels, (3, 3), use_bias=False, name='conv_in')(x)
    h = nn.relu(ActNorm(name='norm_in').forward(h)[0])
    h = Conv(self.hidden_channels, (1, 1), use_bias=False, name='conv_mid')(h)
    h = nn.relu(ActNorm(name='norm_mid').forward(h)[0])
    out = Conv(self.out_channels, (3, 3), kernel_init=nn.initializers.zeros,
               name='conv_out')(h)
    logs = self.param('logs', nn.initializers.zeros, (self.out_channels,), jnp.float32)
    return out * jnp.exp(LOGSCALE_FACTOR * logs)


class Coupling(Bijector):
  """Coupling on the channel axis of x (B, H, W, C): x = [x_a, x_b] with x_a = x[..., :C//2].

  The conditioner `CouplingNet(x_a[, label])` gives a shift t and, for 'affine', a raw scale r
  (each with x_b's channel count); x_a passes through unchanged:

      forward:  y_b = (x_b + t) * exp(s)      logdet = sum(s)
      inverse:  x_b = y_b * exp(-s) - t       logdet = -sum(s)

  with the log-scale s
    * kind='affine', scale_fn='tanh' (the authors' code): s = scale * tanh(r), `scale` a
      learned per-channel param initialised to 1, so |s| <= |scale|;
    * kind='affine', scale_fn='sigmoid' (Glow): s = log sigmoid(r + 2);
    * kind='additive' (NICE): s = 0, logdet = 0.
  The conditioner's last layer is zero-initialised, so at init the layer is the identity for
  'tanh' and 'additive' and a fixed rescaling by sigmoid(2) for 'sigmoid'.

  Attributes:
    hidden_channels: conditioner width.
    kind: 'affine' or 'additive'.
    scale_fn: 'tanh' or 'sigmoid' (for 'affine').
    num_classes: > 0 for a class-conditional layer; then `label` (B,) int is required.
    class_embed_dim: class embedding size.

  Raises:
    ValueError: for an unknown `kind` or `scale_fn`, a non-positive size, or inputs with
      fewer than 2 channels.
  """
  hidden_channels: int
  kind: str = 'affine'
  scale_fn: str = 'tanh'
  num_classes: int = 0
  class_embed_dim: int = 16

  def __post_init__(self):
    check_choice('kind', self.kind, KINDS)
    check_choice('scale_fn', self.scale_fn, SCALE_FNS)
    check_int('hidden_channels', self.hidden_channels, 1)
    check_int('num_classes', self.num_classes, 0)
    check_int('class_embed_dim', self.class_embed_dim, 1)
    super().__post_init__()

  @nn.compact
  def _shift_and_log_scale(self, x_a, channels_b, label):
    """Returns (t, s), each (B, H, W, C_b), computed from the unchanged half x_a."""
    affine = self.kind == 'affine'
    out = CouplingNet(self.hidden_channels, (2 if affine else 1) * channels_b,
                      self.num_classes, self.class_embed_dim, name='net')(x_a, label)
    if not affine:
      return out, jnp.zeros_like(out)
    shift, raw = out[..., :channels_b], out[..., channels_b:]
    if self.scale_fn == 'tanh':
      scale = self.param('scale', nn.initializers.ones, (channels_b,), jnp.float32)
      return shift, scale * jnp.tanh(raw)
    return shift, jax.nn.log_sigmoid(raw + 2.0)

  def _split(self, x):
    if x.shape[-1] < 2:
      raise ValueError(f'Coupling needs at least 2 channels, got x.shape={x.shape}.')
    half = x.shape[-1] // 2
    return x[..., :half], x[..., half:]

  def forward(self, x, label=None):
    """y = [x_a, (x_b + t) exp(s)]; returns (y, sum(s) (B,))."""
    x_a, x_b = self._split(x)
    shift, log_scale = self._shift_and_log_scale(x_a, x_b.shape[-1], label)
    y_b = (x_b + shift) * jnp.exp(log_scale)
    return jnp.concatenate([x_a, y_b], axis=-1), sum_except_batch(log_scale)

  def inverse(self, y, label=None):
    """x = [y_a, y_b exp(-s) - t]; returns (x, -sum(s) (B,))."""
    y_a, y_b = self._split(y)
    shift, log_scale = self._shift_and_log_scale(y_a, y_b.shape[-1], label)
    x_b = y_b * jnp.exp(-log_scale) - shift
    return jnp.concatenate([y_a, x_b], axis=-1), -sum_except_batch(log_scale)
