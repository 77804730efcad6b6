"""Fig. 5, A-LA l_inf eps 0.05, alpha 0.01, k 10, true labels, classifier in eval mode, zero start.
"""
from configs import base


def get_config(arg=None):
  c = base.fmnist()
  c.stages = ("flow", "classifier")
  c.perturb.method = "ala"
  c.perturb.eps = 0.05
  c.perturb.step_size = 0.01
  c.perturb.steps = 10
  return base.finish(c, arg)
