"""Table 3: ResNet-18 on 5% of SVHN with flows trained on SVHN and on CIFAR-10.

SVHN (source 'svhn': train_32x32.mat and test_32x32.mat, downloaded once). The authors' SVHN schedule: 120
epochs, weight decay 1e-4, lr x0.1 at epochs 30/60/90, random translation 0.1, no flip.
Paper: standard 81.2; SVHN flow: R-LA l2 15 -> 84.9, A-LA l2 (0.5, 0.25, 2) -> 86.9;
CIFAR-10 flow: R-LA l2 15 -> 90.0, A-LA l2 (0.3, 0.15, 2) -> 90.5.
"""
from configs import base

SVHN = {"data.source": "svhn", "data.train_split": "train",
        "data.eval_split": "test", "data.train_size": 0, "data.train_fraction": 0.05,
        "classifier.epochs": 120.0, "classifier.weight_decay": 1e-4,
        "classifier.lr_boundaries": (30, 60, 90), "classifier.lr_decay": 0.1,
        "classifier.augment.crop_flip": False, "classifier.augment.translate": 0.1,
        **base.standardize("svhn")}


def get_config(arg=None):
  runs = [("flow_svhn", "svhn_flow", {}), ("flow_cifar10", "cifar10_flow", {}),
          ("standard", "cifar10_standard", SVHN)]
  for flow, (eps, alpha) in (("svhn", (0.5, 0.25)), ("cifar10", (0.3, 0.15))):
    ckpt = {"flow.checkpoint": f"@flow_{flow}"}
    runs.append((f"rla_l2_15_{flow}flow", "cifar10_rla",
                 dict(SVHN, **ckpt, **{"perturb.norm": "l2", "perturb.eps": 15.0})))
    runs.append((f"ala_l2_{eps:g}_{flow}flow", "cifar10_adv",
                 dict(SVHN, **ckpt, **{"perturb.eps": eps, "perturb.step_size": alpha,
                                       "perturb.steps": 2})))
  return base.sweep(runs, arg)
