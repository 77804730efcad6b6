"""distrax interop of the flows: densities, round trips, composition, jit and vmap.

Keys use impl='rbg' (fast to compile on XLA:CPU, see test_flows.py).
"""
import functools
import math

from absl.testing import parameterized
import chex
import distrax
import jax
import jax.numpy as jnp
import numpy as np

from jaxflowaug import flows


_jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def _key(seed):
  return jax.random.key(seed, impl='rbg')


# name, flow, image batch shape, number of classes.
_FLOWS = (
    ('glow', flows.Glow(num_levels=2, num_steps=2, hidden_channels=8), (4, 8, 8, 3), 0),
    ('dense', flows.DenseFlow(num_blocks=2, hidden=16, num_classes=3, image_shape=(8, 8, 1)),
     (4, 8, 8, 1), 3),
)


@functools.lru_cache(maxsize=None)
def _setup(name):
  """(flow, variables moved off the identity, x (B, H, W, C) in [0, 1], y or None)."""
  _, flow, shape, num_classes = next(c for c in _FLOWS if c[0] == name)
  x = jnp.round(jax.random.uniform(_key(0), shape) * 255.0) / 255.0
  y = jnp.arange(shape[0], dtype=jnp.int32) % num_classes if num_classes else None

  @_jit
  def init(key):
    variables = flow.init(key, x, y, method=type(flow).forward)
    leaves, treedef = jax.tree.flatten(variables['params'])
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    noisy = [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
    return {**variables, 'params': jax.tree.unflatten(treedef, noisy)}

  return flow, init(_key(1)), x, y


@functools.lru_cache(maxsize=None)
def _direct(name, method):
  """The flow's `method` applied directly, jitted: (variables, a, y) -> output."""
  flow = _setup(name)[0]
  return _jit(lambda variables, a, y: flow.apply(variables, a, y, method=method))


_NAMES = [(c[0], c[0]) for c in _FLOWS]


class DistraxTest(parameterized.TestCase):

  @parameterized.named_parameters(*_NAMES)
  def test_log_prob_matches_the_flow(self, name):
    flow, variables, x, y = _setup(name)
    log_prob = _jit(lambda v, x, y: flows.as_distribution(
        flow, v, y, image_shape=x.shape[1:]).log_prob(x))(variables, x, y)
    expected = _direct(name, 'log_prob')(variables, x, y)
    if name == 'glow':  # Glow's log_prob is the density of (255 x + 1/2) / 256, not of x
      expected = expected - math.prod(x.shape[1:]) * math.log(256.0 / 255.0)
    chex.assert_shape(log_prob, (x.shape[0],))
    np.testing.assert_allclose(log_prob, expected, rtol=1e-5, atol=1e-5)

  @parameterized.named_parameters(*_NAMES)
  def test_round_trip_and_opposite_log_dets_match_the_flow(self, name):
    flow, variables, x, y = _setup(name)

    @_jit
    def round_trip(variables, x, y):
      bijector = flows.as_bijector(flow, variables, y)
      z, log_det = bijector.forward_and_log_det(x)
      x_back, inverse_log_det = bijector.inverse_and_log_det(z)
      separate = (bijector.forward(x), bijector.forward_log_det_jacobian(x),
                  bijector.inverse(z), bijector.inverse_log_det_jacobian(z))
      return z, log_det, x_back, inverse_log_det, separate

    z, log_det, x_back, inverse_log_det, separate = round_trip(variables, x, y)
    self.assertEqual(flows.as_bijector(flow, variables, y).event_ndims_in, 3)
    chex.assert_trees_all_close((z, log_det), _direct(name, 'forward')(variables, x, y),
                                rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x_back, x, atol=1e-4)
    np.testing.assert_allclose(inverse_log_det, -log_det, rtol=1e-5, atol=1e-4)
    chex.assert_trees_all_close(separate, (z, log_det, x_back, inverse_log_det),
                                rtol=1e-5, atol=1e-5)

  @parameterized.named_parameters(*_NAMES)
  def test_chain_with_an_affine_adds_log_dets(self, name):
    """Images in [-1, 1] -> [0, 1] by Block(ScalarAffine(1/2, 1/2), 3), then the flow."""
    flow, variables, x, y = _setup(name)

    @_jit
    def chained(variables, x_signed, y):
      to_unit = distrax.Block(distrax.ScalarAffine(shift=0.5, scale=0.5), 3)
      return distrax.Chain([flows.as_bijector(flow, variables, y), to_unit]).forward_and_log_det(
          x_signed)

    z, log_det = chained(variables, 2.0 * x - 1.0, y)
    z_flow, log_det_flow = _direct(name, 'forward')(variables, x, y)
    np.testing.assert_allclose(z, z_flow, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        log_det, log_det_flow + math.prod(x.shape[1:]) * math.log(0.5), rtol=1e-5, atol=1e-4)

  @parameterized.named_parameters(*_NAMES)
  def test_jit_of_a_bijector_argument_and_vmap_over_batches(self, name):
    flow, variables, x, y = _setup(name)
    xs = jnp.stack([x, x[::-1]])  # two batches (2, B, H, W, C)
    ys = None if y is None else jnp.stack([y, y[::-1]])
    expected = _direct(name, 'forward')(variables, xs.reshape((-1,) + x.shape[1:]),
                                        None if y is None else ys.reshape(-1))
    expected = jax.tree.map(lambda a: a.reshape(xs.shape[:2] + a.shape[1:]), expected)

    per_batch = lambda x, y: flows.as_bijector(flow, variables, y).forward_and_log_det(x)
    vmapped = _jit(jax.vmap(per_batch))(xs, ys)
    chex.assert_trees_all_close(vmapped, expected, rtol=1e-5, atol=1e-5)
    # The bijector itself flattens leading axes; labels broadcast against them.
    bijector = flows.as_bijector(flow, variables, ys)
    passed = _jit(lambda b, x: b.forward_and_log_det(x))(bijector, xs)
    chex.assert_trees_all_close(passed, expected, rtol=1e-5, atol=1e-5)

  @parameterized.named_parameters(*_NAMES)
  def test_sample_decodes_scaled_normal_with_a_consistent_log_prob(self, name):
    flow, variables, x, y = _setup(name)
    temperature = 0.7

    @_jit
    def sample(variables, y, key):
      dist = flows.as_distribution(flow, variables, y, temperature, image_shape=x.shape[1:])
      samples, log_prob = dist.sample_and_log_prob(seed=key, sample_shape=(2,))
      noise = dist.distribution.sample(seed=key, sample_shape=(2,))
      return samples, log_prob, dist.log_prob(samples), noise

    samples, log_prob, log_prob_again, noise = sample(variables, y, _key(3))
    batch = () if y is None else y.shape
    chex.assert_shape(samples, (2,) + batch + x.shape[1:])
    chex.assert_shape(log_prob, (2,) + batch)
    np.testing.assert_allclose(jnp.std(noise), temperature, rtol=0.1)
    flat = lambda a: a.reshape((-1,) + x.shape[1:])
    decoded = _direct(name, 'decode')(variables, flat(noise),
                                      None if y is None else jnp.tile(y, 2))
    np.testing.assert_allclose(flat(samples), decoded, atol=1e-4)
    np.testing.assert_allclose(log_prob, log_prob_again, rtol=1e-4, atol=1e-3)

  def test_glow_needs_an_image_shape(self):
    flow, variables, _, _ = _setup('glow')
    with self.assertRaisesRegex(ValueError, 'image_shape'):
      flows.as_distribution(flow, variables)
    with self.assertRaisesRegex(ValueError, 'temperature'):
      flows.as_distribution(flow, variables, image_shape=(8, 8, 3), temperature=0.0)
