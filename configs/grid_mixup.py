"""Table 1's mixup row is the best of lr {0.1, 0.01} x alpha {0.1, 0.2, 0.3, 0.4, 1} (5% CIFAR-10)."""
from configs import base


def get_config(arg=None):
  return base.sweep([(f"mixup_lr{lr:g}_a{alpha:g}", "cifar10_mixup",
                      {"classifier.learning_rate": lr, "classifier.augment.mixup_alpha": alpha})
                     for lr in (0.1, 0.01) for alpha in (0.1, 0.2, 0.3, 0.4, 1.0)], arg)
