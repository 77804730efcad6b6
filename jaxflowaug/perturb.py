"""Latent attacks (R-LA, A-LA) and image-space PGD around one projected-gradient core.

Notation: a batch `delta` has shape (B, ...); every norm below is taken per example over
all non-batch axes, ‖δ_b‖₂ = sqrt(Σ_i δ_{b,i}²), ‖δ_b‖_∞ = max_i |δ_{b,i}|. The ball is
B_ε = {δ : ‖δ_b‖ ≤ ε for every b} in the chosen norm ("linf" or "l2").

- R-LA:  x̃ = F⁻¹(z + Π(ε·n)),  n ~ N(0, I), no gradient.
- A-LA:  x̃ = F⁻¹(z + δᵏ),  δᵏ = PGD maximising L(F⁻¹(z + δ)) over B_ε, gradient through F⁻¹.
- Image PGD (Madry et al.):  x̃ = x + δᵏ, PGD maximising L(x + δ) over B_ε ∩ {x + δ ∈ [0, 1]}.
- Density filter: keep x̃ only where log p(x̃) ≥ τ, τ a percentile of the training data's
  log-density under the flow; otherwise reject it or shrink the perturbation.

All functions are pure and jittable. `eps`, `step_size` and `fraction` may be Python floats
or traced scalars; `steps`, `norm` and `method` are static Python values.
"""
import dataclasses
from typing import Any, Callable, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

NORMS = ('linf', 'l2')
METHODS = ('rla', 'ala')
ATTACKS = ('rla', 'ala', 'pgd')  # `Attack.method`: the latent attacks and image-space PGD
LABELS = ('pred', 'true')
# Floor for norms used as divisors, so that projecting or normalising a zero vector gives 0.
_TINY = 1e-12


def _check_norm(norm: str, name: str = '`norm`') -> None:
  if norm not in NORMS:
    raise ValueError(f'{name} must be one of {NORMS}; got {norm!r}.')


def _check_steps(steps, name: str = '`steps`') -> None:
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
    raise ValueError(f'{name} must be a Python int >= 1 (it is static); got {steps!r}.')


def _l2_norm(x: jnp.ndarray) -> jnp.ndarray:
  """Per-example l2 norm over all non-batch axes, shape (B, 1, ..., 1) for broadcasting."""
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim)), keepdims=True))


def project(delta: jnp.ndarray, eps, norm: str) -> jnp.ndarray:
  """Euclidean projection of each example of `delta` (B, ...) onto the ε-ball of `norm`.

  linf: Π(δ) = clip(δ, -ε, ε) elementwise.
  l2:   Π(δ_b) = δ_b / max(‖δ_b‖₂ / ε, 1), computed as δ_b · min(1, ε / max(‖δ_b‖₂, 1e-12)),
        which is 0 at δ_b = 0 and also for ε = 0 (no division by zero).
  Returns an array of the shape and dtype of `delta`.
  """
  _check_norm(norm)
  if norm == 'linf':
    return jnp.clip(delta, -eps, eps)
  return delta * jnp.minimum(1.0, eps / jnp.maximum(_l2_norm(delta), _TINY))


def random_latent(key: jax.Array, shape: Tuple[int, ...], eps, norm: str) -> jnp.ndarray:
  """R-LA noise Δ = Π(ε·n), n ~ N(0, I) of `shape` (B, ...), float32.

  linf clips each component to [-ε, ε]; l2 rescales each example onto the ε-sphere when
  ‖ε·n_b‖₂ > ε (almost surely for image-sized latents, where ‖n_b‖₂ ≈ sqrt(dim)).
  """
  return project(eps * jax.random.normal(key, shape, jnp.float32), eps, norm)


def uniform_start(key: jax.Array, shape: Tuple[int, ...], eps, norm: str) -> jnp.ndarray:
  """PGD's random start Δ⁰ = Π(u), u ~ U[-ε, ε]^dim of `shape` (B, ...), float32.

  For linf the projection is a no-op; for l2 it rescales u_b into the ε-ball.
  """
  u = jax.random.uniform(key, shape, jnp.float32, minval=-1.0, maxval=1.0)
  return project(eps * u, eps, norm)


def pgd(loss_fn: Callable[[jnp.ndarray], jnp.ndarray], delta0: jnp.ndarray, *, eps,
        step_size, steps: int, norm: str,
        bounds: Optional[Tuple[jnp.ndarray, jnp.ndarray]] = None,
        unroll: Union[int, bool] = False, carry: Any = None):
  """Projected gradient ascent on the scalar `loss_fn(delta)` within the ε-ball.

  For j = 1..steps, with g = ∇_δ loss_fn(δʲ⁻¹) (non-finite entries of g set to 0 so that
  one example whose loss is NaN cannot stall or poison the others):
    linf: δʲ = clip(δʲ⁻¹ + α·sign(g), -ε, ε)
    l2:   δʲ = Π(δʲ⁻¹ + α·g_b / ‖g_b‖₂)   (per example; a zero g_b gives a zero step)
  then, if `bounds = (lo, hi)` is given, δʲ = clip(δʲ, lo, hi) (image PGD uses
  (-x, 1 - x) so that x + δ stays in [0, 1]; with lo ≤ 0 ≤ hi this never leaves the ball).
  The loss should be summed (not averaged) over the batch: then g_b is the gradient of
  example b's own loss, independent of the others when the loss is per-example.
  Runs as one `jax.lax.fori_loop`, a while loop by default (`unroll=False`; True unrolls every
  step into straight-line code, an int that many steps per iteration). Since `jaxflowaug.conv`
  keeps XLA:CPU's slow in-loop backward convolutions out of every gradient, the loop is as fast
  as the unrolled code (10 steps through the Fashion-MNIST VAE-GAN decoder: 0.93-1.01 s vs
  0.97-1.05 s, see BENCHMARKS.md) and compiles faster; unrolling remains for other backends.

  Args:
    loss_fn: maps δ (shape of `delta0`) to a scalar to maximise.
    delta0: starting point (B, ...), assumed inside the ball (it is not projected).
    eps: ball radius ε ≥ 0.
    step_size: α > 0.
    steps: number of steps k, a Python int ≥ 1.
    norm: "linf" or "l2".
    bounds: optional (lo, hi) arrays broadcastable to δ, elementwise box on δ.
    unroll: `jax.lax.fori_loop`'s unroll (static).
    carry: optional state threaded through the k loss evaluations in order (e.g. a classifier's
      BatchNorm running statistics, updated by each train-mode pass): then
      `loss_fn(δ, carry) -> (loss, carry)`, no gradient through the carry.

  Returns:
    δᵏ, same shape and dtype as `delta0`; with `carry`, (δᵏ, the carry after the k passes).

  Raises:
    ValueError: for an unknown `norm` or `steps` < 1.
  """
  _check_norm(norm)
  _check_steps(steps)
  stateful = loss_fn if carry is not None else lambda d, c: (loss_fn(d), c)
  grad_fn = jax.grad(stateful, has_aux=True)

  def step(_, state):
    delta, c = state
    g, c = grad_fn(delta, c)
    g = jnp.where(jnp.isfinite(g), g, 0.0)
    if norm == 'linf':
      direction = jnp.sign(g)
    else:
      direction = g / jnp.maximum(_l2_norm(g), _TINY)
    delta = project(delta + step_size * direction, eps, norm)
    if bounds is not None:
      delta = jnp.clip(delta, *bounds)
    return delta.astype(delta0.dtype), c

  delta, c = jax.lax.fori_loop(0, steps, step, (delta0, () if carry is None else carry),
                               unroll=unroll)
  return delta if carry is None else (delta, c)


def image_pgd(loss_fn: Callable[[jnp.ndarray], jnp.ndarray], x: jnp.ndarray, key: jax.Array,
              *, eps, step_size, steps: int, norm: str, random_start: bool = True,
              unroll: Union[int, bool] = False, carry: Any = None):
  """Image-space PGD (Madry et al.): x_adv = x + δᵏ maximising `loss_fn(x + δ)`.

  δ⁰ = clip(uniform_start, -x, 1 - x) if `random_start` else 0; each step projects onto
  the ε-ball and then clips x + δ to [0, 1] (see `pgd` with bounds (-x, 1 - x)).

  Args:
    loss_fn: maps images (B, H, W, C) to a scalar, summed over the batch.
    x: clean images (B, H, W, C) in [0, 1].
    key: PRNG key for the random start.
    unroll, carry: passed to `pgd` (with `carry`, loss_fn(images, carry) -> (loss, carry)).

  Returns:
    x_adv (B, H, W, C) in [0, 1] with ‖x_adv_b - x_b‖ ≤ ε, no gradient (stop_gradient); with
    `carry`, (x_adv, carry).
  """
  bounds = (-x, 1.0 - x)
  if random_start:
    delta0 = jnp.clip(uniform_start(key, x.shape, eps, norm), *bounds)
  else:
    delta0 = jnp.zeros_like(x)
  out = pgd(lambda d, *c: loss_fn(x + d, *c), delta0, eps=eps, step_size=step_size,
            steps=steps, norm=norm, bounds=bounds, unroll=unroll, carry=carry)
  delta, carry = out if carry is not None else (out, None)
  x_adv = jax.lax.stop_gradient(jnp.clip(x + delta, 0.0, 1.0))
  return x_adv if carry is None else (x_adv, carry)


def _finite_or(x: jnp.ndarray, fallback: jnp.ndarray) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Replaces each example of `x` (B, ...) holding a NaN/inf by `fallback`'s -> (x, ok (B,))."""
  ok = jnp.all(jnp.isfinite(x), axis=tuple(range(1, x.ndim)))
  return jnp.where(ok.reshape((-1,) + (1,) * (x.ndim - 1)), x, fallback), ok


def latent_attack(decode: Callable[[jnp.ndarray], jnp.ndarray],
                  loss_fn: Callable[[jnp.ndarray], jnp.ndarray], z: jnp.ndarray,
                  key: jax.Array, *, method: str, eps, norm: str, x_clean: jnp.ndarray,
                  step_size=None, steps: Optional[int] = None, random_start: bool = True,
                  unroll: Union[int, bool] = False, carry: Any = None) -> tuple:
  """Perturbs latents `z` and decodes them: R-LA or A-LA.

  rla: δ = random_latent(key, z.shape, ε, norm); x̃ = F⁻¹(z + δ) without gradient
       (`step_size`, `steps`, `random_start` are unused).
  ala: δ⁰ = uniform_start(key, z.shape, ε, norm) if `random_start` else 0;
       δ = pgd(δ ↦ loss_fn(F⁻¹(z + δ)), δ⁰, ...) with the gradient through F⁻¹ = `decode`;
       x̃ = F⁻¹(z + δ).
  Inside the A-LA objective, a non-finite decoded example is replaced by its clean image
  (so a batch-coupled loss, e.g. BatchNorm in training mode, stays finite for the others).
  Finally x̃ is clipped to [0, 1], and every example whose decode is non-finite falls
  back to `x_clean` and is counted.

  Args:
    decode: F⁻¹, maps latents (B, ...) to images (B, H, W, C), e.g.
      `partial(flow.apply, flow_vars, method=Glow.decode)`.
    loss_fn: maps images (B, H, W, C) to a scalar, summed over the batch (A-LA only).
    z: latents F(x), shape (B, ...).
    key: PRNG key for the noise or the random start.
    method: "rla" or "ala".
    eps, norm: the ball (see `project`).
    x_clean: the clean images (B, H, W, C) in [0, 1], used as fallback.
    step_size, steps, random_start, unroll: PGD settings (A-LA only; see `pgd`).
    carry: optional state threaded through A-LA's k loss evaluations (see `pgd`); then
      loss_fn(images, carry) -> (loss, carry). R-LA calls no loss and returns it unchanged.

  Returns:
    (x_tilde (B, H, W, C) in [0, 1], num_nonfinite int32 scalar, delta of z's shape), plus
    the carry when one is given; x_tilde and delta carry no gradient (stop_gradient).

  Raises:
    ValueError: for an unknown `method` or `norm`, or A-LA without `step_size`/`steps`.
  """
  if method not in METHODS:
    raise ValueError(f'`method` must be one of {METHODS}; got {method!r}.')
  _check_norm(norm)
  if method == 'rla':
    delta = random_latent(key, z.shape, eps, norm)
  else:
    if step_size is None:
      raise ValueError('`step_size` is required for method="ala".')
    _check_steps(steps)
    if random_start:
      delta0 = uniform_start(key, z.shape, eps, norm)
    else:
      delta0 = jnp.zeros_like(z)
    out = pgd(lambda d, *c: loss_fn(_finite_or(decode(z + d), x_clean)[0], *c), delta0,
              eps=eps, step_size=step_size, steps=steps, norm=norm, unroll=unroll, carry=carry)
    delta, carry = out if carry is not None else (out, None)
  delta = jax.lax.stop_gradient(delta)
  x = jax.lax.stop_gradient(decode(z + delta))
  x, ok = _finite_or(jnp.clip(x, 0.0, 1.0), x_clean)
  result = (x, jnp.sum(~ok).astype(jnp.int32), delta)
  return result if carry is None else result + (carry,)


def mix(key: jax.Array, clean: jnp.ndarray, perturbed: jnp.ndarray, fraction) -> jnp.ndarray:
  """Per example b: out_b = perturbed_b with probability `fraction`, else clean_b.

  Uses u_b ~ U[0, 1) and takes perturbed_b iff u_b < fraction, so fraction = 1 gives
  `perturbed` and fraction = 0 gives `clean` exactly. Shapes (B, ...) -> (B, ...).

  Raises:
    ValueError: if the shapes differ, or a concrete `fraction` is outside [0, 1].
  """
  if clean.shape != perturbed.shape:
    raise ValueError(f'`clean` and `perturbed` must have the same shape; got {clean.shape} '
                     f'and {perturbed.shape}.')
  if isinstance(fraction, (int, float)) and not 0.0 <= fraction <= 1.0:
    raise ValueError(f'`fraction` must be in [0, 1]; got {fraction}.')
  take = jax.random.uniform(key, (clean.shape[0],)) < fraction
  return jnp.where(take.reshape((-1,) + (1,) * (clean.ndim - 1)), perturbed, clean)


DENSITY_MODES = ('reject', 'shrink')


def density_filter(log_prob: Callable[[jnp.ndarray], jnp.ndarray],
                   propose: Callable[[float], jnp.ndarray], x_clean: jnp.ndarray, threshold, *,
                   mode: str = 'reject', shrink_steps: int = 3,
                   x_full: Optional[jnp.ndarray] = None
                   ) -> Tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Keeps perturbed examples whose log-density is at least `threshold` (τ).

  `propose(t)` gives the batch perturbed at scale t of its perturbation (t = 1 the full one,
  e.g. F⁻¹(z + t δ) for a latent attack or x + t (x̃ - x) in image space); `x_full` may pass
  propose(1) when it is already computed. Per example b:
    reject: out_b = x̃_b(1) if log p(x̃_b(1)) ≥ τ else x_clean_b;
    shrink: t*_b = the largest t in (1, 1/2, ..., 2^-shrink_steps) with log p(x̃_b(t)) ≥ τ,
            out_b = x̃_b(t*_b), or x_clean_b (t*_b = 0) if no scale passes.
  A NaN log-density never passes. `log_prob` maps (B, ...) images to (B,) log-densities;
  examples must not interact in it (true of a flow).

  Returns:
    (out (B, ...), kept (B,) bool — a perturbed image was kept, scale t*_b (B,) float32).
  Raises:
    ValueError: for an unknown `mode` or `shrink_steps` < 0 with mode 'shrink'.
  """
  if mode not in DENSITY_MODES:
    raise ValueError(f'`mode` must be one of {DENSITY_MODES}; got {mode!r}.')
  scales = [1.0]
  if mode == 'shrink':
    if isinstance(shrink_steps, bool) or not isinstance(shrink_steps, int) or shrink_steps < 0:
      raise ValueError(f'`shrink_steps` must be an int >= 0; got {shrink_steps!r}.')
    scales = [2.0 ** -j for j in range(shrink_steps + 1)]
  out, scale = x_clean, jnp.zeros((x_clean.shape[0],), jnp.float32)
  for t in reversed(scales):  # smallest first: a larger passing scale overwrites it
    candidate = x_full if (t == 1.0 and x_full is not None) else propose(t)
    ok = log_prob(candidate) >= threshold
    out = jnp.where(ok.reshape((-1,) + (1,) * (out.ndim - 1)), candidate, out)
    scale = jnp.where(ok, t, scale)
  return out, scale > 0, scale


def _number(value, name: str, minimum: float, strict: bool) -> None:
  ok = (not isinstance(value, bool) and isinstance(value, (int, float, np.floating))
        and np.isfinite(value) and (value > minimum if strict else value >= minimum))
  if not ok:
    raise ValueError(f'{name}={value!r} must be a finite number {">" if strict else ">="} '
                     f'{minimum:g}.')


@dataclasses.dataclass(frozen=True)
class Attack:
  """One perturbation of a batch, as `perturb_batch` applies it (hashable: a static argument).

  method: 'rla' | 'ala' (in a latent code) | 'pgd' (image space); norm, eps: the ball;
  step_size, steps, random_start, unroll: PGD (A-LA and image PGD); labels: the attack's target,
  'pred' (the classifier's own argmax on the clean batch, which avoids label leaking) or 'true';
  fraction: the share of each batch replaced by perturbed images (`mix`); density_*: the
  density filter (`density_filter`; percentile 0 = off; the threshold is the caller's).
  `check()` validates the values; messages name the field as `{where}{field}`.
  """
  method: str
  norm: str
  eps: float
  step_size: float = 0.0
  steps: int = 1
  random_start: bool = True
  labels: str = 'pred'
  fraction: float = 1.0
  unroll: Union[int, bool] = False
  density_percentile: float = 0.0
  density_mode: str = 'reject'
  density_shrink_steps: int = 3

  @property
  def latent(self) -> bool:
    """Whether the attack perturbs a latent code (R-LA, A-LA) rather than the image."""
    return self.method in METHODS

  def static(self) -> 'Attack':
    """The attack with eps and step_size zeroed: attacks differing only in those (passed
    traced, see `with_sizes`) share one compilation."""
    return dataclasses.replace(self, eps=0.0, step_size=0.0)

  def with_sizes(self, eps, step_size) -> 'Attack':
    return dataclasses.replace(self, eps=eps, step_size=step_size)

  def check(self, where: str = '') -> 'Attack':
    """Returns the attack if its values are valid; else raises ValueError naming the field."""
    if self.method not in ATTACKS:
      raise ValueError(f'{where}method={self.method!r} is unknown; use one of {ATTACKS}.')
    if self.norm not in NORMS:
      raise ValueError(f'{where}norm={self.norm!r} is unknown; use one of {NORMS}.')
    _number(self.eps, f'{where}eps', 0.0, strict=False)
    if self.method != 'rla':
      _number(self.step_size, f'{where}step_size', 0.0, strict=True)
      _check_steps(self.steps, f'{where}steps')
    if self.labels not in LABELS:
      raise ValueError(f'{where}labels={self.labels!r}: use one of {LABELS}.')
    if not isinstance(self.fraction, (int, float)) or not 0.0 <= self.fraction <= 1.0:
      raise ValueError(f'{where}fraction={self.fraction!r} must be in [0, 1].')
    percentile = self.density_percentile
    if (isinstance(percentile, bool) or not isinstance(percentile, (int, float))
        or not 0 <= percentile < 100):
      raise ValueError(f'{where}density_percentile={percentile!r} must be in [0, 100) '
                       '(0 = no density filter).')
    if self.density_mode not in DENSITY_MODES:
      raise ValueError(f'{where}density_mode={self.density_mode!r}: use one of '
                       f'{DENSITY_MODES}.')
    shrink = self.density_shrink_steps
    if isinstance(shrink, bool) or not isinstance(shrink, int) or shrink < 0:
      raise ValueError(f'{where}density_shrink_steps={shrink!r} must be an int >= 0.')
    return self


def perturb_batch(key: jax.Array, x: jnp.ndarray, y: jnp.ndarray, attack: Attack,
                  logits: Callable[[jnp.ndarray, Any], Tuple[jnp.ndarray, Any]], *,
                  encode: Optional[Callable[[jnp.ndarray], jnp.ndarray]] = None,
                  decode: Optional[Callable[[jnp.ndarray], jnp.ndarray]] = None,
                  log_prob: Optional[Callable[[jnp.ndarray], jnp.ndarray]] = None,
                  z: Optional[jnp.ndarray] = None, threshold=0.0, carry: Any = ()
                  ) -> Tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, Any]:
  """Perturbs a batch of images as `attack` says, model-agnostic.

  With t the target (y, or argmax logits(x) for labels 'pred') and
  L(x') = Σ_b CE(logits(x')_b, t_b):
    pgd:      x̃ = image_pgd(L, x)
    rla, ala: x̃ = latent_attack(decode, L, z) with z = encode(x) (or the given `z`)
  then, with a density filter, x̃ = density_filter(log_prob, x̃(s), x, threshold) where x̃(s)
  scales the perturbation by s (x + s (x̃ - x) in image space, decode(z + s δ) in the latent);
  finally each example is x̃_b with probability `attack.fraction`, else x_b (`mix`).

  The classifier is stateful: `logits(images, carry) -> (logits, carry)`, and `carry` (e.g.
  BatchNorm running statistics that train-mode passes update) is threaded through its passes in
  order: the clean pass of labels 'pred' (PGD and A-LA only; R-LA calls no classifier), then
  the k attack passes.

  Args:
    key: PRNG key (split into the attack's and the mix's).
    x: clean images (B, H, W, C) in [0, 1]; y: int labels (B,).
    attack: the settings (static).
    logits: (images (B, H, W, C), carry) -> (logits (B, K), carry), differentiable in the
      images (the attacked classifier).
    encode, decode: the latent code, x -> z and z -> x (latent attacks; `encode` may be
      omitted when `z` is given).
    log_prob: images -> log-density (B,) (density filter only); threshold: τ.
    carry: the classifier's state before the clean pass.

  Returns:
    (x̃ (B, H, W, C) in [0, 1] without gradient, the int32 count of non-finite decodes that
    fell back to clean images, kept (B,) bool: which perturbed images the filter kept, the
    carry after every classifier pass).
  """
  attack_key, mix_key = jax.random.split(key)
  target = y
  if attack.method != 'rla' and attack.labels == 'pred':
    clean_logits, carry = logits(x, carry)
    target = jnp.argmax(clean_logits, -1)
  target = jax.lax.stop_gradient(target)

  def loss_fn(images, c):
    out, c = logits(images, c)
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(out, target)), c

  if attack.method == 'pgd':
    x_t, carry = image_pgd(loss_fn, x, attack_key, eps=attack.eps, step_size=attack.step_size,
                           steps=attack.steps, norm=attack.norm,
                           random_start=attack.random_start, unroll=attack.unroll, carry=carry)
    nonfinite = jnp.zeros((), jnp.int32)
    propose = lambda t: x + t * (x_t - x)
  else:
    z = jax.lax.stop_gradient(encode(x) if z is None else z)
    x_t, nonfinite, delta, carry = latent_attack(
        decode, loss_fn, z, attack_key, x_clean=x, method=attack.method, eps=attack.eps,
        step_size=attack.step_size, steps=attack.steps, norm=attack.norm,
        random_start=attack.random_start, unroll=attack.unroll, carry=carry)
    propose = lambda t: jnp.clip(decode(z + t * delta), 0.0, 1.0)
  kept = jnp.ones((x.shape[0],), bool)
  if attack.density_percentile > 0:
    x_t, kept, _ = density_filter(log_prob, propose, x, threshold, mode=attack.density_mode,
                                  shrink_steps=attack.density_shrink_steps, x_full=x_t)
  x_t = jax.lax.stop_gradient(x_t)
  return mix(mix_key, x, x_t, attack.fraction), nonfinite, kept, carry
