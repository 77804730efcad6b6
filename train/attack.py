"""The one attack specification of training and evaluation, built and validated once.

`Spec` is what a perturbation needs beyond the library's `perturb.Attack` (the math): whose
latent it perturbs (`generator`: 'flow', exact code F / F^-1, or 'vaegan', approximate code
mu / G), the attacked classifier's BatchNorm mode (`bn_mode`) and whether the running statistics
that its train-mode passes move are kept (`bn_update`). It comes from `config.perturb`
(training; method 'none' gives no spec) or from an entry of `config.evaluation.attacks`
(evaluation: flow latent, BatchNorm in eval mode), and every error names the config field.
"""
import dataclasses
from typing import Any, Mapping, Optional

import ml_collections

from jaxflowaug import perturb

GENERATORS = ("flow", "vaegan")
BN_MODES = ("train", "eval")
BN_UPDATES = ("keep", "discard")
_ENTRY_KEYS = ("method", "norm", "eps", "step_size", "steps", "random_start", "labels",
               "density_percentile", "density_mode", "density_shrink_steps")


@dataclasses.dataclass(frozen=True)
class Spec:
  """A perturbation: `attack` (the math), `generator`, `bn_mode`, `bn_update` (module doc)."""
  attack: perturb.Attack
  generator: str = "flow"
  bn_mode: str = "eval"
  bn_update: str = "discard"

  @property
  def needs_vaegan(self) -> bool:
    return self.attack.latent and self.generator == "vaegan"

  @property
  def needs_flow(self) -> bool:
    """Whether it reads a flow: a latent attack through it, or the density filter."""
    return ((self.attack.latent and self.generator == "flow")
            or self.attack.density_percentile > 0)


def _attack(fields: Mapping[str, Any], where: str) -> perturb.Attack:
  try:
    return perturb.Attack(**fields).check(where)
  except TypeError as e:
    raise ValueError(f"{where}: {e}") from None


def from_perturb(p: ml_collections.ConfigDict) -> Optional[Spec]:
  """The training perturbation of `config.perturb`; None for method 'none'."""
  if p.method == "none":
    if p.density_percentile > 0:
      raise ValueError("perturb.density_percentile > 0 filters perturbations, but perturb.method "
                       "is 'none'; choose a perturbation or set perturb.density_percentile=0.")
    if p.cache_latents:
      raise ValueError("perturb.cache_latents=True needs perturb.method 'rla' or 'ala' (got "
                       "'none'); set perturb.cache_latents=False.")
    return None
  if p.method not in perturb.ATTACKS:
    raise ValueError(f"perturb.method={p.method!r} is unknown; use 'none' or one of "
                     f"{perturb.ATTACKS}.")
  fields = {f.name: p[f.name] for f in dataclasses.fields(perturb.Attack)}
  spec = Spec(_attack(fields, "perturb."), generator=p.generator, bn_mode=p.bn_mode,
              bn_update=p.bn_update)
  if spec.generator not in GENERATORS:
    raise ValueError(f"perturb.generator={p.generator!r} is unknown; use one of {GENERATORS}.")
  if spec.bn_mode not in BN_MODES:
    raise ValueError(f"perturb.bn_mode={p.bn_mode!r}: use one of {BN_MODES}.")
  if spec.bn_update not in BN_UPDATES:
    raise ValueError(f"perturb.bn_update={p.bn_update!r}: use one of {BN_UPDATES}.")
  if spec.bn_update == "keep" and spec.bn_mode == "eval":
    raise ValueError("perturb.bn_update='keep' keeps the running statistics that train-mode "
                     "attack passes move, but perturb.bn_mode='eval' moves none; set "
                     "perturb.bn_update='discard' or perturb.bn_mode='train'.")
  if p.cache_latents and not spec.attack.latent:
    raise ValueError(f"perturb.cache_latents=True needs perturb.method 'rla' or 'ala' (got "
                     f"{p.method!r}); set perturb.cache_latents=False.")
  return spec


def from_entries(config: ml_collections.ConfigDict) -> list:
  """`config.evaluation.attacks` as [(name, Spec)]: every entry perturbs all images, in the
  flow's latent for 'rla'/'ala', with the classifier in eval mode; `labels` defaults to 'pred'
  (the classifier's own clean predictions, as the authors' evaluation, flpert/pert.py:119-122)."""
  parsed = []
  for entry in config.evaluation.attacks:
    if (len(entry) != 2 or not isinstance(entry[0], str)
        or not isinstance(entry[1], (dict, ml_collections.ConfigDict))):
      raise ValueError(f"evaluation.attacks entry {entry!r} must be a pair (name, dict(method=..., "
                       "norm=..., eps=..., step_size=..., steps=...)).")
    name, fields = entry[0], dict(entry[1])
    where = f"evaluation.attacks[{name!r}]: "
    if name in [n for n, _ in parsed]:
      raise ValueError(f"{where}attack names must be unique; rename one of them.")
    unknown = sorted(set(fields) - set(_ENTRY_KEYS))
    if unknown:
      raise ValueError(f"{where}unknown keys {unknown}; the keys are {_ENTRY_KEYS}.")
    missing = [k for k in ("method", "norm", "eps") if k not in fields]
    if missing:
      raise ValueError(f"{where}{missing[0]} is missing; every attack names method, norm, eps.")
    fields.setdefault("labels", "pred")
    parsed.append((name, Spec(_attack(fields, where))))
  return parsed
