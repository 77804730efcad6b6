"""Quickstart: Fashion-MNIST from Debian's `dataset-fashion-mnist` package, on 2 CPU cores.

A conditional dense flow (12 blocks, 256-unit subnets: half the paper's width, so that it trains
in one epoch of all 60,000 images in a few minutes) is trained once; then the ~100K-parameter
CNN is trained on 600 images (the fixed subset, seed 9999) with 3 seeds each: standard, R-LA
(l_inf 0.15) and A-LA (l_inf 0.05, alpha 0.01, k 10), each for the authors' 20 epochs, and
tested on the 10,000 test images; the seed-0 runs are also evaluated under R-LA and A-LA at
test time (on 1,000 test images, FID against 5,000 training images). Prints test accuracy
mean ± std per method, the paired per-seed difference of R-LA and A-LA to standard (mean and
min), and the paths of the figures.

  python -m train.main --config=configs/quickstart.py --workdir=runs/quickstart

To read another copy of the data (e.g. ../shared/data/fashion-mnist), change SOURCE below.
"""
from configs import base

SOURCE = "idx:/usr/share/datasets/fashion-mnist"
FLOW = {"data.source": SOURCE, "flow.arch.hidden": 256}
SEEDS = (0, 1, 2)
METHODS = (("standard", "fmnist_standard"), ("rla", "fmnist_rla"), ("ala", "fmnist_adv"))


def get_config(arg=None):
  runs = [("flow", "fmnist_flow", dict(FLOW, **{"flow.epochs": 1.0}))]
  for seed in SEEDS:
    # The seed-0 classifiers are also evaluated under R-LA and A-LA (figures of Figs. 3-4).
    stages = ("classifier", "evaluate") if seed == 0 else ("classifier",)
    for name, module in METHODS:
      runs.append((f"{name}_s{seed}", module, dict(
          FLOW, **{"flow.checkpoint": "@flow", "stages": stages, "seed": seed,
                   "evaluation.num_examples": 1000, "evaluation.fid_examples": 5000})))
  return base.sweep(runs, arg)
