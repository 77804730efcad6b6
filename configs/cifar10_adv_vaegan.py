"""Exact vs approximate coding on CIFAR-10: A-LA of cifar10_adv.py (l2 eps 1, alpha 0.5, k 3,
with crop+flip) in the latent of a VAE-GAN instead of the flow, x~ = G(mu(x) + delta).

  python -m train.main --config=configs/cifar10_adv_vaegan.py --workdir=runs/cifar10_adv_vaegan \
      --config.vaegan.checkpoint=runs/cifar10_vaegan
"""
from configs import base, cifar10_adv


def get_config(arg=None):
  c = cifar10_adv.get_config()
  c.stages = ("vaegan", "classifier")
  c.perturb.generator = "vaegan"
  return base.finish(c, arg)
