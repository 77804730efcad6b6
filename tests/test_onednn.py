"""oneDNN convolutions through XLA's FFI (jaxflowaug/onednn.py) against lax: values,
reverse-mode derivatives of first and second order, forward mode (jvp, jacfwd) and vmap, odd
sizes, strides and asymmetric padding, inside jit, a fori_loop and calls from many threads; lax
off CPU; and the backend in a ResNet."""
import concurrent.futures

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxflowaug import conv, onednn
from jaxflowaug.models import _ResNetTiny

pytestmark = pytest.mark.skipif(not onednn.available(),
                                reason=f"oneDNN extension: {onednn.unavailable_reason()}")
DN = ("NHWC", "HWIO", "NHWC")
CASES = [  # (x shape, kernel shape, strides, pads)
    ((2, 7, 6, 5), (3, 3, 5, 4), (1, 1), ((1, 1), (1, 1))),
    ((3, 9, 9, 6), (3, 3, 6, 8), (2, 2), ((1, 1), (1, 1))),  # stride 2, odd size
    ((2, 8, 8, 6), (3, 3, 6, 8), (2, 2), ((1, 1), (1, 1))),  # stride does not divide: k != window
    ((2, 8, 7, 4), (1, 1, 4, 10), (2, 2), ((0, 0), (0, 0))),  # ResNet projection
    ((2, 7, 7, 4), (3, 2, 4, 6), (2, 1), ((0, 1), (1, 0))),  # asymmetric everything
    ((8, 2, 2, 6), (3, 3, 6, 8), (1, 1), ((1, 1), (1, 1))),  # kernel > image: Glow's last level
]


def _lax(x, k, strides, pads):
  return lax.conv_general_dilated(x, k, strides, pads, dimension_numbers=DN,
                                  precision=lax.Precision.HIGHEST)


def _inputs(x_shape, k_shape, seed=0):
  kx, kk = jax.random.split(jax.random.key(seed))
  return jax.random.normal(kx, x_shape), jax.random.normal(kk, k_shape) / np.sqrt(
      np.prod(k_shape[:3]))


@pytest.mark.parametrize("x_shape,k_shape,strides,pads", CASES)
def test_values_and_gradients_match_lax(x_shape, k_shape, strides, pads):
  x, k = _inputs(x_shape, k_shape)
  ours = jax.jit(lambda x, k: onednn.conv(x, k, strides, pads))(x, k)
  chex.assert_trees_all_close(ours, _lax(x, k, strides, pads), rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k, strides, pads)))  # a non-trivial cotangent
  grads = jax.jit(jax.grad(loss(onednn.conv), (0, 1)))(x, k)
  chex.assert_trees_all_close(grads, jax.grad(loss(_lax), (0, 1))(x, k), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("x_shape,k_shape,strides,pads", CASES[1:3])
def test_second_order_matches_lax(x_shape, k_shape, strides, pads):
  """grad of a function of the gradient (as a gradient penalty), w.r.t. input and kernel: runs
  through the custom VJPs of the backward-data and backward-weights calls."""
  x, k = _inputs(x_shape, k_shape, seed=1)

  def penalty(f):
    def inner(x, k):
      return jnp.sum(jnp.tanh(f(x, k, strides, pads)))
    def outer(x, k):
      gx, gk = jax.grad(inner, (0, 1))(x, k)
      return jnp.sum(gx ** 2) + jnp.sum(jnp.cos(gk))
    return outer

  ours = jax.jit(jax.grad(penalty(onednn.conv), (0, 1)))(x, k)
  reference = jax.grad(penalty(_lax), (0, 1))(x, k)
  for a, b in zip(ours, reference):  # entries up to ~80: float32 sums differ by ~1e-5 of that
    chex.assert_trees_all_close(a, b, atol=1e-5 * float(jnp.abs(b).max()))


def test_calls_from_many_threads():
  """Primitives are created on one thread and run on others (XLA runs a call on whichever of its
  threads is free); with oneDNN's thread-local scratchpad this crashed in the gemm-based weight
  gradient of tiny images. Four Python threads each run a jitted step of independent products
  (which XLA may run on its threads at once) and must get the single-threaded result."""
  x, k = _inputs(*CASES[-1][:2], seed=9)
  strides, pads = CASES[-1][2:]

  def step(x, k):
    y = [jax.grad(lambda x, k: jnp.sum(jnp.sin(onednn.conv(x * s, k, strides, pads))),
                  (0, 1))(x, k) for s in (1.0, 2.0, 3.0)]
    return jax.tree.map(lambda *a: sum(a), *y)

  step = jax.jit(step)
  want = step(x, k)
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    results = list(pool.map(lambda i: step(x + 0 * i, k), range(40)))
  for got in results:
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)


def test_strided_1x1_runs_as_unit_stride_on_gathered_pixels():
  """oneDNN's strided 1x1 weight gradient writes past its workspace for C < 8 (oneDNN issue
  6035): at this shape (a smoke ResNet's first projection, batch 16) it hung in a spin barrier
  with 2 threads and gave wrong weight gradients inside a train step. `conv` gathers the pixels
  itself, so every oneDNN call has unit stride, and the gradients are lax's, call after call."""
  x, k = _inputs((16, 32, 32, 4), (1, 1, 4, 8), seed=5)
  strides, pads = (2, 2), ((0, 1), (1, 0))
  loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k, strides, pads)))  # noqa: E731
  f = jax.jit(jax.grad(loss(onednn.conv), (0, 1)))
  text = f.trace(x, k).lower().as_text()
  calls = [line for line in text.splitlines() if "jaxflowaug_onednn_" in line]
  assert len(calls) == 3 and all("sh = 1 " in c and "sw = 1 " in c for c in calls), calls
  want = jax.grad(loss(_lax), (0, 1))(x, k)
  for _ in range(10):
    chex.assert_trees_all_close(f(x, k), want, rtol=1e-4, atol=1e-4)


def test_inside_fori_loop_like_pgd():
  """Three signed-gradient steps on the input through a fori_loop, as A-LA/PGD do."""
  x, k = _inputs((2, 8, 8, 3), (3, 3, 3, 4), seed=2)
  strides, pads = (1, 1), ((1, 1), (1, 1))

  def attack(f):
    def body(_, x):
      return x + 0.1 * jnp.sign(jax.grad(lambda x: jnp.sum(f(x, k, strides, pads) ** 2))(x))
    return jax.jit(lambda x: lax.fori_loop(0, 3, body, x))

  chex.assert_trees_all_close(attack(onednn.conv)(x), attack(_lax)(x), atol=1e-5)


def test_cpu_backend_onednn_in_a_resnet():
  """`set_cpu_backend("onednn")`: the ResNet's convolutions become FFI calls (no convolution
  or im2col matmul left in the program) with the same logits and parameter gradients."""
  model = _ResNetTiny(num_classes=10)
  x = jax.random.uniform(jax.random.key(3), (4, 16, 16, 3))
  variables = model.init(jax.random.key(4), x, train=False)

  def loss(params):
    logits, _ = model.apply({**variables, "params": params}, x, train=True,
                            mutable=["batch_stats"])
    return jnp.mean(jax.nn.log_softmax(logits)[:, 0])

  step = lambda: jax.jit(jax.value_and_grad(loss))  # noqa: E731  (traced under each backend)
  with conv.using_cpu_backend("lax"):
    reference = step()(variables["params"])
  with conv.using_cpu_backend("onednn"):
    fn = step()
    text = fn.trace(variables["params"]).lower().as_text()
    ours = fn(variables["params"])
  assert text.count("jaxflowaug_onednn_forward") == 6  # stem, 2 blocks x 2, one projection
  assert "stablehlo.convolution" not in text
  chex.assert_trees_all_close(ours, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("x_shape,k_shape,strides,pads", CASES[2:])
def test_forward_mode_matches_lax(x_shape, k_shape, strides, pads):
  """jvp in both operands, and jacfwd (a vmap of jvps: the batch of tangents folds into N) of a
  nonlinear function of the convolution, as the flows' brute-force Jacobian tests take."""
  x, k = _inputs(x_shape, k_shape, seed=5)
  tx, tk = _inputs(x_shape, k_shape, seed=6)
  f = lambda c: lambda x, k: jnp.tanh(c(x, k, strides, pads))  # noqa: E731
  ours = jax.jit(lambda *a: jax.jvp(f(onednn.conv), a[:2], a[2:]))(x, k, tx, tk)
  chex.assert_trees_all_close(ours, jax.jvp(f(_lax), (x, k), (tx, tk)), rtol=1e-4, atol=1e-5)
  jac = jax.jit(jax.jacfwd(f(onednn.conv), (0, 1)))(x, k)
  chex.assert_trees_all_close(jac, jax.jacfwd(f(_lax), (0, 1))(x, k), rtol=1e-4, atol=1e-5)


def test_vmap_batches_and_per_example_gradients_match_lax():
  """vmap over the input (folded into N, one call), over per-example gradients (the kernel's is a
  batched weight-gradient product: the lax reference, vmapped) and over kernels (likewise)."""
  xs, k = _inputs((3, 2, 7, 7, 4), (3, 3, 4, 5), seed=7)
  _, ks = _inputs((1,), (2, 3, 3, 4, 5), seed=8)
  strides, pads = (2, 1), ((1, 1), (0, 1))
  loss = lambda c: lambda x, k: jnp.sum(jnp.sin(c(x, k, strides, pads)))  # noqa: E731
  cases = [(lambda c: jax.vmap(lambda x: c(x, k, strides, pads)), (xs,)),
           (lambda c: jax.vmap(jax.grad(loss(c), (0, 1)), (0, None)), (xs, k)),
           (lambda c: jax.vmap(lambda k: c(xs[0], k, strides, pads)), (ks,))]
  for make, args in cases:
    chex.assert_trees_all_close(jax.jit(make(onednn.conv))(*args), make(_lax)(*args),
                                rtol=1e-4, atol=1e-5)
  text = jax.jit(cases[0][0](onednn.conv)).trace(xs).lower().as_text()
  assert text.count("jaxflowaug_onednn_forward") == 1 and "convolution" not in text


def test_lowered_as_lax_off_cpu():
  """The primitives lower to lax's convolutions for GPU/TPU: no FFI call in those programs."""
  x, k = _inputs((2, 8, 8, 3), (3, 3, 3, 4))
  f = jax.jit(jax.grad(lambda x, k: jnp.sum(onednn.conv(x, k, (1, 1), ((1, 1), (1, 1))) ** 2),
                       (0, 1)))
  for platform in ("cuda", "tpu"):
    text = f.trace(x, k).lower(lowering_platforms=(platform,)).as_text()
    assert text.count("stablehlo.convolution") == 3 and "custom_call" not in text, platform
