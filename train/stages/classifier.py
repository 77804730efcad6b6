"""Classifier stage: train a classifier with image-space and latent-space augmentation.

Each step, on device, in this order (each part switched by config):
  x <- random crop + flip / translate (`classifier.augment`)
  x <- perturbation (`perturb.method`, see train/attack.py and `perturb.perturb_batch`): R-LA /
       A-LA in the latent of the frozen flow, x~ = F^-1(F(x) + delta), or of the VAE-GAN,
       x~ = G(mu(x) + delta) (`perturb.generator`), or image-space PGD; optionally
       density-filtered (`perturb.density_*`); a `perturb.fraction` of the rows is replaced
  x <- cutout;  (x, y) <- mixup
  SGD / Adam step on the cross-entropy of the classifier on x.
A-LA's attacker is the classifier being trained, at its current weights, with BatchNorm in
train or eval mode (`perturb.bn_mode`), labels true or predicted (`perturb.labels`), and the
running statistics its train-mode passes move kept or discarded (`perturb.bn_update`). The
training forward runs BatchNorm in `classifier.train_bn_mode` ('eval': frozen at its initial
statistics, as the authors' Fashion-MNIST notebook does by accident).

Outputs in `<workdir>/classifier/`: checkpoints, TensorBoard events, `results.json` with
`test_accuracy` (on `data.eval_split`), `train_accuracy`, `steps`, `device_count`, the learning
curves, the count of non-finite decodes that fell back to clean images and, with the density
filter, the fraction of perturbed images it kept (`density_kept_fraction`).
"""
import dataclasses
import functools
import math
import os
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from jaxflowaug import augment, data, metrics, parallel
from train import attack, frozen, input_pipeline, loop, models, results

NAME = frozen.CLASSIFIER


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the classifier and perturbation fields; raises naming the field and the fix."""
  cfg = config.classifier
  attack.from_perturb(config.perturb)
  if cfg.train_bn_mode not in attack.BN_MODES:
    raise ValueError(f"classifier.train_bn_mode={cfg.train_bn_mode!r}: use one of "
                     f"{attack.BN_MODES}.")
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


def identity(config: ml_collections.ConfigDict, datasets: input_pipeline.Datasets) -> dict:
  """What fixes this stage's results: its checkpoint identity (a finished stage is skipped
  only for the same one)."""
  del datasets  # the classifier's identity names the data by its config fields
  return models.classifier_identity(config)


def augment_batch(state, batch, key, frozen_models, *, model, config, spec, num_classes):
  """Image augmentation, perturbation, cutout and mixup of one batch -> (x, soft or int labels,
  counts, the classifier's batch_stats after the perturbation's passes (`frozen.perturb_batch`))."""
  aug = config.classifier.augment
  k_img, k_pert, k_cut, k_mix = jax.random.split(key, 4)
  x, y = data.to_float(batch["image"]), batch["label"]
  cached = batch.get("latent")

  geometric = functools.partial(augment.geometric, k_img, crop_flip=aug.crop_flip,
                                crop_pad=aug.crop_pad, flip=aug.flip, translate=aug.translate)

  if cached is None:
    x = geometric(x)
  counts = {"nonfinite_decodes": jnp.zeros((), jnp.int32)}
  batch_stats = state.batch_stats
  if spec is not None:
    x, counts["nonfinite_decodes"], keep, batch_stats = frozen.perturb_batch(
        state, x, y, k_pert, frozen_models, model=model, spec=spec, z=cached)
    if spec.attack.density_percentile > 0:
      counts["density_kept"] = jnp.sum(keep).astype(jnp.int32)
  if cached is not None:  # the cached latent is the un-augmented image's: crop/flip after decode
    x = geometric(x)
  if aug.cutout:
    x = augment.cutout(k_cut, x, size=aug.cutout)
  labels = y
  if aug.mixup_alpha:
    x, labels = augment.mixup(k_mix, x, jax.nn.one_hot(y, num_classes), alpha=aug.mixup_alpha)
  return x, labels, counts, batch_stats


def train_step(state: models.ClassifierState, batch: dict, key: jax.Array,
               frozen_models: frozen.Frozen, *, model, config, spec, num_classes):
  """Augments the batch (see module doc) and takes one optimiser step on its cross-entropy."""
  key = jax.random.fold_in(key, state.step)
  x, labels, counts, batch_stats = augment_batch(
      state, batch, key, frozen_models, model=model, config=config, spec=spec,
      num_classes=num_classes)

  def loss_fn(params):
    logits, stats = models.classify(model, params, batch_stats, x,
                                    train=config.classifier.train_bn_mode == "train")
    return metrics.cross_entropy(logits, labels), (logits, stats)

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  hard = labels if labels.ndim == 1 else jnp.argmax(labels, -1)
  return state, {"loss": loss, "accuracy": metrics.accuracy(logits, hard),
                 "grad_norm": optax.global_norm(grads), **counts}


def run(config: ml_collections.ConfigDict, workdir: str, datasets: input_pipeline.Datasets,
        mesh) -> dict:
  """Trains the classifier (resuming from `<workdir>/classifier`), evaluates, writes results."""
  cfg = config.classifier
  spec = attack.from_perturb(config.perturb)
  model = models.create_classifier(config, datasets.num_classes)
  frozen_models = (frozen.for_training(spec, config, workdir, datasets, mesh) if spec
                   else frozen.Frozen())
  train_split = datasets.train
  if config.perturb.cache_latents:
    train_split = dataclasses.replace(train_split, latents=frozen.encode_split(
        frozen_models.latent, train_split, cfg.eval_batch_size, mesh))
  loader = input_pipeline.Loader(train_split, cfg.batch_size, config.seed, mesh,
                                 "classifier.batch_size")
  tx = models.create_classifier_optimizer(cfg, loader.steps_per_epoch)
  total_steps = max(1, int(math.ceil(cfg.epochs * loader.steps_per_epoch)))
  init_key, train_key = jax.random.split(jax.random.PRNGKey(config.seed))
  state = jax.jit(lambda k: models.create_classifier_state(model, k, datasets.image_shape, tx),
                  out_shardings=parallel.replicated(mesh))(init_key)

  eval_fn = jax.jit(functools.partial(models.classifier_eval_step, model=model))
  accuracy = lambda s, split: input_pipeline.mean_over(lambda b, _: eval_fn(s, b), split,
                                                       cfg.eval_batch_size, mesh)

  def curve_point(done, s):
    point = {"epoch": done / loader.steps_per_epoch,
             "test_accuracy": accuracy(s, datasets.eval)["accuracy"]}
    if cfg.curves_train_accuracy:
      point["train_accuracy"] = accuracy(s, datasets.train)["accuracy"]
    return point

  sums = ("nonfinite_decodes",) + (("density_kept",) if spec and
                                   spec.attack.density_percentile > 0 else ())
  out = loop.train(
      os.path.join(workdir, NAME), desc=NAME, state=state,
      step_fn=lambda s, b, k, f: train_step(s, b, k, f, model=model, config=config, spec=spec,
                                            num_classes=datasets.num_classes),
      batch=loader.batch, key=train_key, args=(frozen_models,), total_steps=total_steps,
      identity=models.classifier_identity(config), log_every=cfg.log_every,
      checkpoint_every=cfg.checkpoint_every, mesh=mesh, sums=sums,
      nonfinite_fix="Lower classifier.learning_rate, then rerun.", evaluate=curve_point,
      eval_every=max(1, int(round(cfg.eval_every_epochs * loader.steps_per_epoch))))
  if out.sums["nonfinite_decodes"]:
    logging.warning("classifier: %d perturbed image(s) decoded to NaN/inf and fell back to their "
                    "clean images.", out.sums["nonfinite_decodes"])
  test, train = accuracy(out.state, datasets.eval), accuracy(out.state, datasets.train)
  final = {"test_accuracy": test["accuracy"], "test_loss": test["loss"],
           "train_accuracy": train["accuracy"], "train_loss": train["loss"],
           "steps": total_steps, "epochs": cfg.epochs, "train_examples": len(datasets.train),
           "eval_examples": len(datasets.eval), "method": config.perturb.method,
           "nonfinite_decodes": out.sums["nonfinite_decodes"], "curves": out.curves,
           "frozen": frozen.origins(frozen_models.latent, frozen_models.density)}
  if "density_kept" in out.sums:
    final["density_kept_fraction"] = out.sums["density_kept"] / (total_steps * cfg.batch_size)
  logging.info("classifier done: test_accuracy %.4f, train_accuracy %.4f", test["accuracy"],
               train["accuracy"])
  return results.write(os.path.join(workdir, NAME), final, config, identity(config, datasets))
