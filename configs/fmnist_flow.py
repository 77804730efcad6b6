"""The paper's class-conditional dense flow (12 GLOW coupling blocks, 512-unit subnets, clamp
2, Gaussian input noise 0.1) on all 60,000 Fashion-MNIST training images, 100 epochs.

  python -m train.main --config=configs/fmnist_flow.py --workdir=runs/fmnist_flow
"""
from configs import base


def get_config(arg=None):
  c = base.fmnist()
  c.stages = ("flow",)
  return base.finish(c, arg)
