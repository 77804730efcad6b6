"""Frozen models that a stage reads from another stage's checkpoints: the flow and the VAE-GAN
(the latent code R-LA/A-LA perturb, the flow's density for the density filter) and the trained
classifier (for evaluation).

`Generator` puts a module and its variables in one pytree (the module a static field), with
one interface for the flow (exact code: z = F(x), x = F^-1(z)) and the VAE-GAN (approximate
code: z = mu(x), x = G(z)), so the attacks run unchanged on either (the exact-vs-approximate
ablation). `Frozen` is what a classifier step reads: the perturbed code, the density filter's
flow and its threshold; it is passed to jitted steps as an ordinary argument.

A frozen flow or VAE-GAN must have finished training (else `<stage>.allow_unfinished`), and
where it came from (`origins`) goes into the results of the stage that used it. A frozen flow
must invert its own latents: `load_flow` refuses one whose max |F^-1(F(x)) - x| (or, with
`flow.arch.authors_decode`, its distance to the authors' decode a + b x) exceeds
`classifier.max_flow_reconstruction_error`.
"""
import functools
import json
import os
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import struct

from jaxflowaug import data, flows, parallel, perturb
from train import attack, checkpoint, input_pipeline, models, results

FLOW, VAEGAN, CLASSIFIER = "flow", "vaegan", "classifier"  # the stages' directory names


@struct.dataclass
class Generator:
  """A frozen code x <-> z: `kind` 'flow' (a `flows.Glow`/`flows.DenseFlow`) or 'vaegan'."""
  kind: str = struct.field(pytree_node=False)
  module: nn.Module = struct.field(pytree_node=False)
  variables: Any = None
  origin: str = struct.field(pytree_node=False, default="")  # JSON of `_load`'s origin

  def _y(self, y):
    return y if self.module.num_classes else None

  def encode(self, x: jax.Array, y: jax.Array) -> jax.Array:
    """z (B, ...): F(x) for a flow (deterministic), mu(x) for a VAE-GAN."""
    if self.kind == FLOW:
      return self.module.apply(self.variables, x, self._y(y), method=self.module.encode)
    return self.module.apply(self.variables, x, self._y(y), method=self.module.encode)[0]

  def decode(self, z: jax.Array, y: jax.Array) -> jax.Array:
    """x (B, H, W, C): F^-1(z) for a flow, G(z) for a VAE-GAN; differentiable in z."""
    return self.module.apply(self.variables, z, self._y(y), method=self.module.decode)

  def log_prob(self, x: jax.Array, y: jax.Array) -> jax.Array:
    """log p(x | y) (B,) of images x (B, H, W, C) under a flow, as its distrax distribution
    (`flows.as_distribution`; for a Glow this is the density of x itself, a constant
    D log(256/255) below `Glow.log_prob`'s density of the dequantised image)."""
    if self.kind != FLOW:
      raise ValueError("log_prob needs a flow; a VAE-GAN has no tractable density.")
    dist = flows.as_distribution(self.module, self.variables, self._y(y),
                                 image_shape=x.shape[1:])
    return dist.log_prob(x)


@struct.dataclass
class Frozen:
  """The frozen parts of a classifier step: `latent` (the perturbed code, or None), `density`
  (the flow of the density filter, or None) and its log-density `threshold`."""
  latent: Optional[Generator] = None
  density: Optional[Generator] = None
  threshold: Any = 0.0


def reconstruction_target(gen: Generator, x: jax.Array) -> jax.Array:
  """What decode(encode(x)) should return for images x (B, H, W, C): x, or for a Glow with
  `authors_decode` the authors' contrast-compressed a + b (255 x + 1/2) / 256
  (`flows.authors_decoded`)."""
  if gen.kind == FLOW and getattr(gen.module, "authors_decode", False):
    return flows.authors_decoded(x, gen.module.logit_bound)
  return x


def reconstruction_error(gen: Generator, batch: dict) -> jax.Array:
  """max |decode(encode(x)) - reconstruction_target(x)| over a batch (exactness of the code,
  float32); inf if any entry is NaN (XLA's max may skip NaNs)."""
  x = data.to_float(batch["image"])
  error = jnp.abs(gen.decode(gen.encode(x, batch["label"]), batch["label"])
                  - reconstruction_target(gen, x))
  return jnp.max(jnp.where(jnp.isnan(error), jnp.inf, error))


def _load(config: ml_collections.ConfigDict, workdir: str, stage: str, identity: dict,
          retrain_fix: str) -> tuple[Any, str]:
  """(raw state, origin as JSON) of the frozen `stage` of `<stage>.checkpoint` (or of this
  workdir's own stage), which must have finished: a `<stage>/results.json` and a checkpoint of
  its last step, else it is refused unless `<stage>.allow_unfinished` (then a warning)."""
  cfg = config[stage]
  path = cfg.checkpoint or workdir
  state, origin = checkpoint.load_frozen(path, stage, identity, f"{stage}.checkpoint",
                                         retrain_fix)
  stage_dir = os.path.dirname(origin["path"])
  total = (results.read(stage_dir) or {}).get("steps")
  if total is None or origin["step"] < total:
    why = (f"no {os.path.join(stage_dir, results.RESULTS_FILE)}" if total is None else
           f"its newest restorable checkpoint is step {origin['step']} of {total}")
    message = (f"The {stage} of {path!r} did not finish training ({why}). Rerun its {stage} "
               f"stage to finish it (it resumes), or set {stage}.allow_unfinished=True to use "
               "it as it is.")
    if not cfg.allow_unfinished:
      raise ValueError(message)
    logging.warning("%s Using it anyway: %s.allow_unfinished=True.", message, stage)
  origin["finished"] = total is not None and origin["step"] >= total
  return state, json.dumps(origin, sort_keys=True)


def origins(*gens: Optional[Generator]) -> dict:
  """{kind: {path, step, identity, finished}} of the frozen generators given (None skipped),
  for a stage's results.json."""
  return {g.kind: json.loads(g.origin) for g in gens if g is not None and g.origin}


def load_flow(config: ml_collections.ConfigDict, workdir: str,
              datasets: input_pipeline.Datasets, mesh) -> Generator:
  """The frozen flow of `flow.checkpoint` (or of this workdir's flow stage), replicated.

  Raises if there is none, if it was trained for another architecture or data, or if its
  distance of decode(encode(x)) to its `reconstruction_target` on `flow.recon_examples` training
  images (a sample seeded by `config.seed`) exceeds `classifier.max_flow_reconstruction_error`
  (its perturbations would decode to images it never meant).
  """
  path = config.flow.checkpoint or workdir
  state, origin = _load(
      config, workdir, FLOW,
      models.flow_identity(config, datasets.image_shape, datasets.num_classes),
      "Train a flow for this config (leave flow.checkpoint empty) or set flow.model/flow.arch/"
      "flow.conditional and the data to match.")
  gen = Generator(FLOW, models.create_flow(config, datasets.num_classes),
                  parallel.replicate({"params": state["params"], **state["consts"]}, mesh),
                  origin)
  batch = input_pipeline.sample_rows(datasets.train, config.flow.recon_examples, config.seed, mesh)
  error = float(parallel.to_host(jax.jit(reconstruction_error)(gen, batch)))
  limit = config.classifier.max_flow_reconstruction_error
  if not error <= limit:
    target = ("the authors' decode a + b x (flow.arch.authors_decode=True)"
              if config.flow.arch.get("authors_decode") else "x")
    raise ValueError(
        f"The flow of {path!r} does not invert its own latents: max |F^-1(F(x)) - target| = "
        f"{error:.3g}, target {target}, on {len(batch['label'])} training images exceeds "
        f"classifier.max_flow_reconstruction_error={limit}. Retrain the flow (lower "
        "flow.learning_rate or set flow.max_grad_norm), or raise "
        "classifier.max_flow_reconstruction_error if this error is acceptable.")
  return gen


def load_vaegan(config: ml_collections.ConfigDict, workdir: str,
                datasets: input_pipeline.Datasets, mesh) -> Generator:
  """The frozen VAE-GAN of `vaegan.checkpoint` (or of this workdir's vaegan stage), replicated."""
  state, origin = _load(
      config, workdir, VAEGAN,
      models.vaegan_identity(config, datasets.image_shape, datasets.num_classes),
      "Train a VAE-GAN for this config (leave vaegan.checkpoint empty) or set vaegan.latent_dim/"
      "width/per_class and the data to match.")
  module = models.create_vaegan(config, datasets.image_shape, datasets.num_classes)
  return Generator(VAEGAN, module, parallel.replicate({"params": state["params"]}, mesh), origin)


def per_example(fn, gen: Generator, split: input_pipeline.Split, batch_size: int, mesh,
                desc: str) -> np.ndarray:
  """fn(gen, x, y) (B, ...) over every image of `split`, as float32 numpy (N, ...), with a
  progress bar named `desc`."""
  step = jax.jit(lambda g, b: fn(g, data.to_float(b["image"]), b["label"]))
  chunks = [parallel.gather(step(gen, batch))
            for batch in input_pipeline.eval_batches(split, batch_size, mesh, desc)]
  return np.concatenate(chunks)[:len(split)].astype(np.float32)


def log_densities(flow: Generator, split: input_pipeline.Split, batch_size: int,
                  mesh) -> np.ndarray:
  """log p(x | y) (N,) of every clean image of `split` under the flow."""
  return per_example(Generator.log_prob, flow, split, batch_size, mesh, "log-densities")


def density_threshold(flow: Generator, split: input_pipeline.Split, percentile: float,
                      batch_size: int, mesh) -> float:
  """The `percentile`-th percentile of log p(x | y) over the clean images of `split`."""
  log_p = log_densities(flow, split, batch_size, mesh)
  threshold = float(np.percentile(log_p, percentile))
  logging.info("density filter: %g-th percentile of log p(x|y) over %d training images = %.4g",
               percentile, len(log_p), threshold)
  return threshold


def encode_split(gen: Generator, split: input_pipeline.Split, batch_size: int,
                 mesh) -> np.ndarray:
  """z (N, ...) of every image of `split`, computed once (latent caching).

  The encoding is deterministic (a flow without dequantisation noise, a VAE-GAN's mean), so a
  cached z is exactly the z the step would compute; it saves the encoder pass of every step.
  """
  logging.info("Caching the %s latents of %d training images...", gen.kind, len(split))
  return per_example(Generator.encode, gen, split, batch_size, mesh, "caching latents")


def for_training(spec: attack.Spec, config: ml_collections.ConfigDict, workdir: str,
                 datasets: input_pipeline.Datasets, mesh) -> Frozen:
  """What the classifier stage's perturbation `spec` reads, replicated over the mesh; the
  density threshold is over the classifier's clean training images."""
  flow = load_flow(config, workdir, datasets, mesh) if spec.needs_flow else None
  latent = load_vaegan(config, workdir, datasets, mesh) if spec.needs_vaegan else (
      flow if spec.attack.latent else None)
  percentile = spec.attack.density_percentile
  threshold = 0.0
  if percentile > 0:
    threshold = density_threshold(flow, datasets.train, percentile,
                                  config.classifier.eval_batch_size, mesh)
  return Frozen(latent=latent, density=flow if percentile > 0 else None,
                threshold=parallel.replicate(jnp.float32(threshold), mesh))


def perturb_batch(state: models.ClassifierState, x: jax.Array, y: jax.Array, key: jax.Array,
                  frozen_models: Frozen, *, model, spec: attack.Spec,
                  z: Optional[jax.Array] = None):
  """`perturb.perturb_batch` of the batch against the classifier at its current weights, in the
  code of `frozen_models.latent` (R-LA, A-LA; `z` its cached latents) with the density filter of
  `frozen_models.density`, BatchNorm in `spec.bn_mode`.

  Returns (x~, count of non-finite decodes, kept (B,), batch_stats): the classifier's BatchNorm
  running statistics after every train-mode pass of the attack in order (clean pass, k attack
  passes) for `spec.bn_update` 'keep', else `state.batch_stats` unchanged."""
  train = spec.bn_mode == "train"
  logits = lambda images, stats: models.classify(model, state.params, stats, images, train)
  latent, density = frozen_models.latent, frozen_models.density
  x_t, nonfinite, kept, stats = perturb.perturb_batch(
      key, x, y, spec.attack, logits,
      encode=None if latent is None else lambda images: latent.encode(images, y),
      decode=None if latent is None else lambda codes: latent.decode(codes, y),
      log_prob=None if density is None else lambda images: density.log_prob(images, y),
      z=z, threshold=frozen_models.threshold, carry=state.batch_stats)
  return x_t, nonfinite, kept, stats if spec.bn_update == "keep" else state.batch_stats


def load_classifier(config: ml_collections.ConfigDict, workdir: str,
                    datasets: input_pipeline.Datasets, mesh):
  """(model, train state) from the latest checkpoint of `<workdir>/classifier`; raises if there
  is none or if it was trained with another config."""
  directory = os.path.join(workdir, CLASSIFIER, "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"No classifier checkpoint in {directory}: train one first (stages "
                            "('classifier', 'evaluate'), or `python -m train.main` with this "
                            "config and --workdir).")
  model = models.create_classifier(config, datasets.num_classes)
  tx = models.create_classifier_optimizer(config.classifier, 1)  # its state's structure only
  target = jax.jit(
      functools.partial(models.create_classifier_state, model, image_shape=datasets.image_shape,
                        tx=tx),
      out_shardings=parallel.replicated(mesh))(jax.random.PRNGKey(0))
  ckpt = checkpoint.Checkpointer(directory, models.classifier_identity(config), read_only=True)
  step, state, _ = ckpt.restore_latest(target)
  ckpt.close()
  if step is None:
    raise FileNotFoundError(f"No classifier checkpoint in {directory}: train one first.")
  logging.info("classifier checkpoint %s, step %d", directory, step)
  return model, state
