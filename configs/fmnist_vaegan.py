"""The VAE-GAN baseline's generator on Fashion-MNIST (Stutz et al.: code size 10), class-agnostic;
`--config.vaegan.per_class=True` trains one per class. Trained on all 60,000 training images.

  python -m train.main --config=configs/fmnist_vaegan.py --workdir=runs/fmnist_vaegan
"""
from configs import base


def get_config(arg=None):
  c = base.fmnist()
  c.stages = ("vaegan",)
  return base.finish(c, arg)
