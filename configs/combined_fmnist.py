"""Does combining augmentations beat each alone? Fashion-MNIST, 600 images, 3 seeds: none (the
baseline the report pairs every method with, seed by seed), each of crop+flip, Cutout, Mixup,
R-LA and A-LA alone, the three image-space ones together, and all of them with R-LA or with
A-LA (configs/fmnist_combined.py). One flow for every latent run.

  python -m train.main --config=configs/combined_fmnist.py --workdir=runs/combined
  python -m train.report runs/combined
"""
from configs import base, fmnist_combined

SEEDS = (0, 1, 2)
OFF = {"classifier.augment.crop_flip": False, "classifier.augment.cutout": 0,
       "classifier.augment.mixup_alpha": 0.0, "perturb.method": "none"}
RUNS = {
    "standard": OFF,
    "crop_flip": dict(OFF, **{"classifier.augment.crop_flip": True}),
    "cutout": dict(OFF, **{"classifier.augment.cutout": fmnist_combined.CUTOUT}),
    "mixup": dict(OFF, **{"classifier.augment.mixup_alpha": fmnist_combined.MIXUP_ALPHA}),
    "rla": dict(OFF, **{"perturb.method": "rla", "perturb.eps": 0.15}),
    "ala": dict(OFF, **{"perturb.method": "ala"}),
    "image_all": dict(OFF, **{"classifier.augment.crop_flip": True,
                              "classifier.augment.cutout": fmnist_combined.CUTOUT,
                              "classifier.augment.mixup_alpha": fmnist_combined.MIXUP_ALPHA}),
    "all_rla": {"perturb.method": "rla", "perturb.eps": 0.15},
    "all_ala": {},
}


def get_config(arg=None):
  runs = [("flow", "fmnist_flow", {})]
  for name, overrides in RUNS.items():
    for seed in SEEDS:
      runs.append((f"{name}_s{seed}", "fmnist_combined",
                   dict(overrides, **{"seed": seed, "flow.checkpoint": "@flow"})))
  return base.sweep(runs, arg)
