"""Table 1's cutout row is the best of lr {0.1, 0.01} (5% CIFAR-10, cutout 16 with crop+flip)."""
from configs import base


def get_config(arg=None):
  return base.sweep([(f"cutout_lr{lr:g}", "cifar10_cutout", {"classifier.learning_rate": lr})
                     for lr in (0.1, 0.01)], arg)
