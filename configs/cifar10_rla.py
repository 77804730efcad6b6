"""Table 1, R-LA l_inf eps 0.25 (with crop+flip). Paper: 70.1%."""
from configs import base


def get_config(arg=None):
  c = base.cifar10()
  c.classifier.augment.crop_flip = True
  c.perturb.method = "rla"
  c.perturb.norm = "linf"
  c.perturb.eps = 0.25
  return base.finish(c, arg)
