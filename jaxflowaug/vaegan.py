"""VAE-GAN: the approximate-coding generator of Stutz et al. (CVPR 2019), the paper's baseline.

An encoder q(z|x) = N(mu(x), diag(exp(logvar(x)))), a decoder x = G(z) with a N(0, I) prior
on z in R^d, and a discriminator D(x) -> logit that tells training images from decodes. Unlike
a flow, G(mu(x)) != x: the code is approximate, which is what the exact-vs-approximate ablation
(issue 8) measures. With `num_classes = C > 0` the module holds C independent VAE-GANs (submodules
`encoder_c`, `decoder_c`, `discriminator_c`), and example b goes through model y_b, as
Stutz et al.'s class-specific VAE-GANs; each is trained on its own class only (`grouped`).

Shapes: images (B, H, W, ch) float32 in [0, 1] with H and W divisible by 4; codes (B, d).

Training objective (`objective`), per example, averaged over the batch:
  L_G = BCE(x, G(z)) summed over pixels + beta * KL(q(z|x) || N(0, I))
        + gan_weight * [softplus(-D(G(z))) + softplus(-D(G(z_p)))],
  L_D = softplus(-D(x)) + softplus(D(G(z))) + softplus(D(G(z_p))),
with z = mu + exp(logvar / 2) * e (reparameterised), e, z_p ~ N(0, I). One scalar L_G + L_D is
returned whose gradient is (dL_G / d(encoder, decoder), dL_D / d discriminator): L_G sees the
discriminator's parameters through `stop_gradient`, L_D sees stopped decodes.
"""
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxflowaug.conv import Conv


def _downsample(x, width: int):
  """The encoder's and discriminator's trunk, called inside their `nn.compact` (its layers are
  theirs): conv 4x4/2 (width), conv 4x4/2 (2 width), dense 4 width; leaky ReLU 0.2.
  (B, H, W, ch) -> (B, 4 width)."""
  h = nn.leaky_relu(Conv(width, (4, 4), (2, 2))(x), 0.2)
  h = nn.leaky_relu(Conv(2 * width, (4, 4), (2, 2))(h), 0.2)
  return nn.leaky_relu(nn.Dense(4 * width)(h.reshape(h.shape[0], -1)), 0.2)


class Encoder(nn.Module):
  """x (B, H, W, ch) -> (mu, logvar), each (B, latent_dim): `_downsample`, dense 2 d."""
  latent_dim: int
  width: int

  @nn.compact
  def __call__(self, x):
    h = _downsample(x, self.width)  # first: its layers are named before the head's
    out = nn.Dense(2 * self.latent_dim)(h)
    return out[:, :self.latent_dim], out[:, self.latent_dim:]


class Decoder(nn.Module):
  """z (B, d) -> pixel logits (B, H, W, ch): dense 4 width, dense to (H/4, W/4, 2 width),
  [2x nearest upsampling, conv 3x3] to (H/2, W/2, width), then to (H, W, ch); leaky ReLU 0.2.
  (Upsample + conv rather than a transposed conv: no checkerboard, and the fast CPU conv.)"""
  image_shape: Tuple[int, int, int]
  width: int

  @nn.compact
  def __call__(self, z):
    h_, w_, ch = self.image_shape
    h = nn.leaky_relu(nn.Dense(4 * self.width)(z), 0.2)
    h = nn.leaky_relu(nn.Dense(h_ // 4 * w_ // 4 * 2 * self.width)(h), 0.2)
    h = h.reshape(z.shape[0], h_ // 4, w_ // 4, 2 * self.width)
    up = lambda t: jnp.repeat(jnp.repeat(t, 2, axis=1), 2, axis=2)
    h = nn.leaky_relu(Conv(self.width, (3, 3))(up(h)), 0.2)
    return Conv(ch, (3, 3))(up(h))


class Discriminator(nn.Module):
  """x (B, H, W, ch) -> logit (B,) that x is a training image: `_downsample`, dense 1."""
  width: int

  @nn.compact
  def __call__(self, x):
    h = _downsample(x, self.width)
    return nn.Dense(1)(h)[:, 0]


class VAEGAN(nn.Module):
  """Encoder, decoder and discriminator; class-agnostic, or C per-class models.

  Attributes:
    image_shape: (H, W, ch), H and W divisible by 4.
    latent_dim: d, the code size (Stutz et al.: 10 on Fashion-MNIST).
    width: channels of the first conv (the second has 2 width, the hidden dense 4 width).
    num_classes: 0 for one class-agnostic model; C for C per-class models, selected by label.
  """
  image_shape: Tuple[int, int, int]
  latent_dim: int = 10
  width: int = 32
  num_classes: int = 0

  def setup(self):
    h, w, _ = self.image_shape
    if h % 4 or w % 4:
      raise ValueError(f"VAEGAN needs image height and width divisible by 4; got "
                       f"{self.image_shape}.")
    if self.latent_dim < 1 or self.width < 1 or self.num_classes < 0:
      raise ValueError(f"VAEGAN needs latent_dim >= 1, width >= 1 and num_classes >= 0; got "
                       f"{self.latent_dim}, {self.width}, {self.num_classes}.")

    def nets(cls, *args):
      if not self.num_classes:
        return cls(*args)
      return [cls(*args) for _ in range(self.num_classes)]

    self.encoder = nets(Encoder, self.latent_dim, self.width)
    self.decoder = nets(Decoder, tuple(self.image_shape), self.width)
    self.discriminator = nets(Discriminator, self.width)

  def _run(self, nets, inputs, y):
    """nets(inputs); per-class: every model on the whole batch, row b taken from model y_b
    (C times the compute of one model, per-example independent)."""
    if not self.num_classes:
      return nets(inputs)
    if y is None:
      raise ValueError("A per-class VAEGAN (num_classes > 0) needs the labels y.")
    outs = [net(inputs) for net in nets]
    rows = jnp.arange(inputs.shape[0])
    return jax.tree.map(lambda *o: jnp.stack(o)[y, rows], *outs)

  def grouped(self, part: str, inputs):
    """Per-class training: model c on inputs[c] only, for a list of C class batches (1x the
    compute). `part` is 'encode', 'decode_logits', 'decode' or 'discriminate'."""
    if not self.num_classes or len(inputs) != self.num_classes:
      raise ValueError(f"grouped() needs a per-class VAEGAN and {self.num_classes} batches.")
    nets = {"encode": self.encoder, "decode_logits": self.decoder, "decode": self.decoder,
            "discriminate": self.discriminator}[part]
    outs = [net(x) for net, x in zip(nets, inputs)]
    return [jax.nn.sigmoid(o) for o in outs] if part == "decode" else outs

  def encode(self, x, y: Optional[jax.Array] = None):
    """(mu, logvar) of q(z|x), each (B, d)."""
    return self._run(self.encoder, x, y)

  def decode_logits(self, z, y: Optional[jax.Array] = None):
    """Pixel logits (B, H, W, ch) of G(z)."""
    return self._run(self.decoder, z, y)

  def decode(self, z, y: Optional[jax.Array] = None):
    """G(z) = sigmoid(decode_logits(z)), (B, H, W, ch) in (0, 1); differentiable in z."""
    return jax.nn.sigmoid(self.decode_logits(z, y))

  def discriminate(self, x, y: Optional[jax.Array] = None):
    """D(x), logits (B,)."""
    return self._run(self.discriminator, x, y)

  def __call__(self, x, y: Optional[jax.Array] = None):
    """Initialises every part: returns (mu, logvar, G(mu), D(x))."""
    mu, logvar = self.encode(x, y)
    return mu, logvar, self.decode(mu, y), self.discriminate(x, y)


def objective(model: VAEGAN, params, x, y, key, *, beta: float = 1.0, gan_weight: float = 1.0,
              grouped: bool = False):
  """L_G + L_D of the module doc for a batch x (B, H, W, ch) in [0, 1], labels y (B,).

  `grouped` (per-class models): x is class-major, rows [c B/C, (c+1) B/C) of class c, and each
  model runs on its own rows only (y unused); otherwise a per-class model runs every model on
  every row and picks by y (C times the compute).
  Returns (scalar, metrics) with metrics = {reconstruction (BCE per example), kl, gan_g,
  disc, disc_real_accuracy, disc_fake_accuracy}; the gradient of the scalar is dL_G for the
  encoder and decoder and dL_D for the discriminator.
  """
  k_z, k_prior = jax.random.split(key)
  groups = model.num_classes if grouped else 0
  if groups and x.shape[0] % groups:
    raise ValueError(f"grouped: the batch of {x.shape[0]} rows must hold {groups} equal groups.")

  def run(p, part, inputs):
    variables = {"params": p}
    if groups:
      outs = model.apply(variables, part, jnp.split(inputs, groups), method=model.grouped)
      return jax.tree.map(lambda *o: jnp.concatenate(o), *outs)
    return model.apply(variables, inputs, y if model.num_classes else None,
                       method=getattr(model, part))

  frozen_d = jax.lax.stop_gradient(params)  # the generator's view of D (only D is read)
  mu, logvar = run(params, "encode", x)
  z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(k_z, mu.shape)
  rec_logits = run(params, "decode_logits", z)
  fake = jax.nn.sigmoid(rec_logits)
  prior_fake = run(params, "decode", jax.random.normal(k_prior, mu.shape))

  axes = tuple(range(1, x.ndim))
  bce = jnp.sum(jnp.logaddexp(0.0, rec_logits) - x * rec_logits, axis=axes)
  kl = 0.5 * jnp.sum(mu ** 2 + jnp.exp(logvar) - 1.0 - logvar, axis=-1)
  gan_g = (jax.nn.softplus(-run(frozen_d, "discriminate", fake))
           + jax.nn.softplus(-run(frozen_d, "discriminate", prior_fake)))

  d_real = run(params, "discriminate", x)
  d_fake = run(params, "discriminate", jax.lax.stop_gradient(fake))
  d_prior = run(params, "discriminate", jax.lax.stop_gradient(prior_fake))
  disc = jax.nn.softplus(-d_real) + jax.nn.softplus(d_fake) + jax.nn.softplus(d_prior)

  loss_g = jnp.mean(bce + beta * kl + gan_weight * gan_g)
  loss_d = jnp.mean(disc)
  metrics = {"reconstruction": jnp.mean(bce), "kl": jnp.mean(kl), "gan_g": jnp.mean(gan_g),
             "disc": loss_d, "disc_real_accuracy": jnp.mean(d_real > 0),
             "disc_fake_accuracy": jnp.mean(jnp.concatenate([d_fake, d_prior]) < 0)}
  return loss_g + loss_d, metrics
