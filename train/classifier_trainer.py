"""Classifier stage: train a classifier with image-space and latent-space augmentation.

Each step, on device, in this order (each part switched by config):
  x <- random crop + flip / translate (`classifier.augment`)
  x <- perturbation (`perturb.method`): R-LA / A-LA in the latent of the frozen flow,
       x~ = F^-1(F(x) + delta), or of the VAE-GAN, x~ = G(mu(x) + delta)
       (`perturb.generator`), or image-space PGD; optionally density-filtered
       (`perturb.density_*`: a perturbed image less likely under the flow than the given
       percentile of the training images is rejected or shrunk); a `perturb.fraction` of the
       rows is replaced
  x <- cutout;  (x, y) <- mixup
  SGD / Adam step on the cross-entropy of the classifier on x.
A-LA's attacker is the classifier being trained, at its current weights, with BatchNorm in
train or eval mode (`perturb.bn_mode`) and labels true or predicted (`perturb.labels`).

Outputs in `<workdir>/classifier/`: checkpoints, TensorBoard events, `results.json` with
`test_accuracy` (on `data.eval_split`), `train_accuracy`, `steps`, `device_count`, the learning
curves, the count of non-finite decodes that fell back to clean images and, with the density
filter, the fraction of perturbed images it kept (`density_kept_fraction`).
"""
import dataclasses
import functools
import math
import os
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax.training import train_state

from jaxflowaug import augment, metrics, models, parallel, perturb
from train import checkpoint, flow_trainer, generator, input_pipeline, results, writer

STAGE = "classifier"
METHODS = ("none", "rla", "ala", "pgd")


class TrainState(train_state.TrainState):
  batch_stats: Any = None


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the classifier and perturbation fields; raises naming the field and the fix."""
  cfg, p = config.classifier, config.perturb
  if p.method not in METHODS:
    raise ValueError(f"perturb.method={p.method!r} is unknown; use one of {METHODS}.")
  if p.method != "none":
    perturb.check_attack_args(p.eps, p.step_size, p.steps, p.norm)
  if p.generator not in generator.KINDS:
    raise ValueError(f"perturb.generator={p.generator!r} is unknown; use one of "
                     f"{generator.KINDS}.")
  perturb.check_density_args(p.density_percentile, p.density_mode, p.density_shrink_steps)
  if p.density_percentile > 0 and p.method == "none":
    raise ValueError("perturb.density_percentile > 0 filters perturbations, but perturb.method "
                     "is 'none'; choose a perturbation or set perturb.density_percentile=0.")
  if p.cache_latents and p.method not in ("rla", "ala"):
    raise ValueError(f"perturb.cache_latents=True needs perturb.method 'rla' or 'ala' (got "
                     f"{p.method!r}); set perturb.cache_latents=False.")
  if not 0.0 <= p.fraction <= 1.0:
    raise ValueError(f"perturb.fraction={p.fraction} must be in [0, 1].")
  if p.labels not in ("true", "pred"):
    raise ValueError(f"perturb.labels={p.labels!r}: use 'true' or 'pred'.")
  if p.bn_mode not in ("train", "eval"):
    raise ValueError(f"perturb.bn_mode={p.bn_mode!r}: use 'train' or 'eval'.")
  if cfg.optimizer not in ("sgd", "adam"):
    raise ValueError(f"classifier.optimizer={cfg.optimizer!r} is unknown; use 'sgd' or 'adam'.")
  if cfg.learning_rate <= 0:
    raise ValueError(f"classifier.learning_rate={cfg.learning_rate} must be > 0.")
  if cfg.epochs <= 0:
    raise ValueError(f"classifier.epochs={cfg.epochs} must be > 0.")
  if cfg.augment.cutout < 0 or cfg.augment.mixup_alpha < 0:
    raise ValueError("classifier.augment.cutout and classifier.augment.mixup_alpha must be >= 0.")
  for field in ("log_every", "checkpoint_every"):
    if cfg[field] < 1:
      raise ValueError(f"classifier.{field}={cfg[field]} must be >= 1.")
  if not cfg.max_flow_reconstruction_error > 0:
    raise ValueError(f"classifier.max_flow_reconstruction_error={cfg.max_flow_reconstruction_error}"
                     " must be > 0 (pixels in [0, 1]; default 1e-2).")
  parallel.check_batch_size(cfg.batch_size, "classifier.batch_size")
  parallel.check_batch_size(cfg.eval_batch_size, "classifier.eval_batch_size")


def uses_flow(config: ml_collections.ConfigDict) -> bool:
  return generator.needs_flow(config.perturb)


def uses_vaegan(config: ml_collections.ConfigDict) -> bool:
  return generator.needs_vaegan(config.perturb)


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  return models.get(config.classifier.model, num_classes=num_classes, **config.classifier.arch)


def create_optimizer(cfg: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD (momentum, Nesterov, lr x`lr_decay` at `lr_boundaries` epochs) or Adam (lr x`lr_decay`
  per epoch); both with L2 weight decay added to the gradient, as the authors' PyTorch code."""
  if cfg.optimizer == "sgd":
    schedule = optax.piecewise_constant_schedule(
        cfg.learning_rate, {int(e * steps_per_epoch): cfg.lr_decay for e in cfg.lr_boundaries})
    opt = optax.sgd(schedule, momentum=cfg.momentum, nesterov=cfg.nesterov)
  else:
    schedule = optax.exponential_decay(cfg.learning_rate, steps_per_epoch, cfg.lr_decay,
                                       staircase=True)
    opt = optax.adam(schedule)
  return optax.chain(optax.add_decayed_weights(cfg.weight_decay), opt)


def create_train_state(model: nn.Module, key: jax.Array, image_shape,
                       tx: optax.GradientTransformation) -> TrainState:
  variables = model.init(key, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
  return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                           batch_stats=variables.get("batch_stats"))


def classify(model, params, batch_stats, x, train: bool):
  """Classifier logits; in train mode BatchNorm uses batch statistics (updates discarded)."""
  variables = {"params": params, "batch_stats": batch_stats}
  if train:
    return model.apply(variables, x, train=True, mutable=["batch_stats"])[0]
  return model.apply(variables, x, train=False)


def perturb_batch(state: TrainState, x: jax.Array, y: jax.Array, key: jax.Array,
                  frozen_vars: Any, *, model: nn.Module, frozen: generator.Frozen,
                  cfg: ml_collections.ConfigDict, nan_decode: Optional[jax.Array] = None,
                  z: Optional[jax.Array] = None):
  """The perturbed batch x~ (B, H, W, C) in [0, 1], the count of non-finite decodes and which
  perturbed images the density filter kept, (B,) bool (all when it is off).

  `frozen_vars`: {'latent', 'density', 'threshold'} (see `generator.Frozen`).
  `z`: the latents of `frozen.latent` when cached (`perturb.cache_latents`), else encoded here.
  `nan_decode` (tests only): a boolean scalar; where true, every decode of the generator gives
  NaN for the first image (which must fall back to its clean image and be counted).
  """
  attack_key, mix_key = jax.random.split(key)
  bn_train = cfg.bn_mode == "train"
  logits = functools.partial(classify, model, state.params, state.batch_stats, train=bn_train)
  target = y if cfg.labels == "true" else jnp.argmax(logits(x), -1)
  target = jax.lax.stop_gradient(target)

  def loss_fn(images):
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits(images), target))

  if cfg.method == "pgd":
    x_t = perturb.image_pgd(loss_fn, x, attack_key, eps=cfg.eps, step_size=cfg.step_size,
                            steps=cfg.steps, norm=cfg.norm, random_start=cfg.random_start,
                            unroll=cfg.unroll)
    nonfinite = jnp.zeros((), jnp.int32)
    propose = lambda t: x + t * (x_t - x)
  else:
    gen, gen_vars = frozen.latent, frozen_vars["latent"]
    if z is None:
      z = gen.encode(gen_vars, x, y)
    z = jax.lax.stop_gradient(z)
    decode = lambda latent: gen.decode(gen_vars, latent, y)
    if nan_decode is not None:
      clean_decode = decode
      decode = lambda latent: clean_decode(latent).at[0].multiply(
          jnp.where(nan_decode, jnp.nan, 1.0))
    x_t, nonfinite, delta = perturb.latent_attack(
        decode, loss_fn, z, attack_key, x_clean=x, method=cfg.method, eps=cfg.eps,
        step_size=cfg.step_size, steps=cfg.steps, norm=cfg.norm, random_start=cfg.random_start,
        unroll=cfg.unroll)
    propose = lambda t: jnp.clip(decode(z + t * delta), 0.0, 1.0)
  x_t = jax.lax.stop_gradient(x_t)
  kept = jnp.ones((x.shape[0],), bool)
  if cfg.density_percentile > 0:
    log_p = lambda images: frozen.density.log_prob(frozen_vars["density"], images, y)
    x_t, kept, _ = perturb.density_filter(
        log_p, propose, x, frozen_vars["threshold"], mode=cfg.density_mode,
        shrink_steps=cfg.density_shrink_steps, x_full=x_t)
    x_t = jax.lax.stop_gradient(x_t)
  return perturb.mix(mix_key, x, x_t, cfg.fraction), nonfinite, kept


def augment_batch(state, batch, key, frozen_vars, *, model, frozen, config, num_classes):
  """Image augmentation, perturbation, cutout and mixup of one batch -> (x, soft or int labels)."""
  aug, p = config.classifier.augment, config.perturb
  k_img, k_pert, k_cut, k_mix = jax.random.split(key, 4)
  x, y = input_pipeline.to_float(batch["image"]), batch["label"]
  cached = batch.get("latent")

  def geometric(images):
    if aug.crop_flip:
      return augment.random_crop_flip(k_img, images, pad=aug.crop_pad, flip=aug.flip)
    if aug.translate:
      return augment.random_translate(k_img, images, max_frac=aug.translate)
    return images

  if cached is None:
    x = geometric(x)
  nonfinite = kept = jnp.zeros((), jnp.int32)
  if p.method != "none":
    nan_decode = state.step == p.debug_nan_decode_step if p.debug_nan_decode_step >= 0 else None
    x, nonfinite, keep = perturb_batch(state, x, y, k_pert, frozen_vars, model=model,
                                       frozen=frozen, cfg=p, nan_decode=nan_decode, z=cached)
    kept = jnp.sum(keep).astype(jnp.int32)
  if cached is not None:  # the cached latent is the un-augmented image's: crop/flip after decode
    x = geometric(x)
  if aug.cutout:
    x = augment.cutout(k_cut, x, size=aug.cutout)
  labels = y
  if aug.mixup_alpha:
    x, labels = augment.mixup(k_mix, x, jax.nn.one_hot(y, num_classes), alpha=aug.mixup_alpha)
  counts = {"nonfinite_decodes": nonfinite}
  if p.density_percentile > 0:
    counts["density_kept"] = kept
  return x, labels, counts


def train_step(state: TrainState, batch: dict, key: jax.Array, frozen_vars: Any, *,
               model, frozen, config, num_classes):
  """Augments the batch (see module doc) and takes one optimiser step on its cross-entropy."""
  key = jax.random.fold_in(key, state.step)
  x, labels, counts = augment_batch(state, batch, key, frozen_vars, model=model, frozen=frozen,
                                    config=config, num_classes=num_classes)

  def loss_fn(params):
    logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, x,
                                  train=True, mutable=["batch_stats"])
    return metrics.cross_entropy(logits, labels), (logits, updates["batch_stats"])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  hard = labels if labels.ndim == 1 else jnp.argmax(labels, -1)
  return state, {"loss": loss, "accuracy": metrics.accuracy(logits, hard),
                 "grad_norm": optax.global_norm(grads), **counts}


def eval_step(state: TrainState, batch: dict, model: nn.Module) -> dict:
  """Sums of correct predictions and loss over the unmasked rows (BatchNorm in eval mode)."""
  logits = classify(model, state.params, state.batch_stats,
                    input_pipeline.to_float(batch["image"]), train=False)
  correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  return {"correct": jnp.sum(correct * batch["mask"]), "loss": jnp.sum(loss * batch["mask"]),
          "count": jnp.sum(batch["mask"])}


def evaluate(step_fn, state, split, batch_size, mesh) -> dict:
  """Accuracy and mean loss of the classifier over a whole split."""
  totals = input_pipeline.sum_over(lambda batch, _: step_fn(state, batch), split, batch_size,
                                   mesh)
  n = max(totals["count"], 1.0)
  return {"accuracy": totals["correct"] / n, "loss": totals["loss"] / n}


def identity(config: ml_collections.ConfigDict) -> dict:
  """What fixes a classifier run (everything but logging and checkpoint cadence)."""
  keep = {k: config[k].to_dict() for k in ("data", "classifier", "perturb")}
  for k in ("log_every", "checkpoint_every", "eval_every_epochs", "max_flow_reconstruction_error"):
    keep["classifier"].pop(k, None)
  keep["perturb"].pop("unroll", None)  # speed only: the same attack, unrolled or not
  keep["seed"] = config.seed
  return keep


def load_flow(config, workdir, datasets):
  """The frozen flow: from `flow.checkpoint`, or from this workdir's own flow stage.

  Invertibility guard: refuses (ValueError) a flow whose max |F^-1(F(x)) - x| on the first
  `flow.recon_examples` training images exceeds `classifier.max_flow_reconstruction_error`;
  its latent perturbations would decode to images it never meant.
  """
  path = config.flow.checkpoint or workdir
  flow, flow_vars = flow_trainer.load_frozen(path, config, datasets.image_shape,
                                             datasets.num_classes)
  batch = input_pipeline.first_rows(datasets.train, config.flow.recon_examples,
                                    parallel.make_mesh())
  error = float(parallel.to_host(jax.jit(functools.partial(
      flow_trainer.reconstruction_error, flow=flow))(flow_vars, batch)))
  limit = config.classifier.max_flow_reconstruction_error
  if not error <= limit:
    raise ValueError(
        f"The flow of {path!r} does not invert its own latents: max |F^-1(F(x)) - x| = {error:.3g} "
        f"on {len(batch['label'])} training images exceeds "
        f"classifier.max_flow_reconstruction_error={limit}. Retrain the flow (lower "
        "flow.learning_rate or set flow.max_grad_norm), or raise "
        "classifier.max_flow_reconstruction_error if this error is acceptable.")
  return flow, flow_vars


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       datasets: Optional[input_pipeline.Datasets] = None) -> dict:
  """Trains the classifier (resuming from `<workdir>/classifier`), evaluates, writes results.

  Every check (config, data, the frozen flow and its invertibility) runs before anything is
  written.
  """
  validate(config)
  cfg = config.classifier
  done = results.finished(workdir, STAGE)
  if done is not None:
    return done
  datasets = datasets or input_pipeline.load(config)
  mesh = parallel.make_mesh()
  model = create_model(config, datasets.num_classes)
  frozen, frozen_vars = generator.load(config, workdir, datasets, mesh, load_flow)
  train_split = datasets.train
  if config.perturb.cache_latents:
    train_split = dataclasses.replace(train_split, latents=generator.encode(
        frozen.latent, frozen_vars["latent"], train_split, cfg.eval_batch_size, mesh))
  loader = input_pipeline.Loader(train_split, cfg.batch_size, config.seed, mesh,
                                 "classifier.batch_size")
  tx = create_optimizer(cfg, loader.steps_per_epoch)
  total_steps = max(1, int(math.ceil(cfg.epochs * loader.steps_per_epoch)))
  init_key, train_key = jax.random.split(jax.random.PRNGKey(config.seed))
  state = jax.jit(lambda k: create_train_state(model, k, datasets.image_shape, tx),
                  out_shardings=parallel.replicated(mesh))(init_key)

  stage_dir = writer.stage_dir(workdir, STAGE)
  ckpt = checkpoint.Checkpointer(os.path.join(stage_dir, "checkpoints"), identity(config),
                                 kill_during_save_step=config.debug_kill_during_save_step)
  curves, nonfinite_total, kept_total = [], 0, 0
  start = ckpt.latest_step()
  if start is not None:
    state, meta = ckpt.restore(start, state)
    curves, nonfinite_total = meta["curves"], meta["nonfinite_decodes"]
    kept_total = meta.get("density_kept", 0)
    logging.info("Resumed classifier training from step %d.", start)
  start = int(state.step)

  repl = parallel.replicated(mesh)
  step_fn = jax.jit(functools.partial(train_step, model=model, frozen=frozen, config=config,
                                      num_classes=datasets.num_classes),
                    donate_argnums=(0,), out_shardings=(repl, repl))
  eval_fn = jax.jit(functools.partial(eval_step, model=model))
  eval_every = max(1, int(round(cfg.eval_every_epochs * loader.steps_per_epoch)))
  log = writer.MetricWriter(stage_dir, total_steps, start, desc="classifier")
  # Summed on device: decodes that fell back to clean images; perturbed images the density
  # filter kept.
  nonfinite = kept = jnp.zeros((), jnp.int32)
  try:
    for step in range(start, total_steps):
      state, m = step_fn(state, loader.batch(step), train_key, frozen_vars)
      nonfinite = nonfinite + m["nonfinite_decodes"]
      kept = kept + m.get("density_kept", 0)
      log.advance()
      last = step + 1 == total_steps
      log_now = (step + 1) % cfg.log_every == 0 or last
      save_now = (step + 1) % cfg.checkpoint_every == 0 or last
      if log_now or save_now:  # a NaN loss poisons the weights: never save after one
        m = parallel.to_host(m)
        if not np.isfinite(m["loss"]):
          raise flow_trainer.NonFiniteError(
              f"classifier loss is non-finite at step {step + 1}; {ckpt.last_good()}. Lower "
              "classifier.learning_rate, then rerun.")
      if log_now:
        log.scalars(step + 1, m, prefix="train/")
      if (step + 1) % eval_every == 0 or last:
        point = {"step": step + 1, "epoch": (step + 1) / loader.steps_per_epoch,
                 "test_accuracy": evaluate(eval_fn, state, datasets.eval, cfg.eval_batch_size,
                                           mesh)["accuracy"]}
        if cfg.curves_train_accuracy:
          point["train_accuracy"] = evaluate(eval_fn, state, datasets.train, cfg.eval_batch_size,
                                             mesh)["accuracy"]
        curves.append(point)
        log.scalars(step + 1, {k: v for k, v in point.items() if k.endswith("accuracy")},
                    prefix="eval/")
      if save_now:
        new = int(nonfinite)
        if new:
          logging.warning("classifier: %d perturbed image(s) decoded to NaN/inf up to step %d and "
                          "fell back to their clean images (%d in all).", new, step + 1,
                          nonfinite_total + new)
        nonfinite_total, nonfinite = nonfinite_total + new, jnp.zeros((), jnp.int32)
        kept_total, kept = kept_total + int(kept), jnp.zeros((), jnp.int32)
        ckpt.save(step + 1, state, {"curves": curves, "nonfinite_decodes": nonfinite_total,
                                    "density_kept": kept_total})
  finally:
    log.close()
    ckpt.close()
  test = evaluate(eval_fn, state, datasets.eval, cfg.eval_batch_size, mesh)
  train = evaluate(eval_fn, state, datasets.train, cfg.eval_batch_size, mesh)
  final = {"test_accuracy": test["accuracy"], "test_loss": test["loss"],
           "train_accuracy": train["accuracy"], "train_loss": train["loss"],
           "steps": total_steps, "epochs": cfg.epochs, "train_examples": len(datasets.train),
           "eval_examples": len(datasets.eval), "method": config.perturb.method,
           "nonfinite_decodes": nonfinite_total, "curves": curves}
  if config.perturb.density_percentile > 0:
    final["density_kept_fraction"] = kept_total / (total_steps * cfg.batch_size)
  logging.info("classifier done: test_accuracy %.4f, train_accuracy %.4f", test["accuracy"],
               train["accuracy"])
  return results.write(stage_dir, final, config)
