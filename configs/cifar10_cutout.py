"""Table 1, Cutout (16x16, with crop+flip). Paper: 66.8% (best of lr 0.1/0.01)."""
from configs import base


def get_config(arg=None):
  c = base.cifar10()
  c.classifier.augment.crop_flip = True
  c.classifier.augment.cutout = 16
  return base.finish(c, arg)
