"""Run labels for the report and the sweeps: readable names of attacks, of training methods,
and of the groups of runs that differ only in their seed (`setting`), the seed-paired difference
of two such groups (`paired`), and config fields as dotted names (`flatten`)."""
import re
from typing import Any, Mapping, Optional

from flax import traverse_util

_ATTACK_NAMES = {"rla": "R-LA", "ala": "A-LA", "pgd": "PGD"}


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


def method_label(config: dict) -> str:
  """The classifier's training method: 'standard', 'standard + DA' (crop/flip or translate),
  'Cutout', 'Mixup', or the perturbation's `attack_label` (' via VAE-GAN' when in a
  VAE-GAN's latent, ' on 50% of each batch' when `perturb.fraction` < 1; with ' + Cutout' etc.);
  methods other than standard are marked ' (no DA)' when trained without crop/flip/translate."""
  p, aug = config["perturb"], config["classifier"]["augment"]
  parts = [attack_label(p)] if p["method"] != "none" else []
  if parts and p["method"] != "pgd" and p.get("generator", "flow") == "vaegan":
    per_class = config.get("vaegan", {}).get("per_class")
    parts[0] += f" via VAE-GAN{' (per class)' if per_class else ''}"
  if parts and p.get("fraction", 1.0) < 1.0:
    parts[0] += f" on {p['fraction']:.0%} of each batch"
  parts += [name for name, key in (("Cutout", "cutout"), ("Mixup", "mixup_alpha")) if aug.get(key)]
  image_da = bool(aug.get("crop_flip") or aug.get("translate"))
  if not parts:
    return "standard + DA" if image_da else "standard"
  return " + ".join(parts) + ("" if image_da else " (no DA)")


def group_key(name: str) -> str:
  """Runs whose names differ only in a trailing seed tag `_s<N>` form one group."""
  return re.sub(r"_s\d+$", "", name)


def paired(by_seed: Mapping[int, float], base_by_seed: Mapping[int, float]) -> Optional[dict]:
  """Over the seeds s both groups ran, d_s = by_seed[s] - base_by_seed[s]: {n, mean_diff,
  min_diff, diffs (in seed order)}; None when they share no seed."""
  seeds = sorted(set(by_seed) & set(base_by_seed))
  if not seeds:
    return None
  diffs = [by_seed[s] - base_by_seed[s] for s in seeds]
  return {"n": len(seeds), "mean_diff": float(sum(diffs) / len(diffs)),
          "min_diff": float(min(diffs)), "diffs": diffs, "seeds": seeds}


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict:
  """Nested dicts -> {'prefix.a.b': leaf}, so that differences name config fields."""
  flat = traverse_util.flatten_dict(dict(tree), sep=".")
  return {f"{prefix}.{k}" if prefix else k: v for k, v in flat.items()}


def setting(payload: Mapping[str, Any]) -> dict:
  """What fixes a stage's results except its seed, as {dotted field: value}: the identity its
  results.json stores and those of the frozen models it used (`frozen`), or, in results written
  before identities were stored, its whole config. Runs of equal settings differ only in their
  seed: the only runs that may be pooled as seeds."""
  flat = flatten(payload.get("identity", payload.get("config", {})))
  for kind, origin in (payload.get("frozen") or {}).items():
    flat.update(flatten(origin.get("identity", {}), f"frozen.{kind}"))
  return {k: v for k, v in flat.items() if k.split(".")[-1] != "seed"}


def setting_key(flat: Mapping[str, Any], ignore: tuple = ()) -> str:
  """A hashable key of a `setting`, less the fields ending in any of `ignore`."""
  return repr(sorted((k, repr(v)) for k, v in flat.items() if not k.endswith(ignore)))


def row_names(rows: Mapping[tuple, Mapping[str, Any]], ignore: tuple = ()) -> dict:
  """{(name, key): label} for rows {(name, setting_key): setting}: the name alone where it is
  unique, else the name and the fields (not ending in `ignore`) where its rows differ, e.g.
  'A-LA l2 ε 1 α 0.5 k 3 (classifier.epochs=25)'."""
  labels = {}
  for row, flat in rows.items():
    peers = [other for r, other in rows.items() if r[0] == row[0]]
    fields = sorted({k for other in peers for k in set(flat) | set(other)
                     if not k.endswith(ignore) and other.get(k) != flat.get(k)})
    shown = ", ".join(f"{k}={flat.get(k)!r}" for k in fields[:4]) + (", …" if fields[4:] else "")
    labels[row] = f"{row[0]} ({shown})" if fields else row[0]
  return labels
