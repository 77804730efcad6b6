"""Density-filtered perturbations on Fashion-MNIST, 600 and 2,400 images, 3 seeds: A-LA unfiltered,
rejected below the 10th percentile of the training log-density, and shrunk
(configs/fmnist_adv_density.py); each with the evaluate stage's FID of the three attacks.

  python -m train.main --config=configs/density_fmnist.py --workdir=runs/density
  python -m train.report runs/density
"""
from configs import base

SEEDS = (0, 1, 2)
MODES = {"ala": {"perturb.density_percentile": 0.0},
         "ala_reject": {"perturb.density_mode": "reject"},
         "ala_shrink": {"perturb.density_mode": "shrink"}}


def get_config(arg=None):
  runs = [("flow", "fmnist_flow", {})]
  for size in (600, 2400):
    for name, overrides in MODES.items():
      for seed in SEEDS:
        runs.append((f"{name}_n{size}_s{seed}", "fmnist_adv_density",
                     dict(overrides, **{"seed": seed, "data.train_size": size,
                                        "flow.checkpoint": "@flow"})))
  return base.sweep(runs, arg)
