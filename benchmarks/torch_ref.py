"""A PyTorch reference on the same CPU: the CIFAR ResNet-18 train step, written for this repo.

  python -m benchmarks.torch_ref       # prints the torch step's img/s (needs torch installed)
`benchmarks.run --sections torch` times it in the same process as the JAX step and reports
ours / torch. torch is optional (requirements-fid.txt); without it the section is skipped.

The network is `jaxflowaug.models.ResNet18` layer for layer: standardisation by per-channel
mean/std inside the model, a 3x3 stride-1 stem (no max-pool) with BatchNorm + ReLU, four
stages of two BasicBlocks (64/128/256/512 filters, stride 2 at the start of stages 2-4, 1x1
conv + BN projection shortcuts), global average pool, a linear head with bias; convolutions
without bias, BatchNorm eps 1e-5 and momentum 0.1 (torch's convention for flax's 0.9),
11,173,962 parameters for 10 classes. The step is the classifier stage's without
augmentation: cross-entropy, SGD with Nesterov momentum 0.9, learning rate 0.1 and weight
decay 5e-4 added to the gradient (optax `add_decayed_weights` + `sgd`, as `torch.optim.SGD`).
"""
import time


def _torch():
  """torch, or None when it is not importable (the section is then skipped)."""
  try:
    import torch  # optional dependency: requirements-fid.txt
  except ImportError:
    return None
  return torch


def available() -> bool:
  return _torch() is not None


def version() -> str:
  return _torch().__version__


def resnet18(num_classes: int = 10, width: int = 64, mean=(0.4914, 0.4822, 0.4465),
             std=(0.2470, 0.2435, 0.2616)):
  """The CIFAR ResNet-18 as a `torch.nn.Module`: float (B, 3, H, W) in [0, 1] -> logits (B, K)."""
  torch = _torch()
  nn = torch.nn

  def conv_bn(c_in, c_out, k, stride):
    return [nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, bias=False),
            nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.1)]

  class Block(nn.Module):
    """y = relu(shortcut(x) + BN(conv3x3(relu(BN(conv3x3_s(x))))))."""

    def __init__(self, c_in, c_out, stride):
      super().__init__()
      self.body = nn.Sequential(*conv_bn(c_in, c_out, 3, stride), nn.ReLU(inplace=True),
                                *conv_bn(c_out, c_out, 3, 1))
      self.shortcut = (nn.Sequential(*conv_bn(c_in, c_out, 1, stride))
                       if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x):
      return torch.relu(self.shortcut(x) + self.body(x))

  class ResNet(nn.Module):

    def __init__(self):
      super().__init__()
      self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
      self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
      layers, c = [*conv_bn(len(mean), width, 3, 1), nn.ReLU(inplace=True)], width
      for i in range(4):
        for j in range(2):
          layers.append(Block(c, width * 2**i, 2 if i > 0 and j == 0 else 1))
          c = width * 2**i
      self.features = nn.Sequential(*layers)
      self.head = nn.Linear(c, num_classes)

    def forward(self, x):
      x = self.features((x - self.mean) / self.std)
      return self.head(x.mean(dim=(2, 3)))

  return ResNet()


def parameter_count(module) -> int:
  return sum(p.numel() for p in module.parameters())


def resnet18_step_seconds(batch_size: int = 128, threads: int = 2, repeats: int = 3,
                          channels_last: bool = False, seed: int = 0) -> float:
  """Seconds of the fastest of `repeats` SGD train steps (after one warm-up) of the torch
  ResNet-18 on a random (batch_size, 3, 32, 32) batch with `threads` intra-op threads."""
  torch = _torch()
  torch.manual_seed(seed)
  saved_threads = torch.get_num_threads()
  torch.set_num_threads(threads)
  try:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = resnet18().to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    x = torch.rand(batch_size, 3, 32, 32).contiguous(memory_format=fmt)
    y = torch.arange(batch_size) % 10

    def step():
      opt.zero_grad(set_to_none=True)
      torch.nn.functional.cross_entropy(model(x), y).backward()
      opt.step()

    step()
    best = float("inf")
    for _ in range(repeats):
      t0 = time.perf_counter()
      step()
      best = min(best, time.perf_counter() - t0)
    return best
  finally:
    torch.set_num_threads(saved_threads)


if __name__ == "__main__":
  for last in (False, True):
    print(f"torch {version()} ResNet-18 train step, batch 128, channels_last={last}: "
          f"{128 / resnet18_step_seconds(channels_last=last):.1f} img/s")
