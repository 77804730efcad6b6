"""Flow speed: forward, inverse and train step (img/s, FLOPs, compile time) per flow config.

  python -m benchmarks.flow            # prints a table; `benchmarks.run` records it
Flows: the CIFAR-10 Glow (3 levels x 32 steps x 512, the paper's), its reduced `:cpu` variant,
and the conditional dense Fashion-MNIST flow. Also the compile time of the Glow train step as
its depth grows (steps run under `nn.scan`, so it should stay flat).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from configs import cifar10_flow, fmnist_flow
from train import models
from train.stages import flow as flow_stage


def _batch(shape, batch, num_classes=10):
  rng = np.random.default_rng(0)
  return {"image": jnp.asarray(rng.integers(0, 256, (batch,) + shape, dtype=np.uint8)),
          "label": jnp.asarray(np.arange(batch) % num_classes, dtype=jnp.int32)}


def flow_setups(accelerator: bool):
  """(name, config, image shape, batch) of each flow measured."""
  cifar_batch = 64 if accelerator else 8
  return [("Glow 3x32x512 (CIFAR-10)", cifar10_flow.get_config(), (32, 32, 3), cifar_batch),
          ("Glow 3x4x64 (CIFAR-10 :cpu)", cifar10_flow.get_config("cpu"), (32, 32, 3), 64),
          ("DenseFlow 12x512 (Fashion-MNIST)", fmnist_flow.get_config(), (28, 28, 1), 100)]


def measure_flow(name, config, shape, batch_size, repeats=3) -> list:
  flow = models.create_flow(config, 10)
  batch = _batch(shape, batch_size)
  tx = flow_stage.create_optimizer(config.flow)
  state = jax.jit(lambda b: flow_stage.create_train_state(flow, jax.random.PRNGKey(0), b, tx))(
      batch)
  variables = state.variables()
  y = batch["label"] if flow.num_classes else None
  x = batch["image"].astype(jnp.float32) / 255.0
  z, _ = jax.jit(lambda v, x: flow.apply(v, x, y, method=flow.forward))(variables, x)
  fwd = harness.measure(f"{name} forward", lambda v, x: flow.apply(v, x, y, method=flow.forward),
                        variables, x, items=batch_size, repeats=repeats)
  inv = harness.measure(f"{name} inverse", lambda v, z: flow.apply(v, z, y, method=flow.decode),
                        variables, z, items=batch_size, repeats=repeats)
  step = functools.partial(flow_stage.train_step, flow=flow, aug=config.flow.augment)
  train = harness.measure(f"{name} train step", step, state, batch, jax.random.PRNGKey(1),
                          items=batch_size, repeats=repeats,
                          carry=lambda out, args: (out[0],) + args[1:])
  return [fwd, inv, train]


def compile_vs_depth(depths=(4, 8, 16, 32), hidden=64) -> list:
  """Compile seconds of a Glow(3, K, hidden) train step for each depth K."""
  rows = []
  for k in depths:
    config = cifar10_flow.get_config()
    config.flow.arch.update(num_steps=k, hidden_channels=hidden)
    flow = models.create_flow(config, 10)
    batch = _batch((32, 32, 3), 8)
    tx = flow_stage.create_optimizer(config.flow)
    state = jax.jit(lambda b: flow_stage.create_train_state(
        flow, jax.random.PRNGKey(0), b, tx))(batch)
    m = harness.measure(f"Glow 3x{k}x{hidden} train step", functools.partial(
        flow_stage.train_step, flow=flow, aug=config.flow.augment), state, batch, jax.random.PRNGKey(1), items=8,
                        repeats=1, carry=lambda out, args: (out[0],) + args[1:])
    rows.append({"depth": k, "compile_s": m.compile_seconds, "step_s": m.seconds})
  return rows


def run(accelerator: bool = False) -> list:
  rows = []
  for setup in flow_setups(accelerator):
    rows += measure_flow(*setup)
  return rows


if __name__ == "__main__":
  peak = harness.matmul_peak()
  print(f"float32 matmul: {peak / 1e9:.1f} GFLOP/s")
  print(harness.markdown_table([m.row(peak) for m in run(jax.default_backend() != "cpu")],
                               [("what", "name", None), ("img/s", "img_per_s", "{:.1f}"),
                                ("GFLOP/s", "gflop_per_s", "{:.1f}"),
                                ("of peak", "fraction_of_matmul_peak", "{:.0%}"),
                                ("compile s", "compile_s", "{:.1f}")]))


def conv_before_after(batch_size: int = 8) -> list:
  """Train step of the CIFAR Glows with `flax.linen.Conv` (plain lax) and with the project's
  `Conv`, in one process: what `jaxflowaug/conv.py` changed."""
  import flax.linen as nn
  from jaxflowaug.flows import coupling
  rows = []
  for name, config, shape, _ in flow_setups(False)[:2]:
    times = {}
    for impl in ("lax", "project"):
      saved = coupling.Conv
      if impl == "lax":
        coupling.Conv = nn.Conv
      try:
        m = measure_flow(f"{name} [{impl} conv]", config, shape, batch_size, repeats=2)[2]
      finally:
        coupling.Conv = saved
      times[impl] = m.seconds
    rows.append({"flow": name, "lax_step_s": times["lax"], "project_step_s": times["project"],
                 "speedup": times["lax"] / times["project"]})
  return rows
