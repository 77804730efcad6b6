"""Flow stage: maximum-likelihood training of the Glow (or dense conditional flow).

Objective: the mean over the batch of bits/dim of the dequantised images,
  bpd(x) = -(log p(y) - D log 256) / (D log 2),  y = (255 x + u) / 256,  u ~ U(0, 1)^D,
minimised with Adamax (lr 5e-4, L2 weight decay 5e-5 added to the gradient, linear warm-up over
the first `warmup_samples` samples), as the authors' code does.

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
import numpy as np
import optax
from absl import logging
from flax.training import train_state

from jaxflowaug import flows, parallel
from train import checkpoint, figures, input_pipeline, results, writer

STAGE = "flow"


class NonFiniteError(RuntimeError):
  """Training produced NaN or inf."""


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


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the flow fields at start-up; raises naming the field and the fix."""
  cfg = config.flow
  create_flow(config, 0)
  parallel.check_batch_size(cfg.batch_size, "flow.batch_size")
  for field in ("learning_rate", "epochs"):
    if not cfg[field] > 0:
      raise ValueError(f"flow.{field}={cfg[field]} must be > 0.")
  for field in ("log_every", "checkpoint_every", "init_batch_size", "recon_examples"):
    if cfg[field] < 1:
      raise ValueError(f"flow.{field}={cfg[field]} must be >= 1.")


def identity(config: ml_collections.ConfigDict, image_shape, num_classes: int) -> dict:
  """What fixes a flow: its architecture, the data it models. A checkpoint must match it.

  `flow.arch.remat` changes only speed and memory, so it is left out."""
  arch = {k: v for k, v in config.flow.arch.to_dict().items() if k != "remat"}
  return {"model": config.flow.model, "arch": arch,
          "conditional": bool(config.flow.conditional), "image_shape": list(image_shape),
          "num_classes": int(num_classes if config.flow.conditional else 0)}


def create_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adamax with L2 weight decay and a linear warm-up over `warmup_samples` samples."""
  warmup_steps = max(1, cfg.warmup_samples // cfg.batch_size)
  schedule = optax.linear_schedule(0.0, cfg.learning_rate, warmup_steps)
  parts = [optax.clip_by_global_norm(cfg.max_grad_norm)] if cfg.max_grad_norm else []
  parts += [optax.add_decayed_weights(cfg.weight_decay), optax.adamax(schedule)]
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
  x = input_pipeline.to_float(init_batch["image"])
  init_key, dequant_key = jax.random.split(key)
  variables = flow.init({"params": init_key, "dequant": dequant_key}, x, _labels(flow, init_batch),
                        dequantize=True, method=flow.forward)
  params = variables.pop("params")
  return FlowState.create(apply_fn=flow.apply, params=params, tx=tx, consts=dict(variables))


def train_step(state: FlowState, batch: dict, key: jax.Array, flow: nn.Module,
               nan_step: int = -1):
  """One Adamax step on mean bits/dim. `nan_step` (tests only) poisons the loss at that step."""
  x, y = input_pipeline.to_float(batch["image"]), _labels(flow, batch)

  def loss_fn(params):
    bpd = flow.apply(state.variables(params), x, y, dequantize=True, method=flow.bits_per_dim,
                     rngs={"dequant": jax.random.fold_in(key, state.step)})
    loss = jnp.mean(bpd)
    return jnp.where(state.step == nan_step, jnp.nan, loss)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  new_state = state.apply_gradients(grads=grads)
  return new_state, {"bits_per_dim": loss, "grad_norm": optax.global_norm(grads)}


def eval_step(variables: dict, batch: dict, key: jax.Array, flow: nn.Module) -> dict:
  """Sums of bits/dim (dequantised) over the unmasked rows of a batch."""
  bpd = flow.apply(variables, input_pipeline.to_float(batch["image"]),
                   _labels(flow, batch), dequantize=True, method=flow.bits_per_dim,
                   rngs={"dequant": key})
  return {"bpd_sum": jnp.sum(bpd * batch["mask"]), "count": jnp.sum(batch["mask"])}


def reconstruction_error(variables: dict, batch: dict, flow: nn.Module) -> jax.Array:
  """max |inverse(forward(x)) - x| over a batch (exactness of the decode, float32); inf if any
  entry is NaN (XLA's max may skip NaNs)."""
  x, y = input_pipeline.to_float(batch["image"]), _labels(flow, batch)
  z, _ = flow.apply(variables, x, y, method=flow.forward)
  error = jnp.abs(flow.apply(variables, z, y, method=flow.inverse) - x)
  return jnp.max(jnp.where(jnp.isnan(error), jnp.inf, error))


def sample(variables: dict, key: jax.Array, flow: nn.Module, shape, temperature: float,
           labels: Optional[jax.Array]) -> jax.Array:
  """x = F^-1(T * eps), eps ~ N(0, I) of `shape` (N, H, W, C); clipped to [0, 1]."""
  z = temperature * jax.random.normal(key, shape)
  return jnp.clip(flow.apply(variables, z, labels, method=flow.inverse), 0.0, 1.0)


def evaluate(variables, flow, split, cfg, mesh, key) -> float:
  """Mean bits/dim over the (first `eval_examples` of the) evaluation split."""
  if cfg.eval_examples:
    split = split.take(np.arange(min(cfg.eval_examples, len(split))))
  step = jax.jit(lambda p, b, k: eval_step(p, b, k, flow))
  totals = input_pipeline.sum_over(
      lambda batch, i: step(variables, batch, jax.random.fold_in(key, i)), split,
      cfg.batch_size, mesh)
  return totals["bpd_sum"] / max(totals["count"], 1.0)


def _first_nonfinite(history: list) -> Optional[int]:
  for step, loss in history:
    if not np.isfinite(float(loss)):
      return step
  return None


def load_frozen(path: str, config: ml_collections.ConfigDict, image_shape, num_classes: int):
  """(flow module, variables) from the latest checkpoint of a flow stage under `path`.

  `path` is a work directory (holding `flow/checkpoints`) or that checkpoints directory itself.
  Raises if there is none, or if it was trained for another architecture or data shape.
  """
  state = checkpoint.load_frozen(
      path, STAGE, identity(config, image_shape, num_classes), "flow.checkpoint",
      "Train a flow for this config (leave flow.checkpoint empty) or set flow.model/flow.arch/"
      "flow.conditional and the data to match.")
  return create_flow(config, num_classes), {"params": state["params"], **state["consts"]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       datasets: Optional[input_pipeline.Datasets] = None) -> dict:
  """Trains the flow (resuming from `<workdir>/flow`), evaluates it, writes its results.

  Every check (config, data, the flow's fit to the images) runs before anything is written.
  """
  validate(config)
  cfg = config.flow
  done = results.finished(workdir, STAGE)
  if done is not None:
    return done
  datasets = datasets or input_pipeline.load(config)
  mesh = parallel.make_mesh()
  flow = create_flow(config, datasets.num_classes)
  tx = create_optimizer(cfg)
  loader = input_pipeline.Loader(datasets.flow_train, cfg.batch_size, config.seed, mesh,
                                 "flow.batch_size")
  total_steps = max(1, int(math.ceil(cfg.epochs * loader.steps_per_epoch)))
  key = jax.random.PRNGKey(config.seed)
  init_key, train_key, eval_key, sample_key = jax.random.split(key, 4)

  logging.info("Initialising %s on %d images...", cfg.model, cfg.init_batch_size)
  init_batch = input_pipeline.first_rows(datasets.flow_train, cfg.init_batch_size, mesh)
  try:
    state = jax.jit(lambda k, b: create_train_state(flow, k, b, tx),
                    out_shardings=parallel.replicated(mesh))(init_key, init_batch)
  except ValueError as e:
    raise ValueError(
        f"flow.model={cfg.model!r} with flow.arch={dict(cfg.arch)} cannot model the "
        f"{'x'.join(map(str, datasets.image_shape))} images of data.source="
        f"{config.data.source!r}: {e} Change flow.arch or the data.") from None
  logging.info("flow parameters: %d", sum(x.size for x in jax.tree.leaves(state.params)))

  stage_dir = writer.stage_dir(workdir, STAGE)
  ckpt = checkpoint.Checkpointer(os.path.join(stage_dir, "checkpoints"),
                                 identity(config, datasets.image_shape, datasets.num_classes),
                                 kill_during_save_step=config.debug_kill_during_save_step)
  start = ckpt.latest_step()
  if start is not None:
    state, _ = ckpt.restore(start, state)
    logging.info("Resumed flow training from step %d.", start)
  start = int(state.step)

  step_fn = jax.jit(lambda s, b, k: train_step(s, b, k, flow, cfg.debug_nan_step),
                    donate_argnums=(0,),
                    out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)))
  recon_batch = input_pipeline.first_rows(datasets.eval, cfg.recon_examples, mesh)
  recon_fn = jax.jit(lambda p, b: reconstruction_error(p, b, flow))
  log = writer.MetricWriter(stage_dir, total_steps, start, desc="flow")
  history = []
  try:
    for step in range(start, total_steps):
      state, metrics = step_fn(state, loader.batch(step), train_key)
      history.append((step, metrics["bits_per_dim"]))
      log.advance()
      last = step + 1 == total_steps
      if (step + 1) % cfg.log_every == 0 or last or (step + 1) % cfg.checkpoint_every == 0:
        bad = _first_nonfinite(history)
        if bad is not None:
          raise NonFiniteError(
              f"flow training produced a non-finite loss at step {bad}; {ckpt.last_good()}. "
              "Lower flow.learning_rate, lengthen flow.warmup_samples or set "
              "flow.max_grad_norm, then rerun.")
        history = []
        m = parallel.to_host(metrics)
        m["reconstruction_error"] = parallel.to_host(recon_fn(state.variables(), recon_batch))
        log.scalars(step + 1, m, prefix="train/")
        if (step + 1) % cfg.checkpoint_every == 0 or last:
          ckpt.save(step + 1, state)
  finally:
    log.close()
    ckpt.close()

  val_bpd = evaluate(state.variables(), flow, datasets.eval, cfg, mesh, eval_key)
  recon = float(parallel.to_host(recon_fn(state.variables(), recon_batch)))
  n = cfg.num_samples
  labels = jnp.arange(n) % datasets.num_classes if flow.num_classes else None
  samples = parallel.to_host(jax.jit(
      lambda p, k, y: sample(p, k, flow, (n,) + datasets.image_shape, cfg.sample_temperature, y))(
          state.variables(), sample_key, labels))
  grid = figures.image_grid(samples, ncol=int(math.ceil(math.sqrt(n))))
  sample_path = figures.save_png(grid, os.path.join(stage_dir, "samples.png"))
  final = {"val_bits_per_dim": val_bpd, "max_reconstruction_error": recon, "steps": total_steps,
           "epochs": cfg.epochs, "samples_png": sample_path,
           "num_params": int(sum(x.size for x in jax.tree.leaves(state.params)))}
  logging.info("flow done: %s", final)
  return results.write(stage_dir, final, config)
