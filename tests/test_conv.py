"""jaxflowaug.conv equals lax.conv_general_dilated (values and derivatives), and is the path taken on CPU.

These tests are of the plans (`planned_conv`), which every test here runs under (the fixture);
the oneDNN backend, the default where it builds, is tested in test_onednn.py."""
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxflowaug import conv, onednn

DN = ("NHWC", "HWIO", "NHWC")
TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(autouse=True)
def _plans():
  with conv.using_cpu_backend("plans"):
    yield


def _inputs(n=2, h=7, w=6, c=5, o=4, k=3, dtype=jnp.float32):
  kx, kk = jax.random.split(jax.random.PRNGKey(0))
  x = jax.random.normal(kx, (n, h, w, c), dtype)
  kernel = (jax.random.normal(kk, (k, k, c, o)) / np.sqrt(k * k * c)).astype(dtype)
  return x, kernel


def _value_and_grads(f, x, kernel):
  """f(x, k), and d/dx, d/dk of <f(x, k), r> for a fixed random cotangent r."""
  y, vjp = jax.vjp(f, x, kernel)
  r = jax.random.normal(jax.random.PRNGKey(1), y.shape, y.dtype)
  return (y, *vjp(r))


def _assert_close(got, want, scaled=False, **tol):
  """Leaf-by-leaf: same structure, shapes and dtypes, and close values. `scaled`: the absolute
  tolerance of a leaf is `atol` times its largest magnitude (for leaves whose entries are sums
  of float32 terms far larger than some of the entries, where the rounding error of a small
  entry follows the size of its terms and the CPU's order of summation, not its own size)."""
  chex.assert_trees_all_equal_structs(got, want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
    g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
    leaf_tol = dict(tol or TOL)
    if scaled:
      leaf_tol["atol"] *= max(1.0, float(np.max(np.abs(w))))
    np.testing.assert_allclose(g, w, **leaf_tol)


# Every form in every role (primal, x-tangent, k-tangent), plus mixes.
PLANS = [conv.Plan(f, f, f) for f in conv.FORMS] + [
    conv.Plan("lax", "im2col", "lax"), conv.Plan("im2col", "shifted", "lax"),
    conv.Plan("shifted", "lax", "im2col"), conv.Plan("lax", "col2im", "shifted"),
    conv.Plan("col2im", "im2col", "lax"), conv.Plan("lax", "im2col", "im2col", True),
    conv.Plan("onednn", "im2col", "onednn"), conv.Plan("lax", "onednn", "col2im")]


@pytest.mark.parametrize("plan", PLANS, ids=str)
def test_every_form_matches_lax(plan):
  """Primal, input and weight gradients, and forward-mode tangent equal lax's."""
  if "onednn" in (plan.forward, plan.input_grad, plan.weight_grad) and not onednn.available():
    pytest.skip(f"oneDNN extension: {onednn.unavailable_reason()}")
  x, kernel = _inputs()
  strides, pads = (2, 1), ((1, 2), (0, 1))
  mine = functools.partial(conv.planned_conv, strides=strides, pads=pads, plan=plan)
  ref = functools.partial(lax.conv_general_dilated, window_strides=strides, padding=pads,
                          dimension_numbers=DN)
  _assert_close(_value_and_grads(mine, x, kernel), _value_and_grads(ref, x, kernel))
  tangents = (jnp.cos(x), jnp.sin(kernel))
  _assert_close(jax.jvp(mine, (x, kernel), tangents), jax.jvp(ref, (x, kernel), tangents))


@pytest.mark.parametrize("k,stride,padding,c,o", [
    (1, 1, "SAME", 5, 4), (1, 2, "SAME", 40, 4), (1, 2, "VALID", 5, 4),
    (3, 1, "SAME", 5, 4), (3, 1, "SAME", 40, 4), (3, 2, "SAME", 5, 4), (3, 2, "SAME", 40, 4),
    (3, 1, "VALID", 40, 4), (3, 2, ((1, 0), (2, 1)), 5, 4), (4, 2, ((1, 1), (1, 1)), 40, 4),
    (4, 1, "SAME", 5, 4), (4, 2, "VALID", 40, 4), (3, 1, "SAME", 40, 2),
    (3, 1, ((2, 0), (0, 1)), 40, 2),
])
def test_public_conv_matches_lax_under_jit(k, stride, padding, c, o):
  x, kernel = _inputs(c=c, o=o, k=k)
  args = dict(window_strides=(stride, stride), padding=padding, dimension_numbers=DN)
  mine = jax.jit(lambda a, b: _value_and_grads(
      functools.partial(conv.conv_general_dilated, **args), a, b))
  ref = jax.jit(lambda a, b: _value_and_grads(
      functools.partial(lax.conv_general_dilated, **args), a, b))
  assert conv.cpu_plan(x, kernel, **args) is not None
  _assert_close(mine(x, kernel), ref(x, kernel))


def test_cpu_takes_planned_path():
  """The staged program holds the custom JVP for CPU; compiled on CPU, a 1x1 convolution and
  both its gradients are matmuls (lax's own program keeps convolutions)."""
  assert jax.default_backend() == "cpu"
  x, kernel = _inputs(k=1)
  primal = lambda fn: lambda a, b: fn(a, b, (2, 2), "SAME", dimension_numbers=DN)
  f = lambda fn: jax.grad(lambda a, b: jnp.sum(primal(fn)(a, b) ** 2), (0, 1))
  jaxpr = str(jax.make_jaxpr(primal(conv.conv_general_dilated))(x, kernel))
  assert "platform_index" in jaxpr and "custom_jvp_call" in jaxpr
  assert conv.cpu_plan(x, kernel, (2, 2), "SAME", dimension_numbers=DN)[2] == conv.Plan(
      "im2col", "im2col", "im2col")
  hlo = jax.jit(f(conv.conv_general_dilated)).lower(x, kernel).compile().as_text()
  lax_hlo = jax.jit(f(lax.conv_general_dilated)).lower(x, kernel).compile().as_text()
  assert "convolution(" in lax_hlo
  assert "convolution(" not in hlo and "dot(" in hlo


def test_other_platforms_lower_to_plain_lax():
  """Lowered for GPU/TPU (no device needed) only lax's convolutions remain; for CPU none."""
  x, kernel = _inputs(k=1)
  f = jax.jit(jax.grad(lambda a, b: jnp.sum(conv.conv_general_dilated(
      a, b, (1, 1), "SAME", dimension_numbers=DN) ** 2), (0, 1)))
  for platform, convs in (("cuda", 3), ("tpu", 3), ("cpu", 0)):
    text = f.trace(x, kernel).lower(lowering_platforms=(platform,)).as_text()
    assert text.count("stablehlo.convolution") == convs, platform
    assert ("stablehlo.dot_general" in text) == (convs == 0), platform


def test_switch_off_gives_plain_lax_on_cpu_too():
  """`set_cpu_backend("lax")`: the staged program is lax's own (convolutions in every product),
  with the same values; switching back restores the plans."""
  x, kernel = _inputs(k=3)
  grad = lambda a, b: jax.grad(lambda a, b: jnp.sum(conv.conv_general_dilated(
      a, b, (1, 1), "SAME", dimension_numbers=DN) ** 2), (0, 1))(a, b)
  planned = grad(x, kernel)
  with conv.using_cpu_backend("lax"):
    assert conv.cpu_plan(x, kernel, (1, 1), "SAME", dimension_numbers=DN) is None
    text = jax.jit(grad).trace(x, kernel).lower().as_text()
    assert text.count("stablehlo.convolution") == 3 and "custom_jvp" not in text
    chex.assert_trees_all_close(grad(x, kernel), planned, rtol=1e-4, atol=1e-4)
  assert conv.cpu_plan(x, kernel, (1, 1), "SAME", dimension_numbers=DN) is not None


def test_unknown_cpu_backend_is_refused_naming_the_choices():
  with pytest.raises(ValueError, match="one of .*onednn"):
    conv.set_cpu_backend("mkldnn")
  assert conv.cpu_backend() == "plans"  # unchanged (this module's fixture sets the plans)


def test_default_cpu_backend_is_onednn_on_one_device_else_plans(monkeypatch):
  """The default (no JAXFLOWAUG_CPU_CONV): oneDNN where it builds and one CPU device runs the
  program; with several, the plans (XLA would run each FFI call on the whole batch)."""
  with conv.using_cpu_backend(None):
    assert conv.cpu_backend() == ("onednn" if onednn.available() else "plans")
    monkeypatch.setattr(jax, "devices", lambda *backend: [object(), object()])
    assert conv.cpu_backend() == "plans"
  monkeypatch.undo()
  assert conv.cpu_backend() == "plans"  # the fixture's explicit choice is back


@pytest.mark.parametrize("c", [3, 40])  # 40: the plan rebuilds the patches (rebuild_patches)
def test_second_order_matches_lax(c):
  x, kernel = _inputs(c=c, o=2, k=3)
  assert conv.choose_plan(kernel.shape, (2, 2)).rebuild_patches == (c >= 32)
  def grad_norm(fn):
    loss = lambda a, b: jnp.sum(jnp.tanh(fn(a, b, (2, 2), "SAME", dimension_numbers=DN)))
    return jax.grad(lambda a, b: jnp.sum(jax.grad(loss, (0, 1))(a, b)[1] ** 2), (0, 1))
  # Entries reach ~2e3 and sum terms of that size: float32 leaves ~1e-4 absolute on an entry of
  # size 1 (seen on an AVX-512 Xeon), so the absolute tolerance follows each leaf's scale.
  _assert_close(grad_norm(conv.conv_general_dilated)(x, kernel),
                grad_norm(lax.conv_general_dilated)(x, kernel), scaled=True, rtol=1e-4, atol=1e-5)


def test_choose_plan():
  assert conv.choose_plan((1, 1, 512, 512), (1, 1)) == conv.Plan(
      "im2col", "im2col", "im2col")
  assert conv.choose_plan((3, 3, 6, 512), (1, 1)) == conv.Plan("lax", "im2col", "im2col")
  assert conv.choose_plan((3, 3, 64, 64), (1, 1)) == conv.Plan("lax", "im2col", "im2col", True)
  assert conv.choose_plan((3, 3, 64, 128), (2, 2)) == conv.Plan("lax", "im2col", "im2col", True)
  assert conv.choose_plan((3, 3, 512, 12), (1, 1)) == conv.Plan(
      "col2im", "col2im", "col2im")
  assert conv.choose_plan((3, 3, 512, 12), (2, 2)).forward == "lax"
  with pytest.raises(ValueError, match="Plan.weight_grad"):
    conv.Plan("lax", "lax", "winograd")


@pytest.mark.parametrize("kwargs,dn", [
    (dict(rhs_dilation=(2, 2)), DN),
    (dict(lhs_dilation=(2, 1), padding=((1, 1), (1, 1))), DN),
    (dict(feature_group_count=5), DN),
    ({}, ("NCHW", "OIHW", "NCHW")),
])
def test_unsupported_falls_back_to_lax(kwargs, dn):
  x, kernel = _inputs(o=5)
  if dn[0] == "NCHW":
    x, kernel = x.transpose(0, 3, 1, 2), kernel.transpose(3, 2, 0, 1)
  if kwargs.get("feature_group_count"):
    kernel = kernel[:, :, :1]
  args = dict(dict(window_strides=(1, 1), padding="SAME", dimension_numbers=dn), **kwargs)
  assert conv.cpu_plan(x, kernel, **args) is None
  mine = functools.partial(conv.conv_general_dilated, **args)
  assert "custom_jvp_call" not in str(jax.make_jaxpr(mine)(x, kernel))
  _assert_close(_value_and_grads(mine, x, kernel),
                _value_and_grads(functools.partial(lax.conv_general_dilated, **args),
                                 x, kernel))


def test_flax_conv_matches_nn_conv():
  x, _ = _inputs(c=6)
  for kw in (dict(kernel_size=(3, 3), strides=2, padding="SAME"),
             dict(kernel_size=(1, 1)), dict(kernel_size=(4, 4), padding=((1, 2), (2, 1)))):
    ours, ref = conv.Conv(8, **kw), nn.Conv(8, **kw)
    params = ref.init(jax.random.PRNGKey(2), x)
    loss = lambda m: lambda p, a: jnp.sum(jnp.tanh(m.apply(p, a)))
    _assert_close(jax.jit(jax.value_and_grad(loss(ours), (0, 1)))(params, x),
                  jax.jit(jax.value_and_grad(loss(ref), (0, 1)))(params, x))
    assert "custom_jvp_call" in str(jax.make_jaxpr(ours.apply)(params, x))


def test_vmap_and_jacfwd():
  x, kernel = _inputs(n=1, h=4, w=4, c=3, o=2)
  args = dict(window_strides=(2, 2), padding="SAME", dimension_numbers=DN)
  mine = functools.partial(conv.conv_general_dilated, **args)
  ref = functools.partial(lax.conv_general_dilated, **args)
  xs = jnp.stack([x, 2 * x, -x])  # (3, 1, 4, 4, 3): vmap over the leading axis
  batched = lambda f: jax.vmap(jax.grad(lambda a, b: jnp.sum(jnp.sin(f(a, b))), (0, 1)),
                               in_axes=(0, None))
  _assert_close(batched(mine)(xs, kernel), batched(ref)(xs, kernel))
  _assert_close(jax.jacfwd(mine, (0, 1))(x, kernel), jax.jacfwd(ref, (0, 1))(x, kernel))


def test_bfloat16_and_preferred_element_type():
  x, kernel = _inputs(c=6, dtype=jnp.bfloat16)
  for pet, precision in ((None, None), (jnp.float32, lax.Precision.HIGHEST)):
    args = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=DN,
                preferred_element_type=pet, precision=precision)
    assert conv.cpu_plan(x, kernel, window_strides=(1, 1), padding="SAME",
                         dimension_numbers=DN)[2].input_grad == "im2col"
    got = _value_and_grads(functools.partial(conv.conv_general_dilated, **args), x, kernel)
    want = _value_and_grads(functools.partial(lax.conv_general_dilated, **args), x, kernel)
    assert got[0].dtype == (pet or jnp.bfloat16)
    chex.assert_trees_all_equal_dtypes(got[1:], (x, kernel))
    _assert_close(got, want, rtol=2e-2, atol=2e-2)
