"""Glow 3x32x512 on SVHN (source 'svhn': downloaded once into data.data_dir), as cifar10_flow."""
from configs import base


def get_config(arg=None):
  c = base.cifar10()
  c.stages = ("flow",)
  c.data.source = "svhn"
  c.data.train_split = "train"
  c.data.eval_split = "test"
  return base.finish(c, arg)
