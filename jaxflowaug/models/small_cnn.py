"""The ~100K-parameter CNN of Stutz et al. (CVPR 2019) used for Fashion-MNIST (Fig. 5)."""
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxflowaug.conv import Conv
from jaxflowaug.models.base import standardize


class SmallCNN(nn.Module):
  """[conv4x4 stride 2 -> BN -> ReLU] x 3 (16/32/64) -> flatten -> Dense(100) -> Dense(K).

  Defaults follow the authors' code (flow-lp `vaegan/standard.py`): torch padding 1 on
  each side (`kernel_size // 2 - 1`), so 28 -> 14 -> 7 -> 3 (the last conv floors
  (7 + 2 - 4) / 2 + 1 = 3); convolutions keep their bias; no activation between the two
  Dense layers; no input standardisation (`mean=(0,)`, `std=(1,)`). For 10 classes this
  has 100,262 parameters:
    conv 4*4*1*16+16 + 4*4*16*32+32 + 4*4*32*64+64 = 41,328; BN 2*(16+32+64) = 224;
    Dense 3*3*64*100+100 = 57,700; Dense 100*10+10 = 1,010.
  `padding='SAME'` (28 -> 14 -> 7 -> 4) with `hidden_relu=True` gives 145,062.

  Call: `model.apply(variables, x, train=bool, mutable=['batch_stats'] if train else False)`
  with x float (B, H, W, len(mean)) in [0, 1]; returns float32 logits (B, num_classes).
  """
  num_classes: int
  features: Sequence[int] = (16, 32, 64)
  kernel_size: int = 4
  padding: Any = 1
  hidden: int = 100
  hidden_relu: bool = False
  mean: Sequence[float] = (0.0,)
  std: Sequence[float] = (1.0,)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = standardize(x, self.mean, self.std).astype(self.dtype)
    for features in self.features:
      x = Conv(features, (self.kernel_size, self.kernel_size), 2, padding=self.padding,
               dtype=self.dtype)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                       dtype=self.dtype)(x)
      x = nn.relu(x)
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(self.hidden, dtype=self.dtype)(x)
    if self.hidden_relu:
      x = nn.relu(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(jnp.float32)
