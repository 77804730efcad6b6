"""Flow stage: maximum-likelihood training of the Glow (or dense conditional flow).

Objective: the mean over the batch of bits/dim of the dequantised images,
  bpd(x) = -(log p(y) - D log 256) / (D log 2),  y = (255 x + u) / 256,  u ~ U(0, 1)^D,
minimised with Adamax (lr 5e-4, L2 weight decay 5e-5 added to the gradient, linear warm-up over
the first `warmup_samples` samples), as the authors' code does (`flow.optimizer` 'adam' for their
Fashion-MNIST notebook), on batches augmented by `flow.augment`.

Outputs in `<workdir>/flow/`: checkpoints (the frozen flow for the classifier stage is the
latest one), TensorBoard events, `samples.png`, and `results.json` with `val_bits_per_dim`,
`max_reconstruction_error` and `steps`.
"""
import math
import os
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from flax.training import train_state

from jaxflowaug import augment, data, flows, parallel
from train import figures, frozen, input_pipeline, loop, models, results

NAME = frozen.FLOW


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the flow fields at start-up; raises naming the field and the fix."""
  cfg = config.flow
  models.create_flow(config, 0)
  parallel.check_batch_size(cfg.batch_size, "flow.batch_size")
  for field in ("learning_rate", "epochs"):
    if not cfg[field] > 0:
      raise ValueError(f"flow.{field}={cfg[field]} must be > 0.")
  for field in ("log_every", "checkpoint_every", "init_batch_size", "recon_examples"):
    if cfg[field] < 1:
      raise ValueError(f"flow.{field}={cfg[field]} must be >= 1.")
  if cfg.optimizer not in OPTIMIZERS:
    raise ValueError(f"flow.optimizer={cfg.optimizer!r} is unknown; use one of {OPTIMIZERS}.")
  if cfg.augment.cutout or cfg.augment.mixup_alpha:
    raise ValueError(f"flow.augment.cutout={cfg.augment.cutout} and flow.augment.mixup_alpha="
                     f"{cfg.augment.mixup_alpha}: a flow models whole images, so only geometric "
                     "augmentation (crop_flip, translate) applies to it; set both to 0.")
  if cfg.augment.crop_pad < 0 or not 0 <= cfg.augment.translate < 1:
    raise ValueError(f"flow.augment.crop_pad={cfg.augment.crop_pad} must be >= 0 and "
                     f"flow.augment.translate={cfg.augment.translate} in [0, 1).")


OPTIMIZERS = ("adamax", "adam")


def identity(config: ml_collections.ConfigDict, datasets: input_pipeline.Datasets) -> dict:
  """What fixes this stage's results: the flow's checkpoint identity, its training fields
  (less cadences and what names or guards a checkpoint) and the seed. A finished stage is
  skipped only for the same identity."""
  training = {k: v for k, v in config.flow.to_dict().items() if k not in (
      "model", "arch", "conditional", "checkpoint", "allow_unfinished", "log_every",
      "checkpoint_every")}
  return dict(models.flow_identity(config, datasets.image_shape, datasets.num_classes),
              training=training, seed=config.seed)


def create_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """`cfg.optimizer` (Adamax, the authors' Glow; Adam, their Fashion-MNIST notebook) with L2
  weight decay added to the gradient and a linear warm-up over `warmup_samples` samples."""
  warmup_steps = max(1, cfg.warmup_samples // cfg.batch_size)
  schedule = optax.linear_schedule(0.0, cfg.learning_rate, warmup_steps)
  parts = [optax.clip_by_global_norm(cfg.max_grad_norm)] if cfg.max_grad_norm else []
  parts += [optax.add_decayed_weights(cfg.weight_decay), getattr(optax, cfg.optimizer)(schedule)]
  return optax.chain(*parts)


def _labels(flow: nn.Module, batch: dict) -> Optional[jax.Array]:
  return batch["label"] if flow.num_classes else None


class FlowState(train_state.TrainState):
  """Trainable `params` plus the flow's fixed `consts` (permutations, signs), saved together."""
  consts: Any = None

  def variables(self, params: Any = None) -> dict:
    return {"params": self.params if params is None else params, **self.consts}


def create_train_state(flow: nn.Module, key: jax.Array, init_batch: dict,
                       tx: optax.GradientTransformation) -> FlowState:
  """Initialises the flow on `init_batch` (ActNorm's data-dependent init) and the optimiser."""
  x = data.to_float(init_batch["image"])
  init_key, dequant_key = jax.random.split(key)
  variables = flow.init({"params": init_key, "dequant": dequant_key}, x, _labels(flow, init_batch),
                        dequantize=True, method=flow.forward)
  params = variables.pop("params")
  return FlowState.create(apply_fn=flow.apply, params=params, tx=tx, consts=dict(variables))


def augment_images(key: jax.Array, batch: dict, aug: ml_collections.ConfigDict) -> jax.Array:
  """The flow's training images (B, H, W, C) in [0, 1] after `flow.augment`'s geometric
  augmentation (`augment.geometric`)."""
  return augment.geometric(key, data.to_float(batch["image"]), crop_flip=aug.crop_flip,
                           crop_pad=aug.crop_pad, flip=aug.flip, translate=aug.translate)


def train_step(state: FlowState, batch: dict, key: jax.Array, flow: nn.Module,
               aug: ml_collections.ConfigDict):
  """One optimiser step on the mean bits/dim of the augmented batch (`augment_images`)."""
  dequant_key = jax.random.fold_in(key, state.step)
  aug_key = jax.random.fold_in(dequant_key, 1)
  x, y = augment_images(aug_key, batch, aug), _labels(flow, batch)

  def loss_fn(params):
    bpd = flow.apply(state.variables(params), x, y, dequantize=True, method=flow.bits_per_dim,
                     rngs={"dequant": dequant_key})
    return jnp.mean(bpd)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  new_state = state.apply_gradients(grads=grads)
  return new_state, {"bits_per_dim": loss, "grad_norm": optax.global_norm(grads)}


def eval_step(variables: dict, batch: dict, key: jax.Array, flow: nn.Module) -> dict:
  """The sum of bits/dim (dequantised) over the unmasked rows of a batch, and their count."""
  bpd = flow.apply(variables, data.to_float(batch["image"]),
                   _labels(flow, batch), dequantize=True, method=flow.bits_per_dim,
                   rngs={"dequant": key})
  return {"bits_per_dim": jnp.sum(bpd * batch["mask"]), "count": jnp.sum(batch["mask"])}


def sample(variables: dict, key: jax.Array, flow: nn.Module, shape, temperature: float,
           labels: Optional[jax.Array]) -> jax.Array:
  """x = F^-1(T * eps), eps ~ N(0, I): `shape` (N, H, W, C) samples of the flow as a distrax
  distribution (`flows.as_distribution`), one per label if given; clipped to [0, 1]."""
  dist = flows.as_distribution(flow, variables, labels, temperature, image_shape=shape[1:])
  x = dist.sample(seed=key, sample_shape=() if labels is not None else shape[:1])
  return jnp.clip(x, 0.0, 1.0)


def evaluate(variables, flow, split, cfg, mesh, key, seed: int) -> float:
  """Mean bits/dim over the evaluation split (or `eval_examples` of it drawn with `seed`)."""
  split = input_pipeline.seeded_subset(split, cfg.eval_examples, seed)
  step = jax.jit(lambda p, b, k: eval_step(p, b, k, flow))
  return input_pipeline.mean_over(
      lambda batch, i: step(variables, batch, jax.random.fold_in(key, i)), split,
      cfg.batch_size, mesh)["bits_per_dim"]


def run(config: ml_collections.ConfigDict, workdir: str, datasets: input_pipeline.Datasets,
        mesh) -> dict:
  """Trains the flow (resuming from `<workdir>/flow`), evaluates it, writes its results."""
  cfg = config.flow
  flow = models.create_flow(config, datasets.num_classes)
  tx = create_optimizer(cfg)
  loader = input_pipeline.Loader(datasets.flow_train, cfg.batch_size, config.seed, mesh,
                                 "flow.batch_size")
  total_steps = max(1, int(math.ceil(cfg.epochs * loader.steps_per_epoch)))
  init_key, train_key, eval_key, sample_key = jax.random.split(jax.random.PRNGKey(config.seed), 4)

  logging.info("Initialising %s on %d images...", cfg.model, cfg.init_batch_size)
  init_batch = input_pipeline.sample_rows(datasets.flow_train, cfg.init_batch_size, config.seed,
                                          mesh)
  try:
    state = jax.jit(lambda k, b: create_train_state(flow, k, b, tx),
                    out_shardings=parallel.replicated(mesh))(init_key, init_batch)
  except ValueError as e:
    raise ValueError(
        f"flow.model={cfg.model!r} with flow.arch={dict(cfg.arch)} cannot model the "
        f"{'x'.join(map(str, datasets.image_shape))} images of data.source="
        f"{config.data.source!r}: {e} Change flow.arch or the data.") from None
  num_params = int(sum(x.size for x in jax.tree.leaves(state.params)))
  logging.info("flow parameters: %d", num_params)

  recon_batch = input_pipeline.sample_rows(datasets.eval, cfg.recon_examples, config.seed, mesh)
  recon_fn = jax.jit(lambda s, b: frozen.reconstruction_error(
      frozen.Generator(NAME, flow, s.variables()), b))
  recon = lambda s: {"reconstruction_error": parallel.to_host(recon_fn(s, recon_batch))}
  stage_dir = os.path.join(workdir, NAME)
  state = loop.train(
      stage_dir, desc=NAME, state=state, step_fn=lambda s, b, k: train_step(s, b, k, flow, cfg.augment),
      batch=loader.batch, key=train_key, total_steps=total_steps,
      identity=models.flow_identity(config, datasets.image_shape, datasets.num_classes),
      log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every, mesh=mesh,
      nonfinite_fix="Lower flow.learning_rate, lengthen flow.warmup_samples or set "
                    "flow.max_grad_norm, then rerun.", log_extra=recon).state

  val_bpd = evaluate(state.variables(), flow, datasets.eval, cfg, mesh, eval_key, config.seed)
  n = cfg.num_samples
  labels = jnp.arange(n) % datasets.num_classes if flow.num_classes else None
  samples = parallel.to_host(jax.jit(
      lambda p, k, y: sample(p, k, flow, (n,) + datasets.image_shape, cfg.sample_temperature, y))(
          state.variables(), sample_key, labels))
  grid = figures.image_grid(samples, ncol=int(math.ceil(math.sqrt(n))))
  final = {"val_bits_per_dim": val_bpd,
           "max_reconstruction_error": float(recon(state)["reconstruction_error"]),
           "steps": total_steps, "epochs": cfg.epochs, "num_params": num_params,
           "samples_png": figures.save_png(grid, os.path.join(stage_dir, "samples.png"))}
  logging.info("flow done: %s", final)
  return results.write(stage_dir, final, config, identity(config, datasets))
