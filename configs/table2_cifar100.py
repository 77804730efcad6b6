"""Table 2, transfer: ResNet-18 on 10% of CIFAR-100 with latent perturbations from a Glow trained
on CIFAR-10. CIFAR-100 (source 'cifar100') is downloaded once into data.data_dir (offline: put
cifar-100-binary.tar.gz in data.archive_dir; see README). Paper: standard 36.4; R-LA l_inf
0.2 -> 39.7, 0.3 -> 41.0; R-LA l2 10 -> 40.4, 20 -> 42.3; A-LA l2 (eps 1, alpha 0.5, k 3) -> 45.0.
"""
from configs import base

CIFAR100 = {"data.source": "cifar100", "data.train_split": "train",
            "data.eval_split": "test", "data.train_size": 0, "data.train_fraction": 0.1,
            "flow.checkpoint": "@flow", **base.standardize("cifar100")}


def get_config(arg=None):
  runs = [("flow", "cifar10_flow", {}),
          ("standard", "cifar10_da", CIFAR100)]
  for norm, eps in (("linf", 0.2), ("linf", 0.3), ("l2", 10.0), ("l2", 20.0)):
    runs.append((f"rla_{norm}_{eps:g}", "cifar10_rla",
                 dict(CIFAR100, **{"perturb.norm": norm, "perturb.eps": eps})))
  runs.append(("ala_l2_1", "cifar10_adv", CIFAR100))
  return base.sweep(runs, arg)
