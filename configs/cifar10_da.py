"""Table 1, 'standard + common DA': pad-4 crop + horizontal flip. Paper: 64.1%."""
from configs import base


def get_config(arg=None):
  c = base.cifar10()
  c.classifier.augment.crop_flip = True
  return base.finish(c, arg)
