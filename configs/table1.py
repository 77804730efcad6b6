"""Table 1: every method on the fixed 5% subset (2,500 images) and on all of the 45,000 training images
(CIFAR-10 train split less the 5,000 held out for evaluation), with the evaluate stage (Tables 4-6:
robustness, perturbation sizes, FID/KID) on the seed-0 classifiers of standard, +DA, image PGD,
R-LA and A-LA.

One Glow is trained first (run `flow`) and shared by R-LA and A-LA. standard, +DA, R-LA and A-LA
run with 3 seeds, cutout, mixup and image PGD with one (the paper reports one run of each). Paper
(5% / full): standard 49.8/89.7, +DA 64.1/95.2, cutout 66.8/96.0, mixup 73.4/95.9, R-LA
70.1/96.3, A-LA 80.4/96.6 (image PGD is not in its Table 1; it is Table 6's baseline). `:cpu` runs
the reduced models (Glow 3x4x64 for 5 epochs, ResNet-18 width 16 for 60 epochs).

  python -m train.main --config=configs/table1.py:cpu --workdir=runs/table1_cpu
  python -m train.report runs/table1_cpu

The 5% column alone: --config.only=_5pct. On a machine with only the CIFAR-10 JPEG tar:
--config.every_run.data.source=folder:PATH.tar.xz --config.every_run.data.eval_split=
--config.every_run.data.holdout=5000.
"""
from configs import base

METHODS = ("standard", "da", "cutout", "mixup", "pgd", "rla", "adv")
SEEDED = ("standard", "da", "rla", "adv")  # 3 seeds; the others one
EVALUATED = ("standard", "da", "pgd", "rla", "adv")  # the evaluate stage on their seed 0
SEEDS = (0, 1, 2)
SIZES = (("5pct", 2500), ("full", 0))


def get_config(arg=None):
  runs = [("flow", "cifar10_flow", {})]
  for size_name, size in SIZES:
    for seed in SEEDS:
      for method in METHODS:
        if seed and method not in SEEDED:
          continue
        stages = ("classifier", "evaluate") if seed == 0 and method in EVALUATED else ("classifier",)
        runs.append((f"{method}_{size_name}_s{seed}", f"cifar10_{method}",
                     {"data.train_size": size, "flow.checkpoint": "@flow", "seed": seed,
                      "stages": stages}))
  return base.sweep(runs, arg)
