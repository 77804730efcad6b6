"""CIFAR ResNet (BasicBlock) in Flax Linen, after kuangliu/pytorch-cifar.

Differences from the ImageNet ResNet: a 3x3 stride-1 stem convolution and no max-pool, so
a 32x32 input reaches the head at 4x4. The input is standardised inside the model with
per-channel `mean`/`std`, so callers always pass images in [0, 1].

The last BatchNorm of each block keeps the default scale init of ones (as torchvision's
`zero_init_residual=False`, which the paper's authors use), not flax imagenet's zeros.
"""
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxflowaug.conv import Conv
from jaxflowaug.models.base import standardize

ModuleDef = Any

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class ResNetBlock(nn.Module):
  """BasicBlock: y = act(shortcut(x) + BN(conv3x3(act(BN(conv3x3_s(x)))))).

  The shortcut is the identity, or conv1x1 (stride s) + BN when the shape changes.
  Input (B, H, W, C_in) -> output (B, ceil(H/s), ceil(W/s), filters).
  """
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (3, 3), self.strides, padding=1)(x)
    y = self.act(self.norm()(y))
    y = self.conv(self.filters, (3, 3), padding=1)(y)
    y = self.norm()(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), self.strides, padding=0,
                           name='conv_proj')(residual)
      residual = self.norm(name='norm_proj')(residual)
    return self.act(residual + y)


class ResNet(nn.Module):
  """CIFAR ResNet: stem conv3x3(width) -> BN -> ReLU -> stages -> global avg pool -> Dense.

  Stage i has `stage_sizes[i]` blocks with `width * 2**i` filters; every stage after the
  first starts with a stride-2 block. `width=64`, `stage_sizes=(2, 2, 2, 2)` is ResNet-18
  (11,173,962 parameters for 10 classes).

  Call: `model.apply(variables, x, train=bool, mutable=['batch_stats'] if train else False)`
  with x float (B, H, W, len(mean)) in [0, 1]; returns float32 logits (B, num_classes).
  Parameters are float32; activations use `dtype` (bfloat16 on accelerators).
  """
  num_classes: int
  stage_sizes: Sequence[int]
  width: int = 64
  mean: Sequence[float] = CIFAR10_MEAN
  std: Sequence[float] = CIFAR10_STD
  dtype: Any = jnp.float32
  act: Callable = nn.relu

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = standardize(x, self.mean, self.std).astype(self.dtype)
    conv = functools.partial(
        Conv, use_bias=False, dtype=self.dtype,
        kernel_init=nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'))
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype)
    x = conv(self.width, (3, 3), padding=1, name='conv_init')(x)
    x = self.act(norm(name='bn_init')(x))
    for i, block_size in enumerate(self.stage_sizes):
      for j in range(block_size):
        strides = 2 if i > 0 and j == 0 else 1
        x = ResNetBlock(self.width * 2**i, conv=conv, norm=norm, act=self.act,
                        strides=strides)(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(jnp.float32)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2))
# Test-only: one block per stage, two stages (so the projection shortcut is exercised).
_ResNetTiny = functools.partial(ResNet, stage_sizes=(1, 1), width=8)
