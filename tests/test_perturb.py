"""Tests for jaxflowaug.perturb with a small invertible stand-in decoder x = sigmoid(A z + b)."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflowaug import perturb

LATENT = (2, 2, 3)          # per-example latent/image shape (H, W, C)
DIM = int(np.prod(LATENT))
NUM_CLASSES = 3


def _norms(x):
  flat = np.asarray(x).reshape((x.shape[0], -1))
  return np.linalg.norm(flat, axis=1), np.abs(flat).max(axis=1)


def _decoder_params(key):
  ka, kb = jax.random.split(key)
  a = jnp.eye(DIM) + 0.3 * jax.random.normal(ka, (DIM, DIM)) / np.sqrt(DIM)
  return {'a': a, 'b': 0.1 * jax.random.normal(kb, (DIM,))}


def _decode(params, z):
  """Stand-in for the flow's decode: x = sigmoid(A vec(z) + b), an invertible map into (0, 1)."""
  flat = z.reshape((z.shape[0], -1)) @ params['a'].T + params['b']
  return jax.nn.sigmoid(flat).reshape(z.shape)


def _per_example_loss(w, x, y):
  """Cross-entropy of the linear classifier logits = vec(x) W, shape (B,)."""
  logits = x.reshape((x.shape[0], -1)) @ w
  return -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)[:, 0]


def _setup(batch, seed=0):
  kd, kw, kz = jax.random.split(jax.random.key(seed), 3)
  dec = _decoder_params(kd)
  w = 3.0 * jax.random.normal(kw, (DIM, NUM_CLASSES))
  z = jax.random.normal(kz, (batch,) + LATENT)
  x = _decode(dec, z)
  y = jnp.argmax(x.reshape((batch, -1)) @ w, axis=1)   # the classifier's own predictions
  return dec, w, z, x, y


def test_project_l2_and_linf():
  delta = jax.random.normal(jax.random.key(0), (6,) + LATENT) * jnp.array(
      [0.1, 0.2, 1.0, 3.0, 10.0, 0.0])[:, None, None, None]
  eps = 1.5
  out = perturb.project(delta, eps, 'l2')
  l2_in, _ = _norms(delta)
  l2_out, _ = _norms(out)
  np.testing.assert_allclose(l2_out, np.minimum(l2_in, eps), rtol=1e-5)
  inside = l2_in <= eps
  np.testing.assert_allclose(out[inside], delta[inside], rtol=1e-6)
  # Outside points keep their direction.
  np.testing.assert_allclose(out[~inside] / l2_out[~inside, None, None, None],
                             delta[~inside] / l2_in[~inside, None, None, None], atol=1e-6)
  np.testing.assert_array_equal(perturb.project(delta, eps, 'linf'), jnp.clip(delta, -eps, eps))
  zero = perturb.project(delta, 0.0, 'l2')
  chex.assert_tree_all_finite(zero)
  np.testing.assert_array_equal(zero, 0.0)


_pgd_jit = jax.jit(perturb.pgd, static_argnums=0, static_argnames=('steps', 'norm'))


@pytest.mark.parametrize('norm,random_start', [('l2', False), ('linf', True)])
def test_pgd_reaches_linear_maximiser_and_stays_in_ball(norm, random_start):
  batch, eps, step_size, steps = 5, 0.7, 0.3, 6
  w = jax.random.normal(jax.random.key(1), (batch,) + LATENT) * jnp.arange(1., 6.)[:, None,
                                                                                    None, None]
  linear_loss = functools.partial(jnp.vdot, w)
  if random_start:
    delta0 = perturb.uniform_start(jax.random.key(2), w.shape, eps, norm)
  else:
    delta0 = jnp.zeros_like(w)
  # eps and step_size are traced (jit arguments); every iterate stays in the ball.
  for k in range(1, steps + 1):
    delta = _pgd_jit(linear_loss, delta0, eps=jnp.float32(eps), step_size=jnp.float32(step_size),
                     steps=k, norm=norm)
    l2, linf = _norms(delta)
    assert np.all((l2 if norm == 'l2' else linf) <= eps * (1 + 1e-5))
  if norm == 'l2':
    expected = eps * w / np.linalg.norm(np.asarray(w).reshape(batch, -1), axis=1)[:, None, None,
                                                                                    None]
  else:
    expected = eps * jnp.sign(w)
  np.testing.assert_allclose(delta, expected, atol=1e-5)


def test_pgd_steps_and_norm_are_validated():
  with pytest.raises(ValueError, match='steps'):
    perturb.pgd(jnp.sum, jnp.zeros((2, 3)), eps=1., step_size=1., steps=0, norm='l2')
  with pytest.raises(ValueError, match='norm'):
    perturb.pgd(jnp.sum, jnp.zeros((2, 3)), eps=1., step_size=1., steps=1, norm='l1')


@pytest.mark.parametrize('norm', ['l2', 'linf'])
def test_random_latent_and_uniform_start_respect_the_ball(norm):
  eps, shape = 0.5, (256,) + LATENT
  rla = perturb.random_latent(jax.random.key(0), shape, eps, norm)
  start = perturb.uniform_start(jax.random.key(1), shape, eps, norm)
  for delta in (rla, start):
    l2, linf = _norms(delta)
    assert np.all((l2 if norm == 'l2' else linf) <= eps * (1 + 1e-5))
    assert abs(float(jnp.mean(delta))) < 0.05 * eps          # centred
  if norm == 'l2':
    # ‖ε n‖ ≈ ε sqrt(12) and ‖u‖ ≈ ε sqrt(12 / 3) exceed ε: both land on the sphere.
    np.testing.assert_allclose(_norms(rla)[0], eps, rtol=1e-5)
    np.testing.assert_allclose(_norms(start)[0], eps, rtol=1e-5)
  else:
    clipped = np.mean(np.abs(np.asarray(rla)) == eps)
    assert 0.25 < clipped < 0.4                               # P(|N(0, 1)| > 1) = 0.317
    assert np.max(np.abs(np.asarray(start))) > 0.99 * eps
    assert np.mean(np.abs(np.asarray(start)) == eps) < 0.01   # uniform, not clipped noise


def test_random_latent_l2_keeps_noise_already_inside_the_ball():
  # In one dimension the l2 ball is [-eps, eps]: small draws are unchanged, large ones clipped.
  noise = perturb.random_latent(jax.random.key(0), (1000, 1), 2.0, 'l2')
  expected = jnp.clip(2.0 * jax.random.normal(jax.random.key(0), (1000, 1)), -2.0, 2.0)
  np.testing.assert_allclose(noise, expected, rtol=1e-5)


@pytest.mark.parametrize('method,norm', [('ala', 'l2'), ('ala', 'linf'), ('rla', 'l2'),
                                         ('rla', 'linf')])
def test_zero_eps_returns_the_clean_images(method, norm):
  dec, w, z, x, y = _setup(8)
  x_tilde, bad, delta = perturb.latent_attack(
      functools.partial(_decode, dec), lambda im: jnp.sum(_per_example_loss(w, im, y)), z,
      jax.random.key(3), method=method, eps=0.0, norm=norm, x_clean=jnp.zeros_like(x),
      step_size=0.5, steps=3, random_start=True)
  np.testing.assert_allclose(x_tilde, x, atol=1e-5)
  np.testing.assert_array_equal(delta, 0.0)
  assert int(bad) == 0


def test_ala_step_follows_the_gradient_through_the_decoder():
  dec, w, z, x, y = _setup(4)
  step_size = 0.1
  per_example = lambda zz: _per_example_loss(w, _decode(dec, zz), y)
  _, _, delta = perturb.latent_attack(
      functools.partial(_decode, dec), lambda im: jnp.sum(_per_example_loss(w, im, y)), z,
      jax.random.key(0), method='ala', eps=10.0, norm='l2', x_clean=x, step_size=step_size,
      steps=1, random_start=False)
  # Central finite differences of each example's loss, one latent coordinate at a time.
  h = 1e-2
  fd = np.zeros((4, DIM))
  for i in range(DIM):
    e = jnp.zeros(DIM).at[i].set(h).reshape(LATENT)
    fd[:, i] = (per_example(z + e) - per_example(z - e)) / (2 * h)
  fd /= np.linalg.norm(fd, axis=1, keepdims=True)
  np.testing.assert_allclose(np.asarray(delta).reshape(4, DIM) / step_size, fd, atol=2e-3)


def test_ala_raises_the_loss_more_than_rla():
  dec, w, z, x, y = _setup(128)
  loss_fn = lambda im: jnp.sum(_per_example_loss(w, im, y))
  kwargs = dict(eps=1.0, norm='l2', x_clean=x, step_size=0.5, steps=3, random_start=True)
  decode = functools.partial(_decode, dec)
  x_ala, _, _ = perturb.latent_attack(decode, loss_fn, z, jax.random.key(1), method='ala',
                                      **kwargs)
  x_rla, _, _ = perturb.latent_attack(decode, loss_fn, z, jax.random.key(1), method='rla',
                                      **kwargs)
  clean, ala, rla = (float(jnp.mean(_per_example_loss(w, im, y))) for im in (x, x_ala, x_rla))
  assert ala > rla + 0.5 and ala > clean + 0.5, (clean, rla, ala)


def test_attacks_trace_once_across_new_data_and_params():

  @jax.jit
  @chex.assert_max_traces(n=1)
  def attacks(dec, w, z, y, key, eps):
    decode = functools.partial(_decode, dec)
    x = decode(z)
    loss_fn = lambda im: jnp.sum(_per_example_loss(w, im, y))
    keys = jax.random.split(key, 4)
    common = dict(eps=eps, norm='l2', x_clean=x, step_size=eps / 2, steps=3)
    x_ala, _, _ = perturb.latent_attack(decode, loss_fn, z, keys[0], method='ala', **common)
    x_rla, _, _ = perturb.latent_attack(decode, loss_fn, z, keys[1], method='rla', **common)
    x_pgd = perturb.image_pgd(loss_fn, x, keys[2], eps=eps / 4, step_size=eps / 8, steps=3,
                              norm='linf')
    return perturb.mix(keys[3], x_rla, x_ala, 0.5), x_pgd

  try:
    for seed in range(3):
      dec, w, z, _, y = _setup(6, seed)
      out = attacks(dec, w, z, y, jax.random.key(seed), jnp.float32(0.5 + seed))
      chex.assert_tree_all_finite(out)
  finally:
    chex.clear_trace_counter()


@pytest.mark.parametrize('method', ['ala', 'rla'])
def test_nonfinite_decode_falls_back_to_clean_and_is_counted(method):
  dec, w, z, x, y = _setup(5)
  bad = 1
  z = z.at[bad, 0, 0, 0].set(-100.0)

  def decode(zz):   # NaN values and gradients where the first latent is below -5
    return _decode(dec, zz) + 0.0 * jnp.sqrt(zz[:, :1, :1, :1] + 5.0)

  def coupled_loss(im):   # batch-coupled like BatchNorm in training mode
    flat = im.reshape((im.shape[0], -1))
    logits = (flat - jnp.mean(flat, axis=0)) @ w
    return jnp.sum(-jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

  x_clean = x.at[bad].set(0.25)
  eps, step_size = 0.5, 0.3
  x_tilde, num_bad, delta = perturb.latent_attack(
      decode, coupled_loss, z, jax.random.key(0), method=method, eps=eps, norm='l2',
      x_clean=x_clean, step_size=step_size, steps=1, random_start=False)
  assert int(num_bad) == 1
  chex.assert_tree_all_finite((x_tilde, delta))
  np.testing.assert_array_equal(x_tilde[bad], x_clean[bad])
  good = np.arange(5) != bad
  np.testing.assert_allclose(x_tilde[good], _decode(dec, z + delta)[good], atol=1e-6)
  # The bad example did not poison the others' gradients: they took a full step.
  expected = step_size if method == 'ala' else eps
  np.testing.assert_allclose(_norms(delta[good])[0], expected, rtol=1e-5)


@pytest.mark.parametrize('norm,eps', [('linf', 0.1), ('l2', 0.5)])
def test_image_pgd_stays_in_the_image_box_and_the_ball(norm, eps):
  x = jax.random.uniform(jax.random.key(0), (16, 4, 4, 3))
  x = x.at[:, 0].set(0.0).at[:, 1].set(1.0)     # pixels on both edges of [0, 1]
  w = jax.random.normal(jax.random.key(1), x.shape)
  loss_fn = functools.partial(jnp.vdot, w)
  x_adv = perturb.image_pgd(loss_fn, x, jax.random.key(2), eps=eps, step_size=eps / 2,
                            steps=6, norm=norm)
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  l2, linf = _norms(x_adv - x)
  assert np.all((l2 if norm == 'l2' else linf) <= eps * (1 + 1e-5))
  if norm == 'linf':   # the maximiser of a linear loss over the box ∩ ball
    np.testing.assert_allclose(x_adv, jnp.clip(x + eps * jnp.sign(w), 0, 1), atol=1e-6)
  else:
    assert float(loss_fn(x_adv - x)) > 0.9 * eps * 16


def test_image_pgd_l2_spends_its_budget_inside_the_box():
  # Pixel 0 is saturated at 1, so the best l2 step of size 0.3 for the loss x0 + x1 moves
  # only pixel 1, by 0.3. Clipping only at the end would waste half the budget (0.3/√2).
  x = jnp.array([[[[1.0, 0.5]]]])
  x_adv = perturb.image_pgd(jnp.sum, x, jax.random.key(0), eps=0.3, step_size=0.05, steps=10,
                            norm='l2', random_start=False)
  assert float(x_adv[0, 0, 0, 0]) == 1.0
  assert 0.29 < float(x_adv[0, 0, 0, 1] - 0.5) <= 0.3 + 1e-6


def test_mix_fractions():
  clean = jnp.zeros((400, 2, 2, 1))
  pert = jnp.ones((400, 2, 2, 1))
  key = jax.random.key(0)
  np.testing.assert_array_equal(perturb.mix(key, clean, pert, 0.0), clean)
  np.testing.assert_array_equal(perturb.mix(key, clean, pert, 1.0), pert)
  half = jax.jit(perturb.mix)(key, clean, pert, jnp.float32(0.3))
  per_example = np.asarray(half).reshape(400, -1)
  assert np.all((per_example == 0).all(1) | (per_example == 1).all(1))   # whole examples
  assert 0.22 < per_example[:, 0].mean() < 0.38
  with pytest.raises(ValueError, match='fraction'):
    perturb.mix(key, clean, pert, 1.5)


@pytest.mark.parametrize('field,value', [
    ('eps', -0.1), ('eps', float('nan')), ('step_size', 0.0), ('step_size', -1.0),
    ('steps', 0), ('steps', 2.5), ('norm', 'l1'), ('method', 'fgsm'), ('labels', 'gold'),
    ('fraction', 1.5), ('density_percentile', 100), ('density_mode', 'clip'),
    ('density_shrink_steps', -1),
])
def test_attack_check_names_the_bad_field(field, value):
  args = dict(method='ala', norm='l2', eps=0.5, step_size=0.1, steps=3)
  perturb.Attack(**args).check('perturb.')
  args[field] = value
  with pytest.raises(ValueError, match=rf'perturb\.{field}[= ]'):
    perturb.Attack(**args).check('perturb.')


def test_latent_attack_validates_method_and_ala_settings():
  dec, w, z, x, y = _setup(2)
  decode = functools.partial(_decode, dec)
  with pytest.raises(ValueError, match='method'):
    perturb.latent_attack(decode, jnp.sum, z, jax.random.key(0), method='pgd', eps=1.,
                          norm='l2', x_clean=x)
  with pytest.raises(ValueError, match='step_size'):
    perturb.latent_attack(decode, jnp.sum, z, jax.random.key(0), method='ala', eps=1.,
                          norm='l2', x_clean=x, steps=2)


def _normal_log_prob(x):
  """log N(x; 0, I) per example, over all non-batch axes."""
  x = x.reshape(x.shape[0], -1)
  return -0.5 * jnp.sum(x ** 2, -1) - 0.5 * x.shape[1] * np.log(2 * np.pi)


def test_density_filter_rejects_the_fraction_below_the_percentile():
  """Training data and perturbed samples from the same N(0, I): a threshold at the p-th
  percentile of the training log-densities keeps 1 - p/100 of the perturbed samples."""
  train = jax.random.normal(jax.random.PRNGKey(0), (20000, 4))
  proposals = jax.random.normal(jax.random.PRNGKey(1), (20000, 4))
  clean = jnp.zeros_like(proposals)
  for percentile in (10.0, 50.0):
    threshold = np.percentile(np.asarray(_normal_log_prob(train)), percentile)
    out, kept, scale = perturb.density_filter(_normal_log_prob, lambda t: t * proposals, clean,
                                              threshold, mode="reject")
    assert abs(float(jnp.mean(kept)) - (1 - percentile / 100)) < 0.015
    np.testing.assert_array_equal(out[kept], proposals[kept])
    np.testing.assert_array_equal(out[~kept], clean[~kept])
    assert set(np.unique(np.asarray(scale))) <= {0.0, 1.0}


def test_density_filter_shrinks_to_the_largest_scale_that_passes():
  """1-D N(0, 1) around clean points at 0 with perturbations d: x(t) = t d passes iff
  |t d| <= r, r the radius of the threshold; shrink picks the largest t in 1, 1/2, 1/4, 1/8."""
  d = jnp.array([[0.5], [1.5], [3.0], [5.0], [20.0], [jnp.nan]])
  r = 1.0
  threshold = float(_normal_log_prob(jnp.array([[r]]))[0])
  x_clean = jnp.zeros_like(d)
  out, kept, scale = perturb.density_filter(_normal_log_prob, lambda t: t * d, x_clean,
                                            threshold, mode="shrink", shrink_steps=3)
  np.testing.assert_array_equal(scale, [1.0, 0.5, 0.25, 0.125, 0.0, 0.0])
  np.testing.assert_array_equal(kept, [True, True, True, True, False, False])
  np.testing.assert_allclose(out[:, 0], [0.5, 0.75, 0.75, 0.625, 0.0, 0.0])
  assert bool(jnp.all(_normal_log_prob(out) >= threshold))
  with pytest.raises(ValueError, match="mode"):
    perturb.density_filter(_normal_log_prob, lambda t: d, x_clean, 0.0, mode="clip")


def test_unrolled_and_looped_pgd_agree():
  w = jax.random.normal(jax.random.PRNGKey(0), (4, 6))
  loss = lambda d: jnp.sum(jnp.tanh(d * w + 0.3) ** 2)
  run = lambda unroll: perturb.pgd(loss, jnp.zeros((4, 6)), eps=0.5, step_size=0.1, steps=5,
                                   norm="l2", unroll=unroll)
  np.testing.assert_allclose(run(True), run(False), atol=1e-6)
  np.testing.assert_allclose(run(2), run(False), atol=1e-6)
