"""VAE-GAN stage: the approximate-coding generator of the exact-vs-approximate ablation.

Trains `jaxflowaug.vaegan.VAEGAN` (class-agnostic, or one model per class with
`vaegan.per_class`) on the flow's training images with Adam (beta1 0.5) on L_G + L_D (see
`vaegan.objective`). A per-class model is trained on class-grouped batches: each step takes
`vaegan.batch_size / C` images of every class, and model c sees only its class.

Outputs in `<workdir>/vaegan/`: checkpoints (the frozen VAE-GAN of `perturb.generator='vaegan'`
is the latest one), TensorBoard events, `samples.png` (decodes of z ~ N(0, I), class c in
column c for a per-class model), `reconstructions.png` (evaluation images over G(mu(x))) and
`results.json` with the reconstruction error of G(mu(x)) on the evaluation split (mean squared
and mean absolute error per pixel, pixels in [0, 1]): the code's inexactness, 0 for a flow.
"""
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax.training import train_state

from jaxflowaug import data, parallel, vaegan
from train import figures, frozen, input_pipeline, loop, models, results

NAME = frozen.VAEGAN


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the vaegan fields at start-up; raises naming the field and the fix."""
  cfg = config.vaegan
  for field in ("latent_dim", "width", "log_every", "checkpoint_every", "recon_examples",
                "num_samples"):
    if cfg[field] < 1:
      raise ValueError(f"vaegan.{field}={cfg[field]} must be >= 1.")
  for field in ("learning_rate", "epochs"):
    if not cfg[field] > 0:
      raise ValueError(f"vaegan.{field}={cfg[field]} must be > 0.")
  for field in ("beta", "gan_weight"):
    if cfg[field] < 0:
      raise ValueError(f"vaegan.{field}={cfg[field]} must be >= 0.")
  parallel.check_batch_size(cfg.batch_size, "vaegan.batch_size")


def identity(config: ml_collections.ConfigDict, datasets: input_pipeline.Datasets) -> dict:
  """What fixes this stage's results: the VAE-GAN's checkpoint identity, its training fields
  (less cadences and what names or guards a checkpoint) and the seed."""
  training = {k: v for k, v in config.vaegan.to_dict().items() if k not in (
      "checkpoint", "allow_unfinished", "log_every", "checkpoint_every")}
  return dict(models.vaegan_identity(config, datasets.image_shape, datasets.num_classes),
              training=training, seed=config.seed)


class Batches:
  """Training batches: shuffled global batches of the split, or, for a per-class model, the
  concatenation of C class batches of B/C images each (class-major), every class shuffled on
  its own. A pure function of (seed, step), like `input_pipeline.Loader`."""

  def __init__(self, split: input_pipeline.Split, cfg, num_classes: int, seed: int, mesh):
    self.grouped = bool(cfg.per_class)
    if not self.grouped:
      self.loaders = [input_pipeline.Loader(split, cfg.batch_size, seed, mesh,
                                            "vaegan.batch_size")]
    else:
      if cfg.batch_size % num_classes:
        raise ValueError(f"vaegan.batch_size={cfg.batch_size} must be a multiple of the "
                         f"{num_classes} classes with vaegan.per_class=True.")
      per = cfg.batch_size // num_classes
      self.loaders = []
      for c in range(num_classes):
        rows = np.flatnonzero(split.labels == c)
        if len(rows) < per:
          raise ValueError(f"vaegan.per_class=True: class {c} has {len(rows)} training images, "
                           f"fewer than vaegan.batch_size / {num_classes} = {per}.")
        self.loaders.append(input_pipeline.Loader(split.take(rows), per, seed + 7919 * c, mesh,
                                                  "vaegan.batch_size / num_classes"))
    self.steps_per_epoch = len(split) // cfg.batch_size

  def batch(self, step: int) -> list:
    return [loader.batch(step) for loader in self.loaders]


def train_step(state: train_state.TrainState, batches: list, key: jax.Array, *, model, cfg,
               grouped: bool):
  """One Adam step on L_G + L_D of the concatenated batches."""
  x = data.to_float(jnp.concatenate([b["image"] for b in batches]))
  y = jnp.concatenate([b["label"] for b in batches])
  key = jax.random.fold_in(key, state.step)
  (_, m), grads = jax.value_and_grad(
      lambda p: vaegan.objective(model, p, x, y, key, beta=cfg.beta, gan_weight=cfg.gan_weight,
                                 grouped=grouped), has_aux=True)(state.params)
  m["grad_norm"] = optax.global_norm(grads)
  return state.apply_gradients(grads=grads), m


def reconstruct(params, batch: dict, *, model) -> dict:
  """Sums over the unmasked rows of the per-pixel mean squared and absolute error of G(mu(x))."""
  x = data.to_float(batch["image"])
  y = batch["label"] if model.num_classes else None
  mu, _ = model.apply({"params": params}, x, y, method=model.encode)
  error = model.apply({"params": params}, mu, y, method=model.decode) - x
  axes = tuple(range(1, x.ndim))
  return {"mse": jnp.sum(jnp.mean(error ** 2, axes) * batch["mask"]),
          "mae": jnp.sum(jnp.mean(jnp.abs(error), axes) * batch["mask"]),
          "count": jnp.sum(batch["mask"])}


def run(config: ml_collections.ConfigDict, workdir: str, datasets: input_pipeline.Datasets,
        mesh) -> dict:
  """Trains the VAE-GAN (resuming from `<workdir>/vaegan`), evaluates it, writes its results."""
  cfg = config.vaegan
  model = models.create_vaegan(config, datasets.image_shape, datasets.num_classes)
  batches = Batches(datasets.flow_train, cfg, datasets.num_classes, config.seed, mesh)
  total_steps = max(1, int(math.ceil(cfg.epochs * batches.steps_per_epoch)))
  init_key, train_key, sample_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)
  tx = optax.adam(cfg.learning_rate, b1=0.5)
  shape = (1,) + tuple(datasets.image_shape)

  def init(key):
    params = model.init(key, jnp.zeros(shape), jnp.zeros((1,), jnp.int32)
                        if model.num_classes else None)["params"]
    return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

  state = jax.jit(init, out_shardings=parallel.replicated(mesh))(init_key)
  logging.info("vaegan parameters: %d", sum(x.size for x in jax.tree.leaves(state.params)))
  stage_dir = os.path.join(workdir, NAME)
  state = loop.train(
      stage_dir, desc=NAME, state=state,
      step_fn=lambda s, b, k: train_step(s, b, k, model=model, cfg=cfg, grouped=batches.grouped),
      batch=batches.batch, key=train_key, total_steps=total_steps,
      identity=models.vaegan_identity(config, datasets.image_shape, datasets.num_classes),
      log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every, mesh=mesh,
      nonfinite_fix="Lower vaegan.learning_rate, then rerun.").state

  recon_fn = jax.jit(lambda p, b: reconstruct(p, b, model=model))
  errors = input_pipeline.mean_over(lambda b, _: recon_fn(state.params, b), datasets.eval,
                                    cfg.batch_size, mesh)
  figures_out = _figures(state.params, model, datasets, cfg, sample_key, stage_dir, mesh,
                         config.seed)
  final = {"val_reconstruction_mse": errors["mse"], "val_reconstruction_mae": errors["mae"],
           "steps": total_steps, "epochs": cfg.epochs,
           "num_params": int(sum(x.size for x in jax.tree.leaves(state.params))), **figures_out}
  logging.info("vaegan done: %s", final)
  return results.write(stage_dir, final, config, identity(config, datasets))


def _figures(params, model, datasets, cfg, key, stage_dir, mesh, seed: int) -> dict:
  """samples.png (prior decodes) and reconstructions.png (x over G(mu(x)) of a seeded sample
  of evaluation images); process 0 only."""
  n = cfg.num_samples
  labels = jnp.arange(n) % datasets.num_classes
  y = labels if model.num_classes else None
  samples = parallel.to_host(jax.jit(lambda p, k: model.apply(
      {"params": p}, jax.random.normal(k, (n, cfg.latent_dim)), y, method=model.decode))(
          params, key))
  batch = input_pipeline.sample_rows(datasets.eval, cfg.recon_examples, seed, mesh)
  x = data.to_float(batch["image"])
  yb = batch["label"] if model.num_classes else None
  recon = jax.jit(lambda p, x, y: model.apply(
      {"params": p}, model.apply({"params": p}, x, y, method=model.encode)[0], y,
      method=model.decode))(params, x, yb)
  out = {"samples_png": None, "reconstructions_png": None}
  if jax.process_index() == 0:
    ncol = datasets.num_classes if model.num_classes else int(math.ceil(math.sqrt(n)))
    out["samples_png"] = figures.save_png(figures.image_grid(samples, ncol=ncol),
                                          os.path.join(stage_dir, "samples.png"))
    pairs = np.concatenate([parallel.gather(x)[:16], parallel.gather(recon)[:16]])
    out["reconstructions_png"] = figures.save_png(
        figures.image_grid(pairs, ncol=min(16, len(pairs) // 2 or 1)),
        os.path.join(stage_dir, "reconstructions.png"))
  return out
