"""A trained `Glow` or `DenseFlow` as a `distrax.Bijector` and a `distrax.Transformed`.

Directions follow the flows: the bijector's forward is the flow's forward, image x ->
latent z, so the distribution over images is the base N(0, T^2 I) on z pushed through
`distrax.Inverse(as_bijector(...))` (distrax's `Transformed` maps base samples to data):

    log p(x) = log N(z; 0, T^2 I) + log|det dz/dx|,   z = flow.encode(x, y)
    sample:    x = flow.decode(T eps, y),   eps ~ N(0, I)

Shapes: the event is one image (H, W, C) (`event_ndims_in = 3`); any leading axes are batch
axes. The class labels y (conditional flows only) are a batch parameter: an int array whose
shape broadcasts against the batch axes of the inputs, e.g. y (B,) with x (B, H, W, C), or
with samples (n, B, H, W, C) for `sample_shape=(n,)`.

Everything is jittable; the bijector is a pytree (distrax's `Jittable`) whose leaves are the
variables and y, so it can be passed into `jax.jit` and `jax.vmap`.
"""
import distrax
import jax.numpy as jnp


class FlowBijector(distrax.Bijector):
  """A flow with fixed variables (and labels) as a distrax bijector on images.

      forward:  z = flow.forward(x, y)   log_det = log|det dz/dx|   (deterministic)
      inverse:  x = flow.inverse(z, y)   log_det = log|det dx/dz| = -forward log_det

  Inputs are (..., H, W, C); the leading axes are flattened into the flow's batch axis and
  restored, and log-dets have the leading shape (...). Not checked: that y broadcasts
  against those axes (jnp raises) and that the flow accepts the image size (it raises).
  """

  def __init__(self, flow, variables, y=None):
    """Binds `flow` (a `Glow` or `DenseFlow`) to its `variables` and optional labels y."""
    super().__init__(event_ndims_in=3, event_ndims_out=3)
    self._flow = flow
    self._variables = variables
    self._y = y

  def _apply(self, method, a):
    """Runs `method` (forward or inverse) on a (..., H, W, C) with y broadcast to (...)."""
    if a.ndim < 3:
      raise ValueError(f'expected images (..., H, W, C), got shape {a.shape}.')
    batch_shape = a.shape[:-3]
    y = None if self._y is None else jnp.broadcast_to(self._y, batch_shape).reshape(-1)
    out, log_det = self._flow.apply(self._variables, a.reshape((-1,) + a.shape[-3:]), y,
                                    method=method)
    return out.reshape(a.shape), log_det.reshape(batch_shape)

  def forward_and_log_det(self, x):
    """Image x -> (latent z, log|det dz/dx|)."""
    return self._apply(self._flow.forward, x)

  def inverse_and_log_det(self, z):
    """Latent z -> (image x, log|det dx/dz|)."""
    return self._apply(self._flow.inverse, z)


def as_bijector(flow, variables, y=None):
  """Returns `flow` (image -> latent) as a `distrax.Bijector` with the image as event.

  Args:
    flow: a `Glow` or `DenseFlow`.
    variables: its variables ('params' and, if any, 'consts').
    y: int labels for a conditional flow (see the module docstring for shapes), else None.
  """
  return FlowBijector(flow, variables, y)


def as_distribution(flow, variables, y=None, temperature=1.0, image_shape=None):
  """Returns the flow's model of images as a `distrax.Transformed`.

  The base is N(0, temperature^2 I) on latents of shape `image_shape`, with batch shape
  `y.shape` (or () without labels); the bijector is `distrax.Inverse(as_bijector(...))`.
  `sample(seed=key, sample_shape=(n,))` decodes temperature * N(0, I) to images
  (n, *y.shape, H, W, C); `log_prob` and `sample_and_log_prob` follow the module docstring.

  At temperature 1 `log_prob(x)` is `DenseFlow.log_prob(x, y)`, and `Glow.log_prob(x, y)
  - D log(256/255)` (D = H W C): Glow reports the density of the dequantised image
  (255 x + u) / 256, while this distribution is over x itself. Sampled images are not
  clipped to [0, 1].

  Args:
    flow, variables, y: as for `as_bijector`.
    temperature: scale T > 0 of the base normal.
    image_shape: (H, W, C); defaults to `flow.image_shape` (`DenseFlow`), needed for `Glow`.

  Raises:
    ValueError: without `image_shape` for a flow that has none, or for T <= 0.
  """
  image_shape = image_shape or getattr(flow, 'image_shape', None)
  if image_shape is None or len(tuple(image_shape)) != 3:
    raise ValueError(f'image_shape={image_shape}: pass the (H, W, C) of the images; '
                     f'{type(flow).__name__} does not store it.')
  if isinstance(temperature, (int, float)) and not temperature > 0:
    raise ValueError(f'temperature={temperature}; it must be > 0.')
  batch_shape = () if y is None else jnp.shape(y)
  base = distrax.Independent(
      distrax.Normal(jnp.zeros(batch_shape + tuple(image_shape)), temperature), 3)
  return distrax.Transformed(base, distrax.Inverse(as_bijector(flow, variables, y)))
