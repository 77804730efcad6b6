"""Table 1, Mixup (alpha 1, with crop+flip). Paper: 73.4% (best of lr x alpha grid)."""
from configs import base


def get_config(arg=None):
  c = base.cifar10()
  c.classifier.augment.crop_flip = True
  c.classifier.augment.mixup_alpha = 1.0
  return base.finish(c, arg)
