"""Tests for jaxflowaug.models: parameter counts, shapes, BatchNorm modes, validation."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflowaug import models


def _num_params(variables):
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables['params']))


def _abstract_init(model, shape):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


def _init(model, x):
  return jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x)


def _apply(model, variables, x, train):
  """Jitted apply; in train mode returns (logits, batch_stats updates)."""
  mutable = ['batch_stats'] if train else False
  return jax.jit(lambda v, x: model.apply(v, x, train=train, mutable=mutable))(variables, x)


def test_resnet18_has_the_standard_cifar_parameter_count():
  variables = _abstract_init(models.ResNet18(10), (1, 32, 32, 3))
  assert _num_params(variables) == 11_173_962


def test_resnet_width_scales_channels():
  variables = _abstract_init(models.get('ResNet18', num_classes=10, width=16), (1, 32, 32, 3))
  params = variables['params']
  assert params['conv_init']['kernel'].shape == (3, 3, 3, 16)
  assert params['Dense_0']['kernel'].shape == (16 * 8, 10)


def _small_cnn_count(padding_out, classes=10, hidden=100):
  conv = 4 * 4 * 1 * 16 + 16 + 4 * 4 * 16 * 32 + 32 + 4 * 4 * 32 * 64 + 64
  bn = 2 * (16 + 32 + 64)
  dense = padding_out * padding_out * 64 * hidden + hidden + hidden * classes + classes
  return conv + bn + dense


@pytest.mark.parametrize('kwargs,spatial,expected', [
    ({}, 3, 100_262),                                          # authors' padding 1
    ({'padding': 'SAME', 'hidden_relu': True}, 4, 145_062),
])
def test_small_cnn_parameter_count(kwargs, spatial, expected):
  assert _small_cnn_count(spatial) == expected
  variables = _abstract_init(models.SmallCNN(10, **kwargs), (1, 28, 28, 1))
  assert _num_params(variables) == expected


@pytest.mark.parametrize('name,shape', [
    ('SmallCNN', (3, 28, 28, 1)),
    ('_ResNetTiny', (3, 8, 8, 3)),
    ('_ResNetTiny', (3, 6, 10, 3)),
])
def test_output_shape_and_dtype(name, shape):
  model = models.get(name, num_classes=7)
  x = jax.random.uniform(jax.random.key(1), shape)
  variables = _init(model, x)
  logits = _apply(model, variables, x, train=False)
  chex.assert_shape(logits, (shape[0], 7))
  assert logits.dtype == jnp.float32
  chex.assert_tree_all_finite(logits)


def test_bfloat16_activations_keep_float32_params_and_logits():
  model = models.get('_ResNetTiny', num_classes=4, dtype=jnp.bfloat16)
  x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
  variables = _init(model, x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables['params']))
  assert _apply(model, variables, x, train=False).dtype == jnp.float32


@pytest.mark.parametrize('name,shape', [('SmallCNN', (4, 28, 28, 1)),
                                        ('_ResNetTiny', (4, 8, 8, 3))])
def test_batchnorm_train_uses_batch_statistics_and_eval_running_ones(name, shape):
  model = models.get(name, num_classes=5)
  x = jax.random.uniform(jax.random.key(1), shape)
  variables = _init(model, x)
  # Change every example but the first.
  x2 = x.at[1:].set(jax.random.uniform(jax.random.key(2), x[1:].shape))

  logits, updates = _apply(model, variables, x, train=True)
  logits2, _ = _apply(model, variables, x2, train=True)
  assert not np.allclose(logits[0], logits2[0], atol=1e-4)   # batch statistics couple them
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), updates['batch_stats'],
                         variables['batch_stats'])
  assert all(jax.tree.leaves(changed))

  eval1 = _apply(model, variables, x, train=False)
  eval2 = _apply(model, variables, x2, train=False)
  np.testing.assert_allclose(eval1[0], eval2[0], rtol=1e-5, atol=1e-5)
  # Eval mode reads the running statistics: after the update, outputs change.
  eval3 = _apply(model, {**variables, **updates}, x, train=False)
  assert not np.allclose(eval1, eval3, atol=1e-4)


def test_input_is_standardised_inside_the_model():
  x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
  mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
  shifted = models.get('_ResNetTiny', num_classes=3, mean=mean, std=std)
  plain = models.get('_ResNetTiny', num_classes=3, mean=(0., 0., 0.), std=(1., 1., 1.))
  variables = _init(plain, x)
  x_std = (x - jnp.array(mean)) / jnp.array(std)
  np.testing.assert_allclose(_apply(shifted, variables, x, train=False),
                             _apply(plain, variables, x_std, train=False), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('x,match', [
    (jnp.zeros((28, 28, 1)), 'rank-4'),
    (jnp.zeros((2, 28, 28, 3)), 'channels'),
    (jnp.zeros((2, 28, 28, 1), jnp.uint8), 'floating'),
])
def test_bad_input_raises(x, match):
  model = models.SmallCNN(10)
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def test_bad_mean_std_and_unknown_name_raise():
  with pytest.raises(ValueError, match='std'):
    _abstract_init(models.SmallCNN(10, mean=(0., 0.)), (1, 28, 28, 1))
  with pytest.raises(ValueError, match='ResNet18'):
    models.get('ResNet19', num_classes=10)
