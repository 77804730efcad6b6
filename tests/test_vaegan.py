"""The VAE-GAN (approximate coding): losses fall, the two players' gradients are separated,
per-class models are independent, and the decoder works inside the PGD core."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxflowaug import perturb, vaegan

SHAPE = (8, 8, 1)


def _images(n, seed=0):
  """Two kinds of 8x8 images (bright top half or bright left half) with pixel noise."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % 2
  x = np.full((n,) + SHAPE, 0.1, np.float32)
  x[labels == 0, :4] = 0.9
  x[labels == 1, :, :4] = 0.9
  x = np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(labels, jnp.int32)


def _init(model, x, y):
  return model.init(jax.random.PRNGKey(0), x, y if model.num_classes else None)["params"]


@pytest.mark.slow  # trains for seconds
def test_losses_fall_on_a_tiny_set():
  model = vaegan.VAEGAN(SHAPE, latent_dim=4, width=8)
  x, y = _images(32)
  params = _init(model, x, y)
  tx = optax.adam(3e-3, b1=0.5)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, key):
    (_, m), grads = jax.value_and_grad(
        lambda p: vaegan.objective(model, p, x, y, key), has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, m

  history = []
  for i in range(150):
    params, opt, m = step(params, opt, jax.random.PRNGKey(i))
    history.append(jax.device_get(m))
  first = {k: np.mean([h[k] for h in history[:5]]) for k in history[0]}
  last = {k: np.mean([h[k] for h in history[-10:]]) for k in history[0]}
  # The VAE part: reconstruction (BCE summed over 64 pixels) falls by more than a third.
  assert last["reconstruction"] < 0.66 * first["reconstruction"], (first, last)
  assert last["reconstruction"] + last["kl"] < first["reconstruction"] + first["kl"]
  # The discriminator learns: its loss falls below chance, 3 log 2.
  assert last["disc"] < min(first["disc"], 3 * np.log(2)), (first, last)
  mu, _ = model.apply({"params": params}, x, method=model.encode)
  recon = model.apply({"params": params}, mu, method=model.decode)
  assert float(jnp.mean(jnp.abs(recon - x))) < 0.2


@pytest.mark.slow  # trains for seconds
def test_each_player_gets_only_its_own_gradient():
  """L_G sees a stopped discriminator and L_D stopped decodes: D's gradient does not depend on
  gan_weight, and the encoder's and decoder's does not depend on D's loss."""
  model = vaegan.VAEGAN(SHAPE, latent_dim=4, width=4)
  x, y = _images(8)
  params = _init(model, x, y)
  key = jax.random.PRNGKey(3)
  grad = lambda w: jax.grad(lambda p: vaegan.objective(model, p, x, y, key, gan_weight=w)[0])(
      params)
  g0, g5 = grad(0.0), grad(5.0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               g0["discriminator"], g5["discriminator"])
  assert not np.allclose(g0["decoder"]["Dense_0"]["kernel"], g5["decoder"]["Dense_0"]["kernel"])

  def generator_only(p):  # L_G alone, by hand: its gradient must equal the objective's
    k_z, k_prior = jax.random.split(key)
    mu, logvar = model.apply({"params": p}, x, method=model.encode)
    z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(k_z, mu.shape)
    logits = model.apply({"params": p}, z, method=model.decode_logits)
    bce = jnp.sum(jnp.logaddexp(0.0, logits) - x * logits, axis=(1, 2, 3))
    kl = 0.5 * jnp.sum(mu ** 2 + jnp.exp(logvar) - 1.0 - logvar, axis=-1)
    d = lambda im: model.apply({"params": jax.lax.stop_gradient(p)}, im, method=model.discriminate)
    prior = model.apply({"params": p}, jax.random.normal(k_prior, mu.shape), method=model.decode)
    gan = jax.nn.softplus(-d(jax.nn.sigmoid(logits))) + jax.nn.softplus(-d(prior))
    return jnp.mean(bce + kl + 5.0 * gan)

  by_hand = jax.grad(generator_only)(params)
  for part in ("encoder", "decoder"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 g5[part], by_hand[part])


@pytest.mark.slow  # trains for seconds
def test_per_class_models_are_independent_and_grouped_training_matches():
  model = vaegan.VAEGAN(SHAPE, latent_dim=3, width=4, num_classes=2)
  x, y = _images(8)
  order = jnp.argsort(y, stable=True)  # class-major: 4 of class 0, then 4 of class 1
  x, y = x[order], y[order]
  params = _init(model, x, y)
  assert set(params) == {"encoder_0", "encoder_1", "decoder_0", "decoder_1",
                         "discriminator_0", "discriminator_1"}
  # Row b of a per-class decode is model y_b's own decode.
  z = jax.random.normal(jax.random.PRNGKey(1), (8, 3))
  mixed = model.apply({"params": params}, z, y, method=model.decode)
  only_1 = model.apply({"params": params}, z, jnp.ones_like(y), method=model.decode)
  np.testing.assert_allclose(mixed[4:], only_1[4:], atol=1e-6)
  assert not np.allclose(mixed[:4], only_1[:4])
  # The gradient of class-1 rows touches only class 1's parameters.
  g = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, z[4:], y[4:], method=model.decode)))(
      params)
  assert all(float(jnp.abs(l).max()) == 0 for l in jax.tree.leaves(g["decoder_0"]))
  assert any(float(jnp.abs(l).max()) > 0 for l in jax.tree.leaves(g["decoder_1"]))
  # Grouped training (each model on its class's rows only) = running all and picking by label.
  key = jax.random.PRNGKey(2)
  f = lambda grouped: jax.value_and_grad(lambda p: vaegan.objective(
      model, p, x, y, key, grouped=grouped)[0])(params)
  (l_grouped, g_grouped), (l_all, g_all) = f(True), f(False)
  np.testing.assert_allclose(l_grouped, l_all, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               g_grouped, g_all)
  with pytest.raises(ValueError, match="equal groups"):
    vaegan.objective(model, params, x[:7], y[:7], key, grouped=True)


@pytest.mark.slow  # trains for seconds
def test_decoder_is_differentiable_through_the_pgd_core():
  """A-LA in a VAE-GAN latent: the gradient through G matches finite differences, and PGD
  through G raises a loss on the decoded images more than random noise of the same size."""
  model = vaegan.VAEGAN(SHAPE, latent_dim=4, width=4)
  x, y = _images(6)
  params = _init(model, x, y)
  w = jax.random.normal(jax.random.PRNGKey(7), SHAPE)
  loss = lambda images: jnp.sum(images * w)
  with jax.enable_x64(True):  # finite differences in float64, with h small enough for the kinks
    p64, x64, w64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (params, x, w))
    dec64 = lambda zz: model.apply({"params": p64}, zz, method=model.decode)
    loss64 = lambda zz: jnp.sum(dec64(zz) * w64)
    z64 = model.apply({"params": p64}, x64, method=model.encode)[0]
    g = jax.grad(loss64)(z64)
    for seed in range(3):  # directional derivatives along random unit directions
      d = jax.random.normal(jax.random.PRNGKey(seed), z64.shape, jnp.float64)
      d, h = d / jnp.linalg.norm(d), 1e-5
      numeric = (loss64(z64 + h * d) - loss64(z64 - h * d)) / (2 * h)
      np.testing.assert_allclose(jnp.sum(g * d), numeric, rtol=1e-6)

  decode = lambda z: model.apply({"params": params}, z, method=model.decode)
  z = model.apply({"params": params}, x, method=model.encode)[0]
  x_ala, nonfinite, delta = perturb.latent_attack(
      decode, loss, z, jax.random.PRNGKey(0), method="ala", eps=0.5, norm="linf", x_clean=x,
      step_size=0.1, steps=10, random_start=False)
  x_rla, _, _ = perturb.latent_attack(decode, loss, z, jax.random.PRNGKey(0), method="rla",
                                      eps=0.5, norm="linf", x_clean=x)
  assert int(nonfinite) == 0 and float(jnp.max(jnp.abs(delta))) <= 0.5 + 1e-6
  assert float(loss(x_ala)) > float(loss(x_rla)) and float(loss(x_ala)) > float(loss(decode(z)))


def test_bad_shapes_and_sizes_are_refused():
  with pytest.raises(ValueError, match="divisible by 4"):
    vaegan.VAEGAN((10, 8, 1)).init(jax.random.PRNGKey(0), jnp.zeros((1, 10, 8, 1)))
  model = vaegan.VAEGAN(SHAPE, latent_dim=2, width=2, num_classes=2)
  params = _init(model, *_images(2))
  with pytest.raises(ValueError, match="needs the labels"):
    model.apply({"params": params}, jnp.zeros((1, 2)), method=model.decode)
