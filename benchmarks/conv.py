"""Convolution speed on this machine: `lax.conv_general_dilated` vs `jaxflowaug.conv`.

Run from the repository root: `python -m benchmarks.conv [--quick]`. Prints and returns

* ``products``: per shape, the time of each formulation of each product (forward, input
  gradient, weight gradient; see `jaxflowaug.conv`), the data behind `choose_plan`;
* ``plans``: per shape, forward+backward time under a few `Plan`s (and the chosen one);
* ``convs``: per shape, forward and forward+backward (grad w.r.t. input and kernel) time
  and GFLOP/s, plain lax vs `jaxflowaug.conv.conv_general_dilated`;
* ``resnet18``: one SGD train step of a CIFAR ResNet-18 (batch 32), `nn.Conv` vs `Conv`,
  with XLA's default options and with `NO_YNN`.

FLOPs: a convolution is F = 2*N*OH*OW*KH*KW*C*O; forward+backward counts 3F. Times are the
minimum over interleaved repeats (the CPU may be shared), so ratios within one run are
the meaningful numbers.
"""
import functools
import json
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxflowaug import conv

_DN = ("NHWC", "HWIO", "NHWC")

# (N, H, W, C, O, K, stride), SAME padding.
SHAPES = {
    "3x3 64-64 b128 32x32": (128, 32, 32, 64, 64, 3, 1),
    "r18 stem 3-64 32x32": (32, 32, 32, 3, 64, 3, 1),
    "r18 3x3 64-64 32x32": (32, 32, 32, 64, 64, 3, 1),
    "r18 3x3 64-128 s2": (32, 32, 32, 64, 128, 3, 2),
    "r18 1x1 64-128 s2": (32, 32, 32, 64, 128, 1, 2),
    "r18 3x3 128-128 16x16": (32, 16, 16, 128, 128, 3, 1),
    "r18 3x3 128-256 s2": (32, 16, 16, 128, 256, 3, 2),
    "r18 1x1 128-256 s2": (32, 16, 16, 128, 256, 1, 2),
    "r18 3x3 256-256 8x8": (32, 8, 8, 256, 256, 3, 1),
    "r18 3x3 256-512 s2": (32, 8, 8, 256, 512, 3, 2),
    "r18 1x1 256-512 s2": (32, 8, 8, 256, 512, 1, 2),
    "r18 3x3 512-512 4x4": (32, 4, 4, 512, 512, 3, 1),
    "3x3 512-512 b128 4x4": (128, 4, 4, 512, 512, 3, 1),
    "glow 3x3 6-512 16x16": (32, 16, 16, 6, 512, 3, 1),
    "glow 1x1 512-512 16x16": (32, 16, 16, 512, 512, 1, 1),
    "glow 3x3 512-12 16x16": (32, 16, 16, 512, 12, 3, 1),
    "glow 3x3 24-512 8x8": (32, 8, 8, 24, 512, 3, 1),
}
QUICK = ("3x3 64-64 b128 32x32", "r18 3x3 64-128 s2", "r18 1x1 64-128 s2",
         "r18 3x3 512-512 4x4", "glow 3x3 6-512 16x16")


def _min_times(fns: dict, args: tuple, reps: int) -> dict:
  """Minimum wall time (s) of each fn(*args) (jitted here unless it already is), repeats
  interleaved across fns."""
  jitted = {name: f if hasattr(f, "lower") else jax.jit(f) for name, f in fns.items()}
  for f in jitted.values():
    jax.block_until_ready(f(*args))
  best = dict.fromkeys(jitted, float("inf"))
  for _ in range(reps):
    for name, f in jitted.items():
      t0 = time.perf_counter()
      jax.block_until_ready(f(*args))
      best[name] = min(best[name], time.perf_counter() - t0)
  return best


def _problem(shape):
  n, h, w, c, o, k, s = shape
  x = jax.random.normal(jax.random.PRNGKey(0), (n, h, w, c))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (k, k, c, o)) / (k * k * c) ** 0.5
  strides, pads, _ = conv.cpu_plan(x, kernel, (s, s), "SAME", dimension_numbers=_DN)
  oh, ow = (-(-h // s), -(-w // s))
  dy = jax.random.normal(jax.random.PRNGKey(2), (n, oh, ow, o))
  return x, kernel, dy, strides, pads, 2 * n * oh * ow * k * k * c * o


def product_times(shape, reps: int = 3) -> dict:
  """Seconds of each form (`conv.FORMS`) of forward, input and weight gradient at `shape`.

  The gradients are JAX's transposes of the form, as `conv.planned_conv` uses them.
  """
  x, kernel, dy, strides, pads, _ = _problem(shape)
  fns = {}
  for form in conv.FORMS:
    f = functools.partial(conv.conv_form, form, strides=strides, pads=pads)
    fns[f"forward {form}"] = lambda x_, k_, dy_, f=f: f(x_, k_)
    fns[f"input_grad {form}"] = lambda x_, k_, dy_, f=f: jax.vjp(lambda a: f(a, k_), x_)[1](dy_)
    fns[f"weight_grad {form}"] = lambda x_, k_, dy_, f=f: jax.vjp(lambda b: f(x_, b), k_)[1](dy_)
  return _min_times(fns, (x, kernel, dy), reps)


def plan_times(shape, reps: int = 3) -> dict:
  """Forward+backward seconds of `conv.planned_conv` under candidate plans at `shape`:
  all-lax, all-im2col, im2col gradients only, and `conv.choose_plan`'s."""
  x, kernel, dy, strides, pads, _ = _problem(shape)
  plans = {"lax/lax/lax": conv.Plan("lax", "lax", "lax"),
           "im2col/im2col/im2col": conv.Plan("im2col", "im2col", "im2col"),
           "lax/im2col/im2col": conv.Plan("lax", "im2col", "im2col"),
           "chosen": conv.choose_plan(kernel.shape, strides)}
  fns = {}
  for name, plan in plans.items():
    f = functools.partial(conv.planned_conv, strides=strides, pads=pads, plan=plan)
    fns[name] = lambda x_, k_, dy_, f=f: jax.grad(
        lambda a, b: jnp.vdot(f(a, b), dy_), (0, 1))(x_, k_)
  return _min_times(fns, (x, kernel, dy), reps)


def conv_times(shape, reps: int = 3) -> dict:
  """Forward and forward+backward seconds and GFLOP/s, plain lax vs jaxflowaug.conv."""
  x, kernel, dy, _, _, flops = _problem(shape)
  s = shape[-1]
  impls = {"lax": lax.conv_general_dilated, "ours": conv.conv_general_dilated}
  fns = {}
  for name, impl in impls.items():
    f = functools.partial(impl, window_strides=(s, s), padding="SAME", dimension_numbers=_DN)
    fns[f"{name} fwd"] = lambda x_, k_, dy_, f=f: f(x_, k_)
    fns[f"{name} fwd+bwd"] = lambda x_, k_, dy_, f=f: jax.grad(
        lambda a, b: jnp.vdot(f(a, b), dy_), (0, 1))(x_, k_)
  times = _min_times(fns, (x, kernel, dy), reps)
  out = {}
  for name, t in times.items():
    out[f"{name} ms"] = round(1e3 * t, 2)
    out[f"{name} GFLOP/s"] = round((3 if "bwd" in name else 1) * flops / t / 1e9, 1)
  out["speedup fwd+bwd"] = round(times["lax fwd+bwd"] / times["ours fwd+bwd"], 2)
  return out


class _Block(nn.Module):
  """CIFAR ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN, + (1x1 conv-BN) shortcut."""
  features: int
  stride: int
  conv: Any

  @nn.compact
  def __call__(self, x):
    bn = functools.partial(nn.BatchNorm, use_running_average=False, momentum=0.9)
    y = nn.relu(bn()(self.conv(self.features, (3, 3), self.stride, use_bias=False)(x)))
    y = bn()(self.conv(self.features, (3, 3), use_bias=False)(y))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = bn()(self.conv(self.features, (1, 1), self.stride, use_bias=False)(x))
    return nn.relu(x + y)


class _ResNet18(nn.Module):
  """CIFAR ResNet-18 (3x3 stem, stages of 64/128/256/512, 2 blocks each) with `conv`."""
  conv: Any

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.BatchNorm(use_running_average=False)(self.conv(64, (3, 3), use_bias=False)(x)))
    for stage, features in enumerate((64, 128, 256, 512)):
      for block in range(2):
        x = _Block(features, 2 if stage > 0 and block == 0 else 1, self.conv)(x)
    return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))


# XLA:CPU compiler option (for jax.jit(compiler_options=...)) that keeps convolutions off
# the YNNPACK library fusions (dots stay on them). Alone, a 3x3 weight gradient then runs
# ~3x faster, but in a whole train step XLA emits the convolutions as loop fusions and the
# step is slower; `resnet18_step_times` measures it.
NO_YNN = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def resnet18_step_times(batch: int = 32, reps: int = 3) -> dict:
  """Seconds and images/s of one jitted SGD train step: `nn.Conv` vs `jaxflowaug.conv.Conv`,
  each compiled with XLA:CPU's default options and with `NO_YNN`."""
  x = jax.random.uniform(jax.random.PRNGKey(0), (batch, 32, 32, 3))
  y = jnp.arange(batch) % 10
  tx = optax.sgd(0.1, momentum=0.9)
  steps, state = {}, None
  for name, conv_cls in (("nn.Conv", nn.Conv), ("jaxflowaug Conv", conv.Conv)):
    model = _ResNet18(conv_cls)
    if state is None:
      variables = model.init(jax.random.PRNGKey(1), x)
      state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))

    def step(state, x, y, model=model):
      params, batch_stats, opt_state = state

      def loss_fn(p):
        logits, new = model.apply({"params": p, "batch_stats": batch_stats}, x,
                                  mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new

      (_, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), new["batch_stats"], opt_state

    steps[name] = jax.jit(step)
    steps[f"{name} NO_YNN"] = jax.jit(step, compiler_options=NO_YNN)
  times = _min_times(steps, (state, x, y), reps)
  out = {f"{name} ms": round(1e3 * t, 1) for name, t in times.items()}
  out.update({f"{name} img/s": round(batch / t, 1) for name, t in times.items()})
  return out


def run(quick: bool = False) -> dict:
  """All measurements; `quick` restricts to a few shapes."""
  names = QUICK if quick else tuple(SHAPES)
  result = {"device": str(jax.devices()[0]), "products": {}, "plans": {}, "convs": {}}
  for name in names:
    for section, fn in (("products", product_times), ("plans", plan_times)):
      result[section][name] = {k: round(1e3 * v, 2) for k, v in fn(SHAPES[name]).items()}
    result["convs"][name] = conv_times(SHAPES[name])
    print(name, *(json.dumps(result[k][name]) for k in ("products", "plans", "convs")),
          flush=True)
  result["resnet18"] = resnet18_step_times()
  print("resnet18", json.dumps(result["resnet18"]), flush=True)
  return result


if __name__ == "__main__":
  run(quick="--quick" in sys.argv[1:])
