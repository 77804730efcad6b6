"""The convolution every model and flow in the project uses.

`Conv` is `flax.linen.Conv` with the project's `conv_general_dilated`, a drop-in for
`lax.conv_general_dilated` (same signature, values and derivatives) that differentiates
faster on CPU.

Why: XLA:CPU hands forward convolutions to a fast library kernel, but some convolutions
that autodiff derives for the gradients are awkward for it, e.g. (measured on a 2-core
Xeon, `python -m benchmarks.conv`):

* the weight gradient of a 1x1 convolution, really a matmul, runs as a "convolution" with
  an OHxOW window, 3-6x slower than the matmul;
* with few input channels (Glow's coupling nets, 6 -> 512) the input gradient is a
  convolution with few output channels, which the kernel library handles poorly;
* the input gradient of a strided convolution convolves an interior-padded (mostly zero)
  cotangent.

Math. NHWC input x[n, h, w, c], HWIO kernel k[i, j, c, o], strides (sh, sw), padding
((ph_lo, ph_hi), (pw_lo, pw_hi)), xp = zero-padded x, output (N, OH, OW, O) with
OH = (H + ph_lo + ph_hi - KH) // sh + 1. With the "taps"
T_ij[n, a, b, c] = xp[n, a*sh + i, b*sw + j, c] (one strided slice of xp per kernel
position) the convolution is y = sum_ij T_ij @ k[i, j], which can be written as

* ``"lax"``: `lax.conv_general_dilated`;
* ``"im2col"``: one matmul y = P @ k.reshape(KH*KW*C, O) with the patches
  P[n, a, b, (i*KW + j)*C + c] = T_ij[n, a, b, c];
* ``"shifted"``: KH*KW matmuls y = sum_ij T_ij @ k[i, j], no patch matrix;
* ``"col2im"``: one matmul U = x @ k, contracting C, to (N, H, W, KH, KW, O), then
  y = sum_ij S_ij(U[..., i, j, :]) with S_ij moving tap (i, j) into the output frame
  (y_ij[n, a, b] = U[n, a*sh + i - ph_lo, b*sw + j - pw_lo, i, j], zero outside x): im2col
  gathers before the matmul, col2im after it; cheap when KH*KW*O is small;
* ``"onednn"``: oneDNN's convolution (`jaxflowaug.onednn`, float32 only), a bilinear JAX
  primitive whose transposes are oneDNN's backward-data and backward-weights kernels.

All are linear in x and in k, so JAX's transposes of them are the gradients:
for the weight, "lax" gives lax's backward-filter convolution, "im2col" dk = P^T @ dy,
"shifted" dk[i, j] = T_ij^T @ dy, and "col2im" dk = x^T @ E with E the KH*KW copies
E_ij = S_ij^T dy of the cotangent moved into x's frame (`lax.pad`, interior padding
stride - 1); for the input, "lax" gives lax's backward-input convolution, "im2col" one matmul
G = dy @ k.reshape(-1, O)^T whose KH*KW slices are scattered back by `lax.pad` and summed,
"shifted" the same with KH*KW matmuls, and "col2im" dx = E @ k^T, one matmul contracting
KH*KW*O.

`planned_conv` is a `jax.custom_jvp` whose primal uses one form and whose tangent
dy = conv(dx, k) + conv(x, dk) uses a form per term (a `Plan`), so reverse mode
gets the chosen gradient forms while forward mode (jvp, jacfwd), vmap, jit and
higher-order derivatives keep working. Residuals: an "im2col" weight-tangent form keeps P
(KH*KW times x) for the backward pass, unless the plan says `rebuild_patches`: then that term
runs under `jax.checkpoint` (nothing saved), and the backward pass keeps x and rebuilds P from
it; "shifted" keeps the padded x, "col2im" x itself.

Switch. `set_cpu_backend(name)` (initially the environment variable JAXFLOWAUG_CPU_CONV)
chooses what `conv_general_dilated` runs on CPU (`train.main` logs it, `results.json` records
it):

* ``"onednn"`` (the default where the extension builds and the process sees one CPU device):
  float32 convolutions by `onednn_plan`: oneDNN's kernels (PyTorch's, called through XLA's
  FFI, built on first use) for the forward and both gradients, except the input gradient of a
  convolution with fewer than 8 input channels, which keeps the plans' form. On the 2-core
  EPYC (BENCHMARKS.md): ResNet-18's train step 1.4-1.8x the plans' speed, the reduced CIFAR-10
  steps 1.5-3x. Other dtypes keep the plans. XLA cannot partition an FFI call (over several
  CPU devices each would convolve the whole batch), hence the plans there;
* ``"plans"`` (the default otherwise): `choose_plan`'s forms, XLA's own kernels only;
* ``"lax"``: plain `lax.conv_general_dilated` on every platform, for comparison (benchmarks)
  and for a jax whose XLA:CPU no longer needs the plans.

It is read when a function is traced, so set it before jitting.

Platform. `conv_general_dilated` stages `lax.platform_dependent(cpu=planned_conv with
choose_plan(...), default=lax.conv_general_dilated)`: the choice follows the platform
the computation is lowered for (not the default backend) and the compiler never sees a
conditional, so GPU/TPU run plain lax. Arguments outside the supported set (not 2-D
NHWC/HWIO, dilation, groups, negative padding, non-float dtypes, `out_sharding`) are
plain `lax.conv_general_dilated` everywhere.
"""
import contextlib
import dataclasses
import functools
import os
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name
from jax.custom_derivatives import SymbolicZero

from jaxflowaug import onednn

# Flax's dimension numbers for 2-D convolutions: NHWC input and output, HWIO kernel.
_NHWC_HWIO = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                      out_spec=(0, 3, 1, 2))
FORMS = ("lax", "im2col", "shifted", "col2im", "onednn")
# "onednn" computes an input gradient only for at least this many input channels: below it
# oneDNN's backward-data kernel, which vectorises over them, trails the plans' im2col (4x4
# stride 2, 1 -> 16 channels on 28x28, batch 100, in a loop: 2.8-6.2 vs 1.9-3.4 ms per forward
# and input gradient; 6 -> 512 on 16x16: equal; 8 -> 16: 4.2 vs 6.2 ms; 12 -> 512: 5.5 vs 8.4).
ONEDNN_MIN_INPUT_GRAD_CHANNELS = 8

Pads = tuple[tuple[int, int], tuple[int, int]]
CPU_BACKENDS = ("plans", "onednn", "lax")
# The name (`jax.ad_checkpoint.checkpoint_name`) of the oneDNN backend's outputs: opaque FFI
# calls, which remat's `dots_saveable` does not keep; policies that should keep convolution
# outputs also save this name (`flows.bijector.REMAT`).
SAVEABLE = "jaxflowaug_conv"
_SWITCH = {}


def set_cpu_backend(name: str | None) -> None:
  """What convolutions run on CPU: "plans", "onednn" or "lax"; None (or "") for the default,
  "onednn" where its extension builds and the process sees one CPU device, else "plans" (see
  the module doc)."""
  if name and name not in CPU_BACKENDS:
    raise ValueError(f"CPU convolution backend must be one of {CPU_BACKENDS}, got {name!r} "
                     "(from set_cpu_backend or JAXFLOWAUG_CPU_CONV).")
  _SWITCH["cpu"] = name or None


def cpu_backend() -> str:
  """The CPU convolution backend now in force, the default resolved."""
  name = _SWITCH["cpu"]
  if name is None:
    return "onednn" if len(jax.devices("cpu")) == 1 and onednn.available() else "plans"
  return name


@contextlib.contextmanager
def using_cpu_backend(name: str):
  """`set_cpu_backend(name)` for the functions traced inside the block; the backend in force
  before is restored on leaving it."""
  saved = _SWITCH["cpu"]
  set_cpu_backend(name)
  try:
    yield
  finally:
    set_cpu_backend(saved)


set_cpu_backend(os.environ.get("JAXFLOWAUG_CPU_CONV"))


@dataclasses.dataclass(frozen=True)
class Plan:
  """Which form (one of `FORMS`, see the module docstring) computes each product.

  Attributes:
    forward: form of the primal y = conv(x, k).
    input_grad: form of the tangent term conv(dx, k); the input gradient is its transpose.
    weight_grad: form of the tangent term conv(x, dk); the weight gradient is its transpose.
    rebuild_patches: with weight_grad "im2col", rebuild the patch matrix in the backward pass
      instead of keeping it from the forward pass (same values; memory of x, not KH*KW x).
  """
  forward: str
  input_grad: str
  weight_grad: str
  rebuild_patches: bool = False

  def __post_init__(self):
    for field in ("forward", "input_grad", "weight_grad"):
      if getattr(self, field) not in FORMS:
        raise ValueError(f"Plan.{field} must be one of {FORMS}, got {getattr(self, field)!r}.")


def choose_plan(k_shape: Sequence[int], strides: Sequence[int]) -> Plan:
  """The CPU plan for an HWIO kernel of `k_shape` applied with `strides`.

  From `benchmarks/conv.py` and per-op profiles of the Glow train step on a 2-core AVX-512
  Xeon, XLA:CPU 0.10.2. XLA:CPU runs forward convolutions through a fast library kernel
  everywhere, but its own backward convolutions are slow inside a `lax.scan` or `fori_loop`
  body, where the flows' steps and the attacks' PGD iterations run: there the weight gradient
  is 10-40x and the input gradient 2-7x slower than the same products as matmuls (3x3
  convolutions in a scan, batch 8: 64->64 on 32x32 weight gradient 1,135 ms vs 29 ms shifted,
  input gradient 37 ms vs 15 ms im2col; 512->12 on 16x16, the Glow coupling net's output
  layer, input gradient 70 ms vs 11 ms col2im), while outside loops they are on par. So on
  CPU no gradient is a lax convolution:

  * a 1x1 convolution is a matmul in all three products;
  * KH*KW*O small (2 KH KW O <= C, e.g. the coupling net's 512 -> 12) and stride 1: every
    product is "col2im", one matmul with KH*KW*O columns (weight gradient 11 ms vs 27 ms
    shifted for 512->12 in a scan; forward 3.1 ms vs 5.3 ms lax);
  * otherwise both gradients are "im2col" and the forward stays lax. The weight gradient
    P^T @ dy is one matmul contracting N*OH*OW. With few input channels (the coupling nets'
    6 -> 512) it took 6.9 ms vs 14.8 ms "shifted" in a scan. With C >= 32 (ResNet-18's 3x3
    convolutions) "shifted" (KH*KW matmuls over strided tap slices, no patch matrix) was the
    choice until its slices were seen to cost 16% of a ResNet-18 train step (2-core AMD EPYC,
    XLA:CPU 0.10.2, batch 128: 9.6 -> 11.8 img/s with "im2col"; lax's backward-filter
    convolution: 7.3 img/s at batch 64). There P (KH*KW times x) is large and is rebuilt in
    the backward pass (`rebuild_patches`: same speed in that step; with few channels, where P
    is small, rebuilding cost ~5% of the Glow 3x4x64 train step, 108 vs 114 img/s). The input
    gradient stays "im2col" though lax's is 2x faster outside loops (3x3 64->64 on 32x32,
    batch 32: 74 vs 143 ms forward + input gradient), because inside a `fori_loop`, where
    A-LA and PGD differentiate the classifier, lax's is 2-3x slower (220 vs 100 ms per
    iteration). Those ResNet numbers were taken beside another job; on the quiet machine the
    step runs 24.1 img/s with this plan, 24.3 with lax input gradients, 24.7 with an im2col
    forward (equal within noise), 19.9 with "shifted" weight gradients and 12.0 all lax
    (BENCHMARKS.md, issue 17).
  """
  kh, kw, c, o = k_shape
  if kh == kw == 1:
    return Plan("im2col", "im2col", "im2col")
  if 2 * kh * kw * o <= c and all(s == 1 for s in strides):
    return Plan("col2im", "col2im", "col2im")
  return Plan("lax", "im2col", "im2col", rebuild_patches=c >= 32)


def onednn_plan(k_shape: Sequence[int], strides: Sequence[int]) -> Plan:
  """The "onednn" backend's plan: oneDNN's kernels for every product, except the input gradient
  with fewer than `ONEDNN_MIN_INPUT_GRAD_CHANNELS` input channels (`choose_plan`'s form)."""
  input_grad = ("onednn" if k_shape[2] >= ONEDNN_MIN_INPUT_GRAD_CHANNELS
                else choose_plan(k_shape, strides).input_grad)
  return Plan("onednn", input_grad, "onednn")


def _taps(x, k_shape, strides, pads):
  """T_ij[n, a, b, c] = xp[n, a*sh + i, b*sw + j, c], a list in row-major (i, j) order."""
  kh, kw = k_shape[:2]
  sh, sw = strides
  xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
  n, hp, wp, c = xp.shape
  oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
  return [lax.slice(xp, (0, i, j, 0), (n, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, c),
                    (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]


def conv_form(form, x, k, strides, pads, precision=None, preferred_element_type=None):
  """y = conv(x, k), NHWC (N, H, W, C) * HWIO (KH, KW, C, O) -> (N, OH, OW, O), by `form`."""
  if form == "col2im":
    return _col2im(x, k, strides, pads, precision, preferred_element_type)
  if form == "onednn":
    return onednn.conv(x, k, strides, pads)
  if form == "lax":
    return lax.conv_general_dilated(x, k, strides, pads, dimension_numbers=_NHWC_HWIO,
                                    precision=precision,
                                    preferred_element_type=preferred_element_type)
  taps = _taps(x, k.shape, strides, pads)
  dot = functools.partial(lax.dot_general, dimension_numbers=(((3,), (0,)), ((), ())),
                          precision=precision, preferred_element_type=preferred_element_type)
  if form == "im2col":
    patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
    return dot(patches, k.reshape(-1, k.shape[3]))
  return sum(dot(t, kt) for t, kt in zip(taps, k.reshape(len(taps), *k.shape[2:])))


def _col2im(x, k, strides, pads, precision, preferred_element_type):
  """y = sum_ij S_ij(U[..., i, j, :]) with U = x @ k (N, H, W, KH, KW, O), contracting C.

  S_ij moves tap (i, j) into the output frame: y_ij[n, a, b] = U[n, a*sh + i - ph_lo,
  b*sw + j - pw_lo, i, j] (zero outside x), one `lax.pad` (negative where it crops) and a
  strided slice. U is over the unpadded x, so no work is spent on padding and the residual
  a weight gradient keeps is x itself.
  """
  kh, kw = k.shape[:2]
  n, h, w, _ = x.shape
  (ph, ph_hi), (pw, pw_hi) = pads
  out_h = (h + ph + ph_hi - kh) // strides[0] + 1
  out_w = (w + pw + pw_hi - kw) // strides[1] + 1
  span_h, span_w = (out_h - 1) * strides[0] + 1, (out_w - 1) * strides[1] + 1
  u = lax.dot_general(x, k, (((3,), (2,)), ((), ())), precision=precision,
                      preferred_element_type=preferred_element_type)
  zero = jnp.zeros((), u.dtype)
  y = []
  for i in range(kh):
    for j in range(kw):
      tap = u[:, :, :, i, j, :]
      moved = lax.pad(tap, zero, ((0, 0, 0), (ph - i, span_h - h - ph + i, 0),
                                  (pw - j, span_w - w - pw + j, 0), (0, 0, 0)))
      y.append(lax.slice(moved, (0, 0, 0, 0), moved.shape, (1, *strides, 1)))
  return sum(y[1:], y[0])


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5, 6))
def planned_conv(x, k, strides: tuple[int, int], pads: Pads, plan: Plan, precision=None,
                 preferred_element_type=None):
  """NHWC x (N, H, W, C) * HWIO k (KH, KW, C, O) -> y (N, OH, OW, O), products per `plan`.

  Equal to `lax.conv_general_dilated(x, k, strides, pads, dimension_numbers=NHWC/HWIO,
  precision=..., preferred_element_type=...)` with the same derivatives on every
  platform; `plan` only changes speed (and residual memory). `pads` are explicit,
  non-negative ((ph_lo, ph_hi), (pw_lo, pw_hi)).
  """
  return _primal(plan, x, k, strides, pads, precision, preferred_element_type)


def _primal(plan, x, k, *args):
  """conv_form(plan.forward, x, k, ...); a oneDNN output is named `SAVEABLE`, so that remat
  policies that keep convolution outputs (dots_saveable sees only lax's) keep it too."""
  y = conv_form(plan.forward, x, k, *args)
  return checkpoint_name(y, SAVEABLE) if plan.forward == "onednn" else y


def _planned_conv_jvp(strides, pads, plan, precision, preferred_element_type, primals,
                      tangents):
  """dy = conv(dx, k) [form plan.input_grad] + conv(x, dk) [form plan.weight_grad].

  With symbolic zeros an unperturbed input contributes no term (JAX calls the rule only
  when at least one input is perturbed).
  """
  x, k = primals
  dx, dk = tangents
  conv = functools.partial(conv_form, strides=strides, pads=pads, precision=precision,
                           preferred_element_type=preferred_element_type)
  terms = []
  if not isinstance(dx, SymbolicZero):
    terms.append(conv(plan.input_grad, dx, k))
  if not isinstance(dk, SymbolicZero):
    weight_term = functools.partial(conv, plan.weight_grad)
    if plan.rebuild_patches and plan.weight_grad == "im2col":
      weight_term = jax.checkpoint(weight_term, policy=jax.checkpoint_policies.nothing_saveable)
    terms.append(weight_term(x, dk))
  return (_primal(plan, x, k, strides, pads, precision, preferred_element_type),
          sum(terms[1:], terms[0]))


planned_conv.defjvp(_planned_conv_jvp, symbolic_zeros=True)


def cpu_plan(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
             dimension_numbers=None, feature_group_count=1, batch_group_count=1,
             preferred_element_type=None,
             out_sharding=None) -> tuple[tuple[int, int], Pads, Plan] | None:
  """(strides, explicit pads, Plan) used on CPU for these arguments, or None for plain lax.

  The arguments are those of `lax.conv_general_dilated`. The plan is `onednn_plan`'s under the
  "onednn" backend for float32, else `choose_plan`'s. None means the configuration is
  outside the supported set: not 2-D NHWC/HWIO, dilated, grouped, negatively padded,
  non-floating, or with an explicit `out_sharding`.
  """
  backend = cpu_backend()
  if (backend == "lax" or lhs.ndim != 4 or rhs.ndim != 4 or feature_group_count != 1
      or batch_group_count != 1
      or out_sharding is not None
      or any(d != 1 for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
      or not jnp.issubdtype(lhs.dtype, jnp.floating)
      or not jnp.issubdtype(rhs.dtype, jnp.floating)):
    return None
  if lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != _NHWC_HWIO:
    return None
  strides = tuple(int(s) for s in window_strides)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  if any(p < 0 for pair in pads for p in pair):
    return None
  if backend == "onednn" and lhs.dtype == rhs.dtype == jnp.float32 and (
      preferred_element_type in (None, jnp.float32)):
    return strides, pads, onednn_plan(rhs.shape, strides)
  return strides, pads, choose_plan(rhs.shape, strides)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None,
                         out_sharding=None):
  """`lax.conv_general_dilated` (same signature, values and derivatives), fast on CPU.

  For supported arguments (see `cpu_plan`) this stages `lax.platform_dependent(
  cpu=planned_conv(..., plan), default=lax.conv_general_dilated)`; otherwise it is
  `lax.conv_general_dilated` itself.
  """
  lax_conv = functools.partial(
      lax.conv_general_dilated, window_strides=window_strides, padding=padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type, out_sharding=out_sharding)
  spec = cpu_plan(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                  dimension_numbers, feature_group_count, batch_group_count,
                  preferred_element_type, out_sharding)
  if spec is None:
    return lax_conv(lhs, rhs)
  strides, pads, plan = spec
  cpu_conv = functools.partial(planned_conv, strides=strides, pads=pads, plan=plan,
                               precision=precision,
                               preferred_element_type=preferred_element_type)
  return lax.platform_dependent(lhs, rhs, cpu=cpu_conv, default=lax_conv)


Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
