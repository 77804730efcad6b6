"""Fig. 5: Fashion-MNIST, the ~100K-parameter CNN on {600, 2400, 6000, 50000} training images x
3 seeds x {standard, R-LA l_inf 0.15, A-LA l_inf 0.05/0.01/10}; the conditional dense flow is
trained once on all 60,000 images. Paper: A-LA beats standard at every size, the gap shrinking
with size; R-LA about equal to standard. configs/fig5_fmnist_notebook.py: the same sweep under
the authors' notebook protocol.

  python -m train.main --config=configs/fig5_fmnist.py --workdir=runs/fig5
"""
from configs import base

SIZES = (600, 2400, 6000, 50000)
SEEDS = (0, 1, 2)
METHODS = (("standard", "fmnist_standard"), ("rla", "fmnist_rla"), ("ala", "fmnist_adv"))


def runs(flow=None, per_method=None) -> list:
  """The sweep's runs; `flow` overrides the flow run's fields, `per_method[name]` a method's."""
  out = [("flow", "fmnist_flow", dict(flow or {}))]
  for size in SIZES:
    for seed in SEEDS:
      for name, module in METHODS:
        out.append((f"{name}_n{size}_s{seed}", module,
                    {"data.train_size": size, "seed": seed, "flow.checkpoint": "@flow",
                     **(per_method or {}).get(name, {})}))
  return out


def get_config(arg=None):
  return base.sweep(runs(), arg)
