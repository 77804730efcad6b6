"""Runs one A-LA classifier train step on a tiny synthetic batch and prints the results as JSON.

Run by tests/test_parallel.py in subprocesses: with 1 or 8 simulated CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=N), or as one of several `jax.distributed`
processes (argv: coordinator_address num_processes process_id).
"""
import json
import sys

import jax
import numpy as np


def main(argv):
  if len(argv) == 4:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(argv[1], int(argv[2]), int(argv[3]))
  import functools

  import jax.numpy as jnp

  from configs import cifar10_adv
  from jaxflowaug import parallel
  from train import attack, frozen, models
  from train.stages import classifier

  config = cifar10_adv.get_config("smoke")
  config.classifier.model = "_ResNetTiny"
  mesh = parallel.make_mesh()
  rng = np.random.default_rng(0)
  global_batch = 16
  images = rng.integers(0, 256, (global_batch, 32, 32, 3), dtype=np.uint8)
  labels = (np.arange(global_batch) % 10).astype(np.int32)
  share = parallel.process_batch_size(global_batch)
  rows = slice(jax.process_index() * share, (jax.process_index() + 1) * share)
  batch = parallel.global_batch({"image": images[rows], "label": labels[rows]}, mesh)

  flow = models.create_flow(config, 10)
  flow_vars = jax.jit(lambda x: flow.init(jax.random.PRNGKey(1), x, method=flow.forward),
                      out_shardings=parallel.replicated(mesh))(jnp.asarray(images) / 255.0)
  model = models.create_classifier(config, 10)
  tx = models.create_classifier_optimizer(config.classifier, steps_per_epoch=4)
  state = jax.jit(lambda k: models.create_classifier_state(model, k, (32, 32, 3), tx),
                  out_shardings=parallel.replicated(mesh))(jax.random.PRNGKey(2))
  frozen_models = frozen.Frozen(latent=frozen.Generator("flow", flow, flow_vars))
  step = jax.jit(functools.partial(classifier.train_step, model=model, config=config,
                                   spec=attack.from_perturb(config.perturb), num_classes=10),
                 out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)))
  state, metrics = step(state, batch, jax.random.PRNGKey(3), frozen_models)
  losses = [float(parallel.to_host(metrics["loss"]))]
  leaves = [np.asarray(parallel.to_host(x)).ravel() for x in jax.tree.leaves(state.params)]
  print(json.dumps({"devices": jax.device_count(), "losses": losses,
                    "params": np.concatenate(leaves)[::97].tolist()}))


if __name__ == "__main__":
  main(sys.argv)
