"""Density-filtered A-LA on Fashion-MNIST: fmnist_adv.py's A-LA, with every perturbed image whose
flow log-density log p(x~|y) is below the 10th percentile of the clean training images' rejected
(replaced by its clean image); `--config.perturb.density_mode=shrink` halves the latent
perturbation instead (up to 3 times). The evaluate stage measures the filter's effect on FID:
the same classifier attacked with A-LA unfiltered, rejected and shrunk.

  python -m train.main --config=configs/fmnist_adv_density.py --workdir=runs/fmnist_adv_density \
      --config.flow.checkpoint=runs/fmnist_flow
"""
from configs import base, fmnist_adv

PERCENTILE = 10.0


def get_config(arg=None):
  c = fmnist_adv.get_config()
  c.stages = ("flow", "classifier", "evaluate")
  c.perturb.density_percentile = PERCENTILE
  c.perturb.density_mode = "reject"
  ala = dict(method="ala", norm="linf", eps=0.05, step_size=0.01, steps=10, random_start=False)
  c.evaluation.attacks = (
      ("ala", ala),
      ("ala_reject", dict(ala, density_percentile=PERCENTILE, density_mode="reject")),
      ("ala_shrink", dict(ala, density_percentile=PERCENTILE, density_mode="shrink")),
  )
  c.evaluation.fid_features = "classifier"
  return base.finish(c, arg)
