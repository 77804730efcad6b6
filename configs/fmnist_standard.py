"""Fig. 5, standard: the Stutz et al. CNN on 600 Fashion-MNIST images."""
from configs import base


def get_config(arg=None):
  c = base.fmnist()
  c.perturb.method = "none"
  return base.finish(c, arg)
