"""Exact vs approximate coding: A-LA of fmnist_adv.py (l_inf eps 0.05, alpha 0.01, k 10) in the
latent of a VAE-GAN instead of the flow, x~ = G(mu(x) + delta) (Stutz et al.'s on-manifold
adversarial training). Both latents have a N(0, I) prior, so eps is in the same units.

  python -m train.main --config=configs/fmnist_adv_vaegan.py --workdir=runs/fmnist_adv_vaegan \
      --config.vaegan.checkpoint=runs/fmnist_vaegan
"""
from configs import base, fmnist_adv


def get_config(arg=None):
  c = fmnist_adv.get_config()
  c.stages = ("vaegan", "classifier")
  c.perturb.generator = "vaegan"
  return base.finish(c, arg)
