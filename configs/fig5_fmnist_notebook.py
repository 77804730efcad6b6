"""Fig. 5 under the authors' Fashion-MNIST notebook protocol
(notebook/mnist_&_fmnist_normalizing_flows_for_data_enriching.py), where it departs from ours:
- the flow is trained with Adam, lr 1e-6, no weight decay, batch 100, 100 epochs (`train_flow`);
- the A-LA classifier trains with BatchNorm frozen at its initial statistics: `train_conv` calls
  `conv.train()` and then `preprocess_adv`, which calls `.eval()` on the same module and never
  undoes it (classifier.train_bn_mode='eval'). Standard and R-LA classifiers train normally.
Not reproduced: the notebook does not clip A-LA's decoded images to [0, 1] (ours do).

  python -m train.main --config=configs/fig5_fmnist_notebook.py --workdir=runs/fig5_notebook
"""
from configs import base, fig5_fmnist

# 100 epochs as ours (fmnist()).
FLOW = {"flow.optimizer": "adam", "flow.learning_rate": 1e-6, "flow.weight_decay": 0.0,
        "flow.batch_size": 100}


def get_config(arg=None):
  return base.sweep(fig5_fmnist.runs(flow=FLOW, per_method={
      "ala": {"classifier.train_bn_mode": "eval"}}), arg)
