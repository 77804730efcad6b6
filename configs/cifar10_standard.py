"""Table 1, 'standard (no DA)': ResNet-18 on the fixed 5% CIFAR-10 subset. Paper: 49.8%."""
from configs import base


def get_config(arg=None):
  c = base.cifar10()
  c.perturb.method = "none"
  return base.finish(c, arg)
