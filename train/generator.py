"""The frozen generators the classifier stage reads: the latent code it perturbs, and the flow
whose log-density filters perturbations (`perturb.density_*`).

`Generator` puts the flow (exact code: z = F(x), x = F^-1(z)) and the VAE-GAN (approximate
code: z = mu(x), x = G(z)) behind one interface, so R-LA and A-LA run unchanged on either; this
is the exact-vs-approximate ablation of issue 8. `Frozen` gathers what the compiled step needs
(static modules; their variables and the density threshold travel as traced arguments).
"""
import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jaxflowaug import parallel
from train import input_pipeline, vaegan_trainer

KINDS = ("flow", "vaegan")


@dataclasses.dataclass(frozen=True)
class Generator:
  """A frozen code x <-> z. `kind` 'flow' (a `flows.Glow`/`flows.DenseFlow`) or 'vaegan'."""
  kind: str
  module: nn.Module

  def _y(self, y):
    return y if self.module.num_classes else None

  def encode(self, variables, x, y):
    """z (B, ...): F(x) for a flow (deterministic), mu(x) for a VAE-GAN."""
    if self.kind == "flow":
      return self.module.apply(variables, x, self._y(y), method=self.module.forward)[0]
    return self.module.apply(variables, x, self._y(y), method=self.module.encode)[0]

  def decode(self, variables, z, y):
    """x (B, H, W, C): F^-1(z) for a flow, G(z) for a VAE-GAN; differentiable in z."""
    method = self.module.inverse if self.kind == "flow" else self.module.decode
    return self.module.apply(variables, z, self._y(y), method=method)

  def log_prob(self, variables, x, y):
    """log p(x | y) (B,) under a flow (no dequantisation noise)."""
    if self.kind != "flow":
      raise ValueError("log_prob needs a flow; a VAE-GAN has no tractable density.")
    return self.module.apply(variables, x, self._y(y), method=self.module.log_prob)


@dataclasses.dataclass(frozen=True)
class Frozen:
  """The step's frozen parts: `latent` (the perturbed code, or None) and `density` (the flow
  of the density filter, or None). Their variables are passed to the step separately, as the
  pytree {'latent': ..., 'density': ..., 'threshold': scalar}."""
  latent: Optional[Generator] = None
  density: Optional[Generator] = None


def latent_flow(module: nn.Module, variables: Any) -> tuple:
  """(Frozen, variables pytree) that perturb in the latent of flow `module` (no density filter);
  for tests and benchmarks that build a flow in memory."""
  return Frozen(latent=Generator("flow", module)), {"latent": variables, "density": None,
                                                    "threshold": jnp.float32(0.0)}


def needs_latent(p: ml_collections.ConfigDict) -> bool:
  return p.method in ("rla", "ala")


def needs_flow(p: ml_collections.ConfigDict) -> bool:
  """Whether the perturbation reads a flow: latent attacks through it, or the density filter."""
  return (needs_latent(p) and p.generator == "flow") or p.density_percentile > 0


def needs_vaegan(p: ml_collections.ConfigDict) -> bool:
  return needs_latent(p) and p.generator == "vaegan"


def load(config, workdir, datasets, mesh, load_flow) -> tuple:
  """(Frozen, variables pytree) for `config.perturb`, replicated over the mesh.

  `load_flow(config, workdir, datasets)` returns the checked frozen flow (module, variables).
  The density threshold is the `perturb.density_percentile`-th percentile of log p(x | y) over
  the classifier's clean training images.
  """
  p = config.perturb
  flow, flow_vars, latent, latent_vars = None, None, None, None
  if needs_flow(p):
    module, flow_vars = load_flow(config, workdir, datasets)
    flow, flow_vars = Generator("flow", module), parallel.replicate(flow_vars, mesh)
  if needs_vaegan(p):
    module, variables = vaegan_trainer.load_frozen(config.vaegan.checkpoint or workdir, config,
                                                   datasets.image_shape, datasets.num_classes)
    latent, latent_vars = Generator("vaegan", module), parallel.replicate(variables, mesh)
  elif needs_latent(p):
    latent, latent_vars = flow, flow_vars
  density = flow if p.density_percentile > 0 else None
  threshold = 0.0
  if density is not None:
    log_p = log_densities(density, flow_vars, datasets.train, config.classifier.eval_batch_size,
                          mesh)
    threshold = float(np.percentile(log_p, p.density_percentile))
    logging.info("density filter: %g-th percentile of log p(x|y) over %d training images = %.4g "
                 "(%s below it)", p.density_percentile, len(log_p), threshold, p.density_mode)
  variables = {"latent": latent_vars, "density": flow_vars if density else None,
               "threshold": parallel.replicate(jnp.float32(threshold), mesh)}
  return Frozen(latent, density), variables


def _per_example(fn, variables: Any, split: input_pipeline.Split, batch_size: int,
                 mesh) -> np.ndarray:
  """fn(variables, x, y) (B, ...) over every image of `split`, as float32 numpy (N, ...)."""
  step = jax.jit(lambda v, b: fn(v, input_pipeline.to_float(b["image"]), b["label"]))
  chunks = [parallel.gather(step(variables, batch))
            for batch in input_pipeline.eval_batches(split, batch_size, mesh)]
  return np.concatenate(chunks)[:len(split)].astype(np.float32)


def log_densities(flow: Generator, variables: Any, split: input_pipeline.Split, batch_size: int,
                  mesh) -> np.ndarray:
  """log p(x | y) (N,) of every clean image of `split` under the flow."""
  return _per_example(flow.log_prob, variables, split, batch_size, mesh)


def encode(gen: Generator, variables: Any, split: input_pipeline.Split, batch_size: int,
           mesh) -> np.ndarray:
  """z (N, ...) of every image of `split`, computed once (latent caching).

  The encoding is deterministic (a flow without dequantisation noise, a VAE-GAN's mean), so a
  cached z is exactly the z the step would compute; it saves the encoder pass of every step.
  """
  logging.info("Caching the %s latents of %d training images...", gen.kind, len(split))
  return _per_example(gen.encode, variables, split, batch_size, mesh)
