"""What each stage trains, built from the config: its module, optimiser, state and identity.

A stage's *identity* is the set of config fields that fix what it trains; a checkpoint stores
it, and restoring or freezing a checkpoint of another identity is refused (train/checkpoint.py).
Fields that change only speed or logging (`flow.arch.remat`, cadences, `perturb.unroll`) or how a
trained model is used (`flow.arch.authors_decode`) are left out, so changing them resumes (or
reuses) the same run.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from jaxflowaug import data, flows, models, vaegan

# --- flow ---------------------------------------------------------------------------------


def create_flow(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """The flow named by `config.flow.model` with `config.flow.arch` as its fields."""
  name = config.flow.model
  if not hasattr(flows, name) or not isinstance(getattr(flows, name), type):
    raise ValueError(f"flow.model={name!r} is unknown; use 'Glow' or 'DenseFlow'.")
  kwargs = dict(config.flow.arch)
  kwargs["num_classes"] = num_classes if config.flow.conditional else 0
  try:
    return getattr(flows, name)(**kwargs)
  except (TypeError, ValueError) as e:
    raise ValueError(f"flow.arch={dict(config.flow.arch)} does not fit flow.model={name!r}: "
                     f"{e} Fix flow.arch.") from None


def flow_identity(config: ml_collections.ConfigDict, image_shape, num_classes: int) -> dict:
  """What fixes a flow: its architecture (less the use-time `remat` and `authors_decode`), its
  training augmentation and the data it models."""
  arch = {k: v for k, v in config.flow.arch.to_dict().items()
          if k not in ("remat", "authors_decode")}
  return {"model": config.flow.model, "arch": arch, "augment": config.flow.augment.to_dict(),
          "conditional": bool(config.flow.conditional), "image_shape": list(image_shape),
          "num_classes": int(num_classes if config.flow.conditional else 0)}


# --- VAE-GAN ------------------------------------------------------------------------------


def create_vaegan(config: ml_collections.ConfigDict, image_shape, num_classes: int):
  cfg = config.vaegan
  return vaegan.VAEGAN(tuple(image_shape), latent_dim=cfg.latent_dim, width=cfg.width,
                       num_classes=num_classes if cfg.per_class else 0)


def vaegan_identity(config: ml_collections.ConfigDict, image_shape, num_classes: int) -> dict:
  """What fixes a VAE-GAN: its architecture and the data it models."""
  cfg = config.vaegan
  return {"latent_dim": cfg.latent_dim, "width": cfg.width, "per_class": bool(cfg.per_class),
          "image_shape": list(image_shape), "num_classes": int(num_classes)}


# --- classifier ---------------------------------------------------------------------------


class ClassifierState(train_state.TrainState):
  batch_stats: Any = None


def create_classifier(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  return models.get(config.classifier.model, num_classes=num_classes, **config.classifier.arch)


def create_classifier_optimizer(cfg: ml_collections.ConfigDict,
                                steps_per_epoch: int) -> optax.GradientTransformation:
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


def create_classifier_state(model: nn.Module, key: jax.Array, image_shape,
                            tx: optax.GradientTransformation) -> ClassifierState:
  variables = model.init(key, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
  return ClassifierState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                                batch_stats=variables.get("batch_stats"))


def classifier_identity(config: ml_collections.ConfigDict) -> dict:
  """What fixes a classifier run: data, classifier and perturbation fields and the seed, less
  logging, checkpoint and evaluation cadences, the flow guard's tolerance and PGD unrolling."""
  keep = {k: config[k].to_dict() for k in ("data", "classifier", "perturb")}
  for k in ("log_every", "checkpoint_every", "eval_every_epochs", "max_flow_reconstruction_error"):
    keep["classifier"].pop(k, None)
  keep["perturb"].pop("unroll", None)
  keep["seed"] = config.seed
  return keep


def classify(model: nn.Module, params, batch_stats, x: jax.Array, train: bool):
  """(logits (B, K), batch_stats after the pass): in train mode BatchNorm normalises with the
  batch's statistics and moves its running statistics towards them (the second output); in
  eval mode it uses the running statistics and returns them unchanged."""
  variables = {"params": params, "batch_stats": batch_stats}
  if train:
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return logits, updates["batch_stats"]
  return model.apply(variables, x, train=False), batch_stats


def classifier_eval_step(state: ClassifierState, batch: dict, model: nn.Module) -> dict:
  """Sums of correct predictions ('accuracy') and loss over the unmasked rows, and their
  'count' (BatchNorm in eval mode), for `input_pipeline.mean_over`."""
  logits, _ = classify(model, state.params, state.batch_stats,
                       data.to_float(batch["image"]), train=False)
  correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  return {"accuracy": jnp.sum(correct * batch["mask"]), "loss": jnp.sum(loss * batch["mask"]),
          "count": jnp.sum(batch["mask"])}


