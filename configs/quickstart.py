"""Quickstart: Fashion-MNIST from Debian's `dataset-fashion-mnist` package, on 2 CPU cores.

A conditional dense flow (12 blocks, 256-unit subnets: half the paper's width, so that it trains
in one epoch of all 60,000 images in a few minutes) is trained once; then the ~100K-parameter
CNN is trained on 600 images (the fixed subset, seed 9999) three times: standard, R-LA (l_inf
0.15) and A-LA (l_inf 0.05, alpha 0.01, k 10), each for the authors' 20 epochs, and tested on
the 10,000 test images, and evaluated under R-LA and A-LA at test time. Prints the accuracy
table and the paths of the figures.

  python -m train.main --config=configs/quickstart.py --workdir=runs/quickstart

To read another copy of the data (e.g. ../shared/data/fashion-mnist), change SOURCE below.
"""
from configs import base

SOURCE = "idx:/usr/share/datasets/fashion-mnist"
FLOW = {"data.source": SOURCE, "flow.arch.hidden": 256}


def get_config(arg=None):
  # Every classifier is also evaluated under R-LA and A-LA at test time (figures of Figs. 3-4).
  classifier = dict(FLOW, **{"flow.checkpoint": "@flow", "stages": ("classifier", "evaluate")})
  runs = [("flow", "fmnist_flow", dict(FLOW, **{"flow.epochs": 1.0})),
          ("standard", "fmnist_standard", classifier),
          ("rla", "fmnist_rla", classifier),
          ("ala", "fmnist_adv", classifier)]
  return base.sweep(runs, arg)
