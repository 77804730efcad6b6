"""Glow 3x32x512 on CIFAR-10 (train split; bits/dim on the test split); the authors' schedule: Adamax 5e-4, batch 64,
250 epochs, warm-up over 500k samples. Expected: ~3.4 bits/dim on lossless CIFAR-10 (3.35 in the
Glow paper); the JPEG copy in ../shared/data (base.CIFAR10_TAR) gives different (not comparable) numbers.

  python -m train.main --config=configs/cifar10_flow.py --workdir=runs/cifar10_flow
"""
from configs import base


def get_config(arg=None):
  c = base.cifar10()
  c.stages = ("flow",)
  return base.finish(c, arg)
