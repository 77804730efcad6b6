"""Table 1: every method on the fixed 5% subset (2,500 images) and on all of the 45,000 training images
(CIFAR-10 train split less the 5,000 held out for evaluation).

One Glow is trained first (run `flow`) and shared by R-LA and A-LA. Paper (5% / full):
standard 49.8/89.7, +DA 64.1/95.2, cutout 66.8/96.0, mixup 73.4/95.9, R-LA 70.1/96.3,
A-LA 80.4/96.6. `:cpu` runs the reduced models (Glow 3x4x64, ResNet-18 width 16, 60 epochs).

  python -m train.main --config=configs/table1.py:cpu --workdir=runs/table1_cpu
  python -m train.report runs/table1_cpu
"""
from configs import base

METHODS = ("standard", "da", "cutout", "mixup", "rla", "adv")
SIZES = (("5pct", 2500), ("full", 0))


def get_config(arg=None):
  runs = [("flow", "cifar10_flow", {})]
  for size_name, size in SIZES:
    for method in METHODS:
      runs.append((f"{method}_{size_name}", f"cifar10_{method}",
                   {"data.train_size": size, "flow.checkpoint": "@flow"}))
  return base.sweep(runs, arg)
