"""Property tests of jaxflowaug.flows: invertibility, brute-force log-determinants, init.

Keys are made with impl='rbg': on XLA:CPU a threefry draw of rank >= 2 takes seconds to
compile, rbg a fraction of that, and the properties tested do not depend on the generator.
"""
import functools
import math

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxflowaug import flows


# Whole flows take seconds to compile on a CPU; XLA's -O0 backend roughly halves that.
_jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def _key(seed):
  return jax.random.key(seed, impl='rbg')


def _images(shape, seed=0):
  """8-bit images k/255 in [0, 1], float32."""
  return jnp.round(jax.random.uniform(_key(seed), shape) * 255.0) / 255.0


def _labels(batch, num_classes):
  return jnp.arange(batch, dtype=jnp.int32) % num_classes


def _perturb(variables, scale, seed=7):
  """Adds N(0, scale^2) noise to every param (not to 'consts'), moving off the identity."""
  leaves, treedef = jax.tree.flatten(variables.get('params', {}))
  keys = jax.random.split(_key(seed), len(leaves))
  noisy = [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
  return {**variables, 'params': jax.tree.unflatten(treedef, noisy)}


def _brute_force_logdet(fn, x):
  """log|det d fn(x) / dx| for one example x (1, ...) from the full Jacobian.

  jax.jacrev, not jacfwd: the project's Conv is a custom_vjp (no forward-mode autodiff).
  """
  flat = lambda v: fn(v.reshape(x.shape)).reshape(-1)
  jacobian = _jit(jax.jacrev(flat))(x.reshape(-1))
  return jnp.linalg.slogdet(jacobian)[1]


# name, module factory, input shape, number of classes of the label argument (0: none),
# whether the input is an image in [0, 1] (else standard normal).
_LAYERS = (
    ('actnorm', flows.ActNorm, (4, 2, 2, 3), 0, False),
    ('conv1x1_plain', functools.partial(flows.InvertibleConv1x1, 'plain'), (4, 2, 2, 4), 0,
     False),
    ('conv1x1_lu', functools.partial(flows.InvertibleConv1x1, 'lu'), (4, 2, 2, 4), 0, False),
    ('coupling_affine_tanh', functools.partial(flows.Coupling, 8), (4, 2, 2, 4), 0, False),
    ('coupling_affine_sigmoid', functools.partial(flows.Coupling, 8, scale_fn='sigmoid'),
     (4, 2, 2, 5), 0, False),
    ('coupling_additive', functools.partial(flows.Coupling, 8, kind='additive'),
     (4, 2, 2, 4), 0, False),
    ('coupling_conditional', functools.partial(flows.Coupling, 8, num_classes=3),
     (4, 2, 2, 4), 3, False),
    ('preprocess', flows.Preprocess, (4, 2, 2, 3), 0, True),
    ('glow_step_lu_conditional',
     functools.partial(flows.GlowStep, 8, permutation='lu', num_classes=3), (4, 2, 2, 4), 3,
     False),
    ('dense_coupling_block',
     functools.partial(flows.GlowCouplingBlock, 16, num_classes=3), (4, 7), 3, False),
)


@functools.lru_cache(maxsize=None)
def _layer(name):
  """(module, variables, x, cond args), cached so that each layer is initialised once."""
  _, factory, shape, num_classes, is_image = next(c for c in _LAYERS if c[0] == name)
  module = factory()
  x = _images(shape) if is_image else jax.random.normal(_key(1), shape)
  cond = (_labels(shape[0], num_classes),) if num_classes else ()
  variables = _jit(lambda k: module.init(k, x, *cond, method=module.forward))(_key(2))
  return module, variables, x, cond


class LayerTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*[(case[0], case[0]) for case in _LAYERS])
  def test_inverse_of_forward_and_opposite_logdets(self, name):
    module, variables, x, cond = _layer(name)

    @self.variant
    def round_trip(variables, x):
      y, logdet = module.apply(variables, x, *cond, method=module.forward)
      x_back, inverse_logdet = module.apply(variables, y, *cond, method=module.inverse)
      return y, logdet, x_back, inverse_logdet

    for scale in (0.0, 0.1):  # at init, then with params moved off the identity
      y, logdet, x_back, inverse_logdet = round_trip(_perturb(variables, scale), x)
      chex.assert_shape(logdet, (x.shape[0],))
      chex.assert_equal(y.size, x.size)
      np.testing.assert_allclose(x_back, x, atol=1e-5)
      np.testing.assert_allclose(inverse_logdet, -logdet, rtol=1e-5, atol=1e-5)

  @parameterized.named_parameters(*[(case[0], case[0]) for case in _LAYERS])
  def test_logdet_matches_jacobian_and_vmap_matches_batch(self, name):
    module, variables, x, cond = _layer(name)
    variables = _perturb(variables, 0.1)
    forward = lambda x, *c: module.apply(variables, x, *c, method=module.forward)
    y, logdet = _jit(forward)(x, *cond)

    expected = _brute_force_logdet(lambda v: forward(v, *(c[:1] for c in cond))[0], x[:1])
    np.testing.assert_allclose(logdet[0], expected, rtol=1e-4, atol=1e-4)

    per_example = jax.vmap(lambda v, *c: jax.tree.map(
        lambda a: a[0], forward(v[None], *(a[None] for a in c))))
    y_vmap, logdet_vmap = _jit(per_example)(x, *cond)
    np.testing.assert_allclose(y_vmap, y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logdet_vmap, logdet, rtol=1e-5, atol=1e-5)

  def test_actnorm_data_init_normalises_and_is_kept_for_new_data(self):
    x = 3.0 + 2.0 * jax.random.normal(_key(0), (16, 4, 4, 5))
    layer = flows.ActNorm()
    variables = layer.init(_key(1), x, method=layer.forward)
    y, logdet = layer.apply(variables, x, method=layer.forward)
    np.testing.assert_allclose(jnp.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.std(y, axis=(0, 1, 2)), 1.0, atol=1e-4)
    np.testing.assert_allclose(logdet, 16 * jnp.sum(variables['params']['log_scale']),
                               rtol=1e-6)
    other = 10.0 * x
    y_other, _ = layer.apply(variables, other, method=layer.forward)
    p = variables['params']
    np.testing.assert_allclose(y_other, (other + p['bias']) * jnp.exp(p['log_scale']),
                               rtol=1e-6)

  @parameterized.parameters('affine_tanh', 'additive')
  def test_coupling_is_identity_at_init(self, variant):
    module, variables, x, _ = _layer(f'coupling_{variant}')
    y, logdet = module.apply(variables, x, method=module.forward)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(logdet, 0.0)

  def test_coupling_net_output_has_a_learned_log_scale_factor_three(self):
    net = flows.CouplingNet(hidden_channels=4, out_channels=2)
    x = _images((2, 4, 4, 3))
    variables = net.init(_key(0), x)
    np.testing.assert_array_equal(variables['params']['logs'], jnp.zeros(2))
    params = dict(variables['params'])
    params['conv_out'] = jax.tree.map(jnp.ones_like, params['conv_out'])
    base = net.apply({'params': params}, x)
    params['logs'] = jnp.array([0.0, 0.5])
    scaled = net.apply({'params': params}, x)
    np.testing.assert_allclose(scaled[..., 0], base[..., 0], rtol=1e-6)
    np.testing.assert_allclose(scaled[..., 1], base[..., 1] * math.exp(1.5), rtol=1e-5)

  def test_sigmoid_coupling_scales_by_sigmoid_two_at_init(self):
    module, variables, x, _ = _layer('coupling_affine_sigmoid')
    y, logdet = module.apply(variables, x, method=module.forward)
    np.testing.assert_allclose(y[..., 2:], x[..., 2:] * jax.nn.sigmoid(2.0), rtol=1e-6)
    np.testing.assert_array_equal(y[..., :2], x[..., :2])
    np.testing.assert_allclose(logdet, 2 * 2 * 3 * math.log(jax.nn.sigmoid(2.0)), rtol=1e-5)

  def test_lu_conv_is_orthogonal_at_init(self):
    module, variables, x, _ = _layer('conv1x1_lu')
    y, logdet = module.apply(variables, x, method=module.forward)
    np.testing.assert_allclose(logdet, 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.sum(y**2, -1), jnp.sum(x**2, -1), rtol=1e-5)
    permutation = variables['consts']['permutation']
    np.testing.assert_array_equal(jnp.sort(permutation.sum(0)), jnp.ones(4))
    self.assertNotIn('permutation', variables['params'])

  def test_squeeze_layout(self):
    x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
    y = flows.squeeze(x)
    chex.assert_shape(y, (2, 2, 3, 12))
    for p, q in np.ndindex(2, 2):
      np.testing.assert_array_equal(y[..., (2 * p + q) * 3:(2 * p + q + 1) * 3],
                                    x[:, p::2, q::2, :])
    np.testing.assert_array_equal(flows.unsqueeze(y), x)
    with self.assertRaisesRegex(ValueError, 'even height and width'):
      flows.squeeze(jnp.zeros((1, 3, 4, 1)))

  def test_preprocess_dequantisation_and_authors_decode(self):
    x = _images((4, 3, 3, 2))
    layer = flows.Preprocess()
    v, _ = layer.apply({}, x, method=layer.forward)
    np.testing.assert_allclose(jax.nn.sigmoid(v), 0.05 + 0.9 * (255 * x + 0.5) / 256, rtol=1e-5)
    v_noisy, _ = layer.apply({}, x, True, method=layer.forward, rngs={'dequant': _key(3)})
    x_noisy, _ = layer.apply({}, v_noisy, method=layer.inverse)
    self.assertGreater(float(jnp.max(jnp.abs(x_noisy - x))), 1e-3)
    np.testing.assert_array_less(jnp.abs(x_noisy - x), 0.5 / 255 + 1e-5)
    np.testing.assert_array_equal(jnp.round(x_noisy * 255), jnp.round(x * 255))

    authors = flows.Preprocess(authors_decode=True)
    decoded, logdet = authors.apply({}, v, method=authors.inverse)
    np.testing.assert_allclose(decoded, 0.05 + 0.9 * (255 * x + 0.5) / 256, rtol=1e-5)
    expected = _brute_force_logdet(lambda a: authors.apply({}, a, method=authors.inverse)[0],
                                   v[:1])
    np.testing.assert_allclose(logdet[0], expected, rtol=1e-4)

  def test_layer_validation(self):
    with self.assertRaisesRegex(ValueError, 'decomposition'):
      flows.InvertibleConv1x1('qr')
    with self.assertRaisesRegex(ValueError, 'kind'):
      flows.Coupling(8, kind='spline')
    with self.assertRaisesRegex(ValueError, 'scale_fn'):
      flows.Coupling(8, scale_fn='exp')
    with self.assertRaisesRegex(ValueError, 'logit_bound'):
      flows.Preprocess(logit_bound=1.0)
    layer = flows.Coupling(8)
    with self.assertRaisesRegex(ValueError, 'at least 2 channels'):
      layer.init(_key(0), jnp.zeros((1, 2, 2, 1)), method=layer.forward)


# name, flow factory, image shape, number of classes.
_FLOWS = (
    ('glow', functools.partial(flows.Glow, 2, 2, 8), (8, 4, 4, 3), 0),
    ('glow_conditional_lu_sigmoid',
     functools.partial(flows.Glow, 1, 2, 8, num_classes=3, scale_fn='sigmoid',
                       permutation='lu'), (8, 4, 4, 3), 3),
    ('dense', functools.partial(flows.DenseFlow, 3, 16, 3, image_shape=(4, 4, 1)),
     (8, 4, 4, 1), 3),
)
_TRAINED = ('glow', 'dense')  # trained for 30 Adam steps; the others are perturbed.


@functools.lru_cache(maxsize=None)
def _flow(name):
  """(flow, initial variables, final variables, x, y, bits/dim before and after)."""
  _, factory, shape, num_classes = next(c for c in _FLOWS if c[0] == name)
  flow = factory()
  x = _images(shape)
  y = _labels(shape[0], num_classes) if num_classes else None
  variables = _jit(lambda k: flow.init(k, x, y, method=flow.forward))(_key(1))
  if name not in _TRAINED:
    return flow, variables, _perturb(variables, 0.05), x, y, None, None

  def loss(params, key):
    bpd = flow.apply({**variables, 'params': params}, x, y, True, method=flow.bits_per_dim,
                     rngs={'dequant': key})
    return jnp.mean(bpd)

  optimiser = optax.adam(1e-2)

  @_jit
  def train(params):
    def step(carry, key):
      params, state = carry
      value, grads = jax.value_and_grad(loss)(params, key)
      updates, state = optimiser.update(grads, state)
      return (optax.apply_updates(params, updates), state), value
    (params, _), losses = jax.lax.scan(step, (params, optimiser.init(params)),
                                       jax.random.split(_key(5), 30))
    return params, losses

  params, losses = train(variables['params'])
  return flow, variables, {**variables, 'params': params}, x, y, losses[0], losses[-1]


@functools.lru_cache(maxsize=None)
def _method(name, method, **static):
  """The flow's `method` as a jitted function of (variables, *args), compiled once per run."""
  flow = _flow(name)[0]
  return _jit(lambda variables, *args: flow.apply(variables, *args, method=method, **static))


class FlowTest(chex.TestCase):

  @parameterized.named_parameters(*[(case[0], case[0]) for case in _FLOWS])
  def test_inverse_of_forward_and_opposite_logdets(self, name):
    _, initial, final, x, y, _, _ = _flow(name)
    for variables in (initial, final):
      z, logdet = _method(name, 'forward')(variables, x, y)
      chex.assert_shape(z, x.shape)
      chex.assert_shape(logdet, (x.shape[0],))
      x_back, inverse_logdet = _method(name, 'inverse')(variables, z, y)
      np.testing.assert_allclose(x_back, x, atol=1e-5)
      np.testing.assert_allclose(inverse_logdet, -logdet, rtol=1e-5, atol=1e-4)
      # Without the logdet XLA fuses differently: equal to float32 round-off, not bitwise.
      np.testing.assert_allclose(_method(name, 'encode')(variables, x, y), z, atol=1e-5)
      np.testing.assert_allclose(_method(name, 'decode')(variables, z, y), x_back, atol=1e-5)

  @parameterized.named_parameters(*[(case[0], case[0]) for case in _FLOWS])
  def test_logdet_matches_jacobian(self, name):
    flow, _, variables, x, y, _, _ = _flow(name)
    y1 = None if y is None else y[:1]
    logdet = _method(name, 'forward')(variables, x, y)[1]
    expected = _brute_force_logdet(
        lambda v: flow.apply(variables, v, y1, method=flow.forward)[0], x[:1])
    np.testing.assert_allclose(logdet[0], expected, rtol=1e-4)

  @parameterized.parameters('glow', 'dense')
  def test_jit_and_vmap_match_eager(self, name):
    flow, _, variables, x, y, _, _ = _flow(name)
    forward = lambda x, y: flow.apply(variables, x, y, method=flow.forward)
    z, logdet = forward(x, y)
    z_jit, logdet_jit = _method(name, 'forward')(variables, x, y)
    # Op-by-op (eager) execution rounds differently from the compiled flow: one entry of the
    # trained Glow's z is 1.1e-5 off on this CPU, jit and vmap alike.
    np.testing.assert_allclose(z_jit, z, rtol=1e-5, atol=5e-5)
    np.testing.assert_allclose(logdet_jit, logdet, rtol=1e-5)
    single = lambda xi, yi: jax.tree.map(
        lambda a: a[0], forward(xi[None], None if yi is None else yi[None]))
    z_vmap, logdet_vmap = _jit(jax.vmap(single))(x, y)
    np.testing.assert_allclose(z_vmap, z, rtol=1e-5, atol=5e-5)
    np.testing.assert_allclose(logdet_vmap, logdet, rtol=1e-5)

  @parameterized.parameters(*_TRAINED)
  def test_bits_per_dim_falls_with_training(self, name):
    _, _, variables, x, y, first, last = _flow(name)
    self.assertLess(float(last), float(first) - 1.0)
    self.assertTrue(np.isfinite(float(last)))
    log_prob = _method(name, 'log_prob')(variables, x, y)
    bpd = _method(name, 'bits_per_dim', dequantize=False)(variables, x, y)
    d = math.prod(x.shape[1:])
    np.testing.assert_allclose(bpd, -(log_prob - d * math.log(256)) / (d * math.log(2)),
                               rtol=1e-6)
    z, logdet = _method(name, 'forward')(variables, x, y)
    prior = -0.5 * jnp.sum(z**2, axis=(1, 2, 3)) - 0.5 * d * math.log(2 * math.pi)
    offset = d * math.log(256 / 255) if name == 'glow' else 0.0  # Glow: density of (255x+u)/256
    np.testing.assert_allclose(log_prob, prior + logdet + offset, rtol=1e-5)

  def test_glow_matches_a_manual_level_by_level_pass(self):
    """ActNorm data init inside the scanned steps; latents packed in place of x."""
    _, variables, _, x, _, _, _ = _flow('glow')
    params = variables['params']
    z = _method('glow', 'forward')(variables, x, None)[0]
    h, _ = flows.Preprocess().apply({}, x, method=flows.Preprocess.forward)
    step = flows.GlowStep(8)
    step_forward = _jit(lambda p, h: step.apply({'params': p}, h, method=step.forward))
    packed = z
    for level in range(2):
      h, packed = flows.squeeze(h), flows.squeeze(packed)
      for k in range(2):
        step_params = jax.tree.map(lambda a: a[k], params[f'levels_{level}'])
        normed, _ = flows.ActNorm().apply({'params': step_params['norm']}, h,
                                          method=flows.ActNorm.forward)
        np.testing.assert_allclose(jnp.mean(normed, axis=(0, 1, 2)), 0.0, atol=1e-4)
        np.testing.assert_allclose(jnp.std(normed, axis=(0, 1, 2)), 1.0, atol=1e-3)
        h, _ = step_forward(step_params, h)
      if level == 0:  # the second half of the channels is level 0's latent
        half = h.shape[-1] // 2
        np.testing.assert_allclose(packed[..., half:], h[..., half:], rtol=1e-5, atol=1e-5)
        h, packed = h[..., :half], packed[..., :half]
    np.testing.assert_allclose(packed, h, rtol=1e-5, atol=1e-5)

  def test_decoding_far_latents_has_finite_gradients(self):
    """A-LA optimises latents through the inverse: no NaN/inf far from the data."""
    flow, _, variables, x, _, _, _ = _flow('glow')
    z = _method('glow', 'forward')(variables, x, None)[0]
    far = z + 5.0 * jax.random.normal(_key(9), z.shape)
    decode = lambda z: jnp.sum(flow.apply(variables, z, method=flow.decode) ** 2)
    value, grad = _jit(jax.value_and_grad(decode))(far)
    self.assertTrue(np.isfinite(float(value)))
    self.assertTrue(np.all(np.isfinite(grad)))
    self.assertGreater(float(jnp.max(jnp.abs(grad))), 0.0)

  def test_glow_authors_decode(self):
    _, _, variables, x, _, _, _ = _flow('glow')
    z = _method('glow', 'forward')(variables, x, None)[0]
    authors = flows.Glow(2, 2, 8, authors_decode=True)
    decoded = _jit(lambda v, z: authors.apply(v, z, method=authors.decode))(variables, z)
    np.testing.assert_allclose(decoded, 0.05 + 0.9 * (255 * x + 0.5) / 256, atol=1e-5)

  def test_flow_validation(self):
    for field, kwargs in [('num_levels', dict(num_levels=0)),
                          ('num_steps', dict(num_steps=1.5)),
                          ('coupling', dict(coupling='spline')),
                          ('scale_fn', dict(scale_fn='exp')),
                          ('permutation', dict(permutation='qr')),
                          ('logit_bound', dict(logit_bound=0.0)),
                          ('num_classes', dict(num_classes=-1))]:
      with self.subTest(field), self.assertRaisesRegex(ValueError, field):
        flows.Glow(**{**dict(num_levels=2, num_steps=2, hidden_channels=8), **kwargs})
    for field, kwargs in [('num_blocks', dict(num_blocks=0)), ('clamp', dict(clamp=0.0)),
                          ('noise_std', dict(noise_std=-1.0)),
                          ('image_shape', dict(image_shape=(28, 28)))]:
      with self.subTest(field), self.assertRaisesRegex(ValueError, field):
        flows.DenseFlow(**kwargs)

    # Input checks run at trace time, before any computation: eager calls are cheap here.
    flow, variables, _, x, _, _, _ = _flow('glow')
    apply = lambda x, y=None: flow.apply(variables, x, y, method=flow.forward)
    with self.assertRaisesRegex(ValueError, 'divisible by 2\\*\\*num_levels=4'):
      apply(jnp.zeros((1, 6, 8, 3)))
    with self.assertRaisesRegex(ValueError, 'initialised for 3'):
      apply(jnp.zeros((1, 4, 4, 1)))
    with self.assertRaisesRegex(ValueError, 'unconditional'):
      apply(x, _labels(8, 3))
    cond, cond_variables, _, x, y, _, _ = _flow('glow_conditional_lu_sigmoid')
    with self.assertRaisesRegex(ValueError, 'num_classes=3'):
      cond.apply(cond_variables, x, method=cond.forward)
    with self.assertRaisesRegex(ValueError, 'num_classes=3'):
      cond.apply(cond_variables, x, y.astype(jnp.float32), method=cond.forward)
    dense, dense_variables, _, x, y, _, _ = _flow('dense')
    with self.assertRaisesRegex(ValueError, 'image_shape'):
      dense.apply(dense_variables, x[:, :2], y, method=dense.inverse)


@pytest.mark.slow  # compiles two flows three times
@pytest.mark.parametrize('make', [
    lambda remat: flows.Glow(num_levels=2, num_steps=2, hidden_channels=8, remat=remat),
    lambda remat: flows.DenseFlow(num_blocks=2, hidden=16, num_classes=3, image_shape=(4, 4, 1),
                                  remat=remat)])
def test_remat_gives_the_same_gradients(make):
  """Every remat policy: the same gradients, and the policy really changes the program."""
  plain = make('none')
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, 4, 4, 1 if plain.__class__.__name__ ==
                                                  'DenseFlow' else 3))
  y = jnp.arange(4) % 3 if isinstance(plain, flows.DenseFlow) else None
  variables = plain.init(jax.random.PRNGKey(1), x, y, method=plain.forward)

  def loss(params, flow):
    return jnp.sum(flow.apply({**variables, 'params': params}, x, y, method=flow.log_prob))

  g_plain = jax.grad(loss)(variables['params'], plain)
  for policy in ('dots', 'full'):
    g_remat = jax.grad(loss)(variables['params'], make(policy))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 g_plain, g_remat)
    jaxpr = str(jax.make_jaxpr(jax.grad(loss), static_argnums=1)(variables['params'],
                                                                  make(policy)))
    assert 'remat' in jaxpr or 'checkpoint' in jaxpr, policy
  with pytest.raises(ValueError, match='remat'):
    make(True)
