"""Table 1, A-LA l2 eps 1.0, alpha 0.5, k 3 (with crop+flip): the paper's best. Paper: 80.4%.

Runs the flow stage into the same workdir first unless flow.checkpoint names a finished flow run:
  python -m train.main --config=configs/cifar10_adv.py --workdir=runs/cifar10_adv \
      --config.flow.checkpoint=runs/cifar10_flow
"""
from configs import base


def get_config(arg=None):
  c = base.cifar10()
  c.stages = ("flow", "classifier")
  c.classifier.augment.crop_flip = True
  c.perturb.method = "ala"
  c.perturb.norm = "l2"
  c.perturb.eps = 1.0
  c.perturb.step_size = 0.5
  c.perturb.steps = 3
  return base.finish(c, arg)
