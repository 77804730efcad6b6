"""Classifier train-step speed with each perturbation: standard, R-LA, A-LA (k 3) and image PGD.

  python -m benchmarks.augment
For the CIFAR-10 configs (full Glow 3x32x512 + ResNet-18, and the reduced `:cpu` pair) and
Fashion-MNIST (dense flow + CNN, A-LA k 10), each step next to its FLOP count from XLA's cost
analysis. The target: (A-LA time / standard time) <= 1.1 x (A-LA FLOPs / standard FLOPs), i.e.
the attack costs no more than its arithmetic.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from configs import cifar10_adv, fmnist_adv
from train import attack, frozen, models
from train.stages import classifier

# (method, overrides of config.perturb) measured for every setup; A-LA keeps the config's own.
# "A-LA cached": latent caching (`perturb.cache_latents`), the batch carries z = F(x).
# "A-LA unrolled": PGD's fori_loop unrolled into straight-line code (`perturb.unroll=True`).
CIFAR_METHODS = (("standard", {"method": "none"}),
                 ("R-LA", {"method": "rla", "norm": "linf", "eps": 0.25}),
                 ("A-LA", {"method": "ala"}),
                 ("A-LA cached", {"method": "ala", "cache_latents": True}),
                 ("A-LA unrolled", {"method": "ala", "unroll": True}),
                 ("image PGD", {"method": "pgd", "norm": "linf", "eps": 0.03,
                                "step_size": 0.008, "steps": 10}))
FMNIST_METHODS = (("standard", {"method": "none"}),
                  ("R-LA", {"method": "rla", "eps": 0.15}),
                  ("A-LA", {"method": "ala"}),
                  ("A-LA cached", {"method": "ala", "cache_latents": True}),
                  ("A-LA unrolled", {"method": "ala", "unroll": True}))


def setups(accelerator: bool):
  """(name, config, image shape, batch, methods)."""
  return [("CIFAR-10 Glow 3x32x512 + ResNet-18", cifar10_adv.get_config(), (32, 32, 3),
           128 if accelerator else 8, CIFAR_METHODS),
          ("CIFAR-10 :cpu Glow 3x4x64 + ResNet-18 w16", cifar10_adv.get_config("cpu"),
           (32, 32, 3), 128 if accelerator else 32, CIFAR_METHODS),
          ("Fashion-MNIST DenseFlow + CNN", fmnist_adv.get_config(), (28, 28, 1), 100,
           FMNIST_METHODS)]


def measure_setup(name, config, shape, batch_size, methods, repeats=2) -> list:
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.integers(0, 256, (batch_size,) + shape, dtype=np.uint8)),
           "label": jnp.asarray(np.arange(batch_size) % 10, dtype=jnp.int32)}
  flow = models.create_flow(config, 10)
  flow_vars = jax.jit(lambda x: flow.init(jax.random.PRNGKey(0), x, batch["label"] if
                                          flow.num_classes else None, method=flow.forward))(
      batch["image"].astype(jnp.float32) / 255.0)
  latents = jax.jit(lambda v, b: flow.apply(
      v, b["image"].astype(jnp.float32) / 255.0, b["label"] if flow.num_classes else None,
      method=flow.forward)[0])(flow_vars, batch)
  model = models.create_classifier(config, 10)
  tx = models.create_classifier_optimizer(config.classifier, steps_per_epoch=100)
  state = jax.jit(lambda k: models.create_classifier_state(model, k, shape, tx))(
      jax.random.PRNGKey(1))
  rows = []
  for label, overrides in methods:
    cfg = config.copy_and_resolve_references()
    cfg.perturb.update(overrides)
    frozen_models = frozen.Frozen(latent=frozen.Generator("flow", flow, flow_vars))
    step = functools.partial(classifier.train_step, model=model, config=cfg,
                             spec=attack.from_perturb(cfg.perturb), num_classes=10)
    k = f" k {cfg.perturb.steps}" if cfg.perturb.method in ("ala", "pgd") else ""
    inputs = dict(batch, latent=latents) if cfg.perturb.cache_latents else batch
    m = harness.measure(f"{name}: {label}{k}", step, state, inputs, jax.random.PRNGKey(2),
                        frozen_models, items=batch_size, repeats=repeats,
                        carry=lambda out, args: (out[0],) + args[1:])
    rows.append(m)
  return rows


def ratios(measurements: list) -> list:
  """A-LA / standard time next to A-LA / standard FLOPs, and the caching speed-up, per setup."""
  out = []
  by_name = {m.name: m for m in measurements}
  for m in measurements:
    if ": A-LA" not in m.name or "cached" in m.name or "unrolled" in m.name:
      continue
    setup = m.name.split(": ")[0]
    std = by_name[f"{setup}: standard"]
    cached = by_name.get(m.name.replace("A-LA", "A-LA cached"))
    unrolled = by_name.get(m.name.replace("A-LA", "A-LA unrolled"))
    time_ratio, flop_ratio = m.seconds / std.seconds, m.flops / max(std.flops, 1.0)
    out.append({"setup": setup, "time_ratio": time_ratio, "flop_ratio": flop_ratio,
                "time_over_flops": time_ratio / flop_ratio,
                "target_met": time_ratio <= 1.1 * flop_ratio,
                "cache_speedup": (m.seconds / cached.seconds - 1.0) if cached else None,
                "unroll_speedup": (m.seconds / unrolled.seconds - 1.0) if unrolled else None})
  return out


def run(accelerator: bool = False, only_reduced: bool = False) -> list:
  rows = []
  for setup in setups(accelerator):
    if only_reduced and "3x32x512" in setup[0]:
      continue
    rows += measure_setup(*setup)
  return rows


if __name__ == "__main__":
  peak = harness.matmul_peak()
  ms = run(jax.default_backend() != "cpu")
  print(harness.markdown_table([m.row(peak) for m in ms],
                               [("step", "name", None), ("img/s", "img_per_s", "{:.2f}"),
                                ("GFLOP/step", "gflop_per_call", "{:.1f}"),
                                ("GFLOP/s", "gflop_per_s", "{:.1f}"),
                                ("compile s", "compile_s", "{:.1f}")]))
  print(harness.markdown_table(ratios(ms), [("setup", "setup", None),
                                            ("A-LA/std time", "time_ratio", "{:.2f}"),
                                            ("A-LA/std FLOPs", "flop_ratio", "{:.2f}"),
                                            ("met", "target_met", None)]))
