"""Exact vs approximate coding: the same classifier and A-LA budget with the latent of the flow
(exact) and of a VAE-GAN (approximate; class-agnostic and per-class), next to standard training.
Fashion-MNIST at 600 and 2,400 images (A-LA linf 0.05/0.01/10) and CIFAR-10 on its 5% subset
(A-LA l2 1/0.5/3 with crop+flip), 3 seeds each. `:cpu` trains the reduced models.

  python -m train.main --config=configs/ablation_coding.py --workdir=runs/ablation
  python -m train.report runs/ablation
"""
from configs import base

SEEDS = (0, 1, 2)


def get_config(arg=None):
  runs = []
  for data, sizes in (("fmnist", (600, 2400)), ("cifar10", (2500,))):
    runs += [(f"{data}_flow", f"{data}_flow", {}), (f"{data}_vaegan", f"{data}_vaegan", {}),
             (f"{data}_vaegan_per_class", f"{data}_vaegan", {"vaegan.per_class": True})]
    standard = "fmnist_standard" if data == "fmnist" else "cifar10_da"
    for size in sizes:
      for seed in SEEDS:
        common = {"seed": seed, "data.train_size": size}
        runs += [
            (f"{data}_standard_n{size}_s{seed}", standard, common),
            (f"{data}_ala_flow_n{size}_s{seed}", f"{data}_adv",
             dict(common, **{"flow.checkpoint": f"@{data}_flow"})),
            (f"{data}_ala_vaegan_n{size}_s{seed}", f"{data}_adv_vaegan",
             dict(common, **{"vaegan.checkpoint": f"@{data}_vaegan"})),
            (f"{data}_ala_vaegan_per_class_n{size}_s{seed}", f"{data}_adv_vaegan",
             dict(common, **{"vaegan.checkpoint": f"@{data}_vaegan_per_class",
                             "vaegan.per_class": True})),
        ]
  return base.sweep(runs, arg)
