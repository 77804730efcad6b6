"""Image-space PGD baseline (Madry et al.), l_inf eps 0.03, alpha 0.008, k 10 (Tables 4-6)."""
from configs import base


def get_config(arg=None):
  c = base.cifar10()
  c.classifier.augment.crop_flip = True
  c.perturb.method = "pgd"
  c.perturb.norm = "linf"
  c.perturb.eps = 0.03
  c.perturb.step_size = 0.008
  c.perturb.steps = 10
  return base.finish(c, arg)
