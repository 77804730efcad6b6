"""The benchmarks' FLOP counter: loops times their trip counts, nominal conv arithmetic."""
import jax
import jax.numpy as jnp
from jax import lax

from benchmarks import harness
from jaxflowaug import conv

DN = ("NHWC", "HWIO", "NHWC")


def test_matmul_and_scan_flops():
  a, b = jnp.ones((4, 6)), jnp.ones((6, 5))
  assert harness.jaxpr_flops(lambda x, y: x @ y, a, b) == 2 * 4 * 6 * 5
  looped = lambda x, y: lax.scan(lambda c, _: (c, x @ y), 0.0, None, length=7)[1]
  assert harness.jaxpr_flops(looped, a, b) == 7 * 2 * 4 * 6 * 5


def test_conv_gradient_counts_nominal_flops():
  """The CPU plan's col2im form computes over the padded frame; the count is the convolution's
  2*out*KH*KW*C_in per product (forward, input and weight gradient), as lax's would be."""
  x, k = jnp.ones((2, 8, 8, 40)), jnp.ones((3, 3, 40, 2))
  assert conv.choose_plan(k.shape, (1, 1)).forward == "col2im"
  loss = lambda fn: lambda a, b: jnp.sum(fn(a, b, (1, 1), "SAME", dimension_numbers=DN) ** 2)
  nominal = 3 * 2 * (2 * 8 * 8 * 2) * 9 * 40
  assert harness.jaxpr_flops(jax.grad(loss(conv.conv_general_dilated), (0, 1)), x, k) == nominal
  assert harness.jaxpr_flops(jax.grad(loss(lax.conv_general_dilated), (0, 1)), x, k) == nominal
