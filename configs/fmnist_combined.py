"""Combined augmentation on Fashion-MNIST: crop+flip (pad 2), Cutout 8x8 and Mixup (alpha 0.2)
together with A-LA of fmnist_adv.py, in the classifier step's order: crop+flip -> A-LA ->
Cutout -> Mixup. Set any part off (`--config.classifier.augment.mixup_alpha=0`, ...,
`--config.perturb.method=rla`) to measure it alone; configs/combined_fmnist.py does all.

  python -m train.main --config=configs/fmnist_combined.py --workdir=runs/fmnist_combined \
      --config.flow.checkpoint=runs/fmnist_flow
"""
from configs import base, fmnist_adv

CROP_PAD, CUTOUT, MIXUP_ALPHA = 2, 8, 0.2


def get_config(arg=None):
  c = fmnist_adv.get_config()
  c.classifier.augment.update(crop_flip=True, crop_pad=CROP_PAD, cutout=CUTOUT,
                              mixup_alpha=MIXUP_ALPHA)
  return base.finish(c, arg)
