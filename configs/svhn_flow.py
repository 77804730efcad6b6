"""Glow 3x32x512 on SVHN (source 'svhn': downloaded once into data.data_dir), as cifar10_flow,
trained on randomly translated images (0.1, no flip), as the authors' conf/dataset/svhn.yaml."""
from configs import base


def get_config(arg=None):
  c = base.cifar10()
  c.stages = ("flow",)
  c.data.source = "svhn"
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.flow.augment.update(crop_flip=False, translate=0.1)  # the authors' SVHN transforms
  return base.finish(c, arg)
