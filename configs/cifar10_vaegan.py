"""The VAE-GAN baseline's generator on CIFAR-10 (the train split less the 5,000 held-out images),
class-agnostic; `--config.vaegan.per_class=True` trains one per class.

  python -m train.main --config=configs/cifar10_vaegan.py --workdir=runs/cifar10_vaegan
"""
from configs import base


def get_config(arg=None):
  c = base.cifar10()
  c.stages = ("vaegan",)
  return base.finish(c, arg)
