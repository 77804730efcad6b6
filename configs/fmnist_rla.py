"""Fig. 5, R-LA l_inf eps 0.15 with the conditional dense flow."""
from configs import base


def get_config(arg=None):
  c = base.fmnist()
  c.stages = ("flow", "classifier")
  c.perturb.method = "rla"
  c.perturb.eps = 0.15
  return base.finish(c, arg)
