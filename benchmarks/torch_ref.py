"""A PyTorch reference on the same CPU: the CIFAR ResNet-18 train step, the Glow 3x32x512
forward / inverse and the A-LA k=3 train step, written for this repo.

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

`glow` is `jaxflowaug.flows.Glow` (affine coupling, scale_fn 'tanh', permutation 'plain',
unconditional) in NCHW, same parameter count (see `glow`); `ala_step_seconds` times the A-LA
k=3 step on it (see there).
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

    return _best(step, repeats)
  finally:
    torch.set_num_threads(saved_threads)


def glow(num_levels: int = 3, num_steps: int = 32, hidden_channels: int = 512,
         channels: int = 3, logit_bound: float = 0.9):
  """`jaxflowaug.flows.Glow` as a `torch.nn.Module` (NCHW), for forward and inverse only.

  `forward(x)` maps images (B, C, H, W) in [0, 1] to z of x's shape (u = 1/2, no log-det),
  `inverse(z)` back. Layer for layer as ours: Preprocess v = logit(a + b (255 x + 1/2) / 256);
  per level squeeze (our channel order (2p + q) C + c), K steps of ActNorm ((x + b) exp(s)),
  plain invertible 1x1 conv (y = x W as an einsum, inverse with W^-1 computed per call;
  as `F.conv2d` with a contiguous (C, C, 1, 1) weight it ran ~10x slower on this CPU), affine coupling
  (first half conditions the second: conv3x3 (no bias) -> ActNorm -> ReLU -> conv1x1 (no bias)
  -> ActNorm -> ReLU -> conv3x3 (bias) times exp(3 logs), shift first, s = scale * tanh(r),
  y_b = (x_b + t) exp(s)); split in half after levels < L-1; latents packed back with
  unsqueeze. Parameters are initialised like ours except that ActNorm starts at the identity
  (ours is data-dependent): the same arithmetic either way.
  """
  torch = _torch()
  nn = torch.nn

  def squeeze(x):
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 3, 5, 1, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)

  def unsqueeze(x):
    b, c4, h, w = x.shape
    x = x.reshape(b, 2, 2, c4 // 4, h, w).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(b, c4 // 4, 2 * h, 2 * w)

  class ActNorm(nn.Module):

    def __init__(self, c):
      super().__init__()
      self.bias = nn.Parameter(torch.zeros(1, c, 1, 1))
      self.log_scale = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x):
      return (x + self.bias) * torch.exp(self.log_scale)

    def inverse(self, y):
      return y * torch.exp(-self.log_scale) - self.bias

  class Coupling(nn.Module):

    def __init__(self, c):
      super().__init__()
      self.half = c // 2
      cb = c - self.half
      self.conv_in = nn.Conv2d(self.half, hidden_channels, 3, padding=1, bias=False)
      self.norm_in = ActNorm(hidden_channels)
      self.conv_mid = nn.Conv2d(hidden_channels, hidden_channels, 1, bias=False)
      self.norm_mid = ActNorm(hidden_channels)
      self.conv_out = nn.Conv2d(hidden_channels, 2 * cb, 3, padding=1)
      nn.init.zeros_(self.conv_out.weight)
      nn.init.zeros_(self.conv_out.bias)
      self.logs = nn.Parameter(torch.zeros(1, 2 * cb, 1, 1))
      self.scale = nn.Parameter(torch.ones(1, cb, 1, 1))

    def _shift_log_scale(self, x_a):
      h = torch.relu(self.norm_in(self.conv_in(x_a)))
      h = torch.relu(self.norm_mid(self.conv_mid(h)))
      out = self.conv_out(h) * torch.exp(3.0 * self.logs)
      cb = out.shape[1] // 2
      return out[:, :cb], self.scale * torch.tanh(out[:, cb:])

    def forward(self, x):
      x_a, x_b = x[:, :self.half], x[:, self.half:]
      t, s = self._shift_log_scale(x_a)
      return torch.cat([x_a, (x_b + t) * torch.exp(s)], 1)

    def inverse(self, y):
      y_a, y_b = y[:, :self.half], y[:, self.half:]
      t, s = self._shift_log_scale(y_a)
      return torch.cat([y_a, y_b * torch.exp(-s) - t], 1)

  class Step(nn.Module):

    def __init__(self, c):
      super().__init__()
      self.norm = ActNorm(c)
      self.kernel = nn.Parameter(torch.linalg.qr(torch.randn(c, c))[0])  # orthogonal W_0
      self.coupling = Coupling(c)

    def forward(self, x):
      x = self.norm(x)
      x = torch.einsum('bihw,ij->bjhw', x, self.kernel)
      return self.coupling(x)

    def inverse(self, y):
      y = self.coupling.inverse(y)
      y = torch.einsum('bihw,ij->bjhw', y, torch.linalg.inv(self.kernel))
      return self.norm.inverse(y)

  class Glow(nn.Module):

    def __init__(self):
      super().__init__()
      self.levels, c = nn.ModuleList(), channels
      for index in range(num_levels):
        c *= 4
        self.levels.append(nn.ModuleList(Step(c) for _ in range(num_steps)))
        if index < num_levels - 1:
          c //= 2
      self.a, self.b = (1.0 - logit_bound) / 2.0, logit_bound

    def forward(self, x):
      p = self.a + self.b * (255.0 * x + 0.5) / 256.0
      h, latents = torch.log(p) - torch.log1p(-p), []
      for index, level in enumerate(self.levels):
        h = squeeze(h)
        for step in level:
          h = step(h)
        if index < num_levels - 1:
          half = h.shape[1] // 2
          h, z = h[:, :half], h[:, half:]
          latents.append(z)
      h = unsqueeze(h)
      for z in reversed(latents):
        h = unsqueeze(torch.cat([h, z], 1))
      return h

    def inverse(self, z):
      h, latents = z, []
      for _ in range(num_levels - 1):
        h = squeeze(h)
        half = h.shape[1] // 2
        latents.append(h[:, half:])
        h = h[:, :half]
      h = squeeze(h)
      for index in reversed(range(num_levels)):
        if index < num_levels - 1:
          h = torch.cat([unsqueeze(h), latents[index]], 1)
        for step in reversed(self.levels[index]):
          h = step.inverse(h)
      p = torch.sigmoid(unsqueeze(h))
      return (256.0 * (p - self.a) / self.b - 0.5) / 255.0

  return Glow()


def _best(fn, repeats, warm_up=True):
  if warm_up:
    fn()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def glow_seconds(batch_size: int = 32, threads: int = 2, repeats: int = 2, seed: int = 0):
  """(forward s, inverse s): the fastest of `repeats` calls (after one warm-up each) of the
  torch Glow 3x32x512 on a random (batch_size, 3, 32, 32) batch, no autograd."""
  torch = _torch()
  torch.manual_seed(seed)
  saved_threads = torch.get_num_threads()
  torch.set_num_threads(threads)
  try:
    flow = glow().eval().requires_grad_(False)
    x = torch.rand(batch_size, 3, 32, 32)
    with torch.no_grad():
      z = flow(x)
      return _best(lambda: flow(x), repeats), _best(lambda: flow.inverse(z), repeats)
  finally:
    torch.set_num_threads(saved_threads)


def ala_step_seconds(batch_size: int = 8, threads: int = 2, repeats: int = 2, steps: int = 3,
                     eps: float = 1.0, step_size: float = 0.5, seed: int = 0,
                     warm_up: bool = True) -> float:
  """Seconds of the fastest of `repeats` A-LA train steps (after one warm-up unless not
  `warm_up`) on a random
  batch, as `train.stages.classifier` runs it with `configs/cifar10_adv.py` (without its
  crop/flip): z = glow(x) (no grad); target = argmax of the ResNet on x (labels 'pred', a
  train-mode pass); delta0 = uniform in [-eps, eps] projected into the l2 eps-ball; `steps`
  PGD steps delta <- proj(delta + step_size * g / ||g||), g = d CE(resnet(glow^-1(z + delta)),
  target) / d delta (train-mode BatchNorm, input gradient only); x' = clip(glow^-1(z + delta),
  0, 1); then the SGD train step of the ResNet on (x', true labels) as in `resnet18_step_seconds`."""
  torch = _torch()
  F = torch.nn.functional
  torch.manual_seed(seed)
  saved_threads = torch.get_num_threads()
  torch.set_num_threads(threads)
  try:
    flow = glow().eval().requires_grad_(False)
    model = resnet18().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    x = torch.rand(batch_size, 3, 32, 32)
    y = torch.arange(batch_size) % 10

    def l2(v):
      return v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)

    def project(d):
      return d * torch.clamp(eps / l2(d), max=1.0)

    def step():
      with torch.no_grad():
        z = flow(x)
        target = model(x).argmax(-1)
      delta = project(eps * (2.0 * torch.rand_like(z) - 1.0))
      for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(flow.inverse(z + delta)), target, reduction="sum")
        (g,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
          delta = project(delta + step_size * g / l2(g))
      with torch.no_grad():
        x_t = flow.inverse(z + delta).clamp(0.0, 1.0)
      opt.zero_grad(set_to_none=True)
      F.cross_entropy(model(x_t), y).backward()
      opt.step()

    return _best(step, repeats, warm_up)
  finally:
    torch.set_num_threads(saved_threads)


if __name__ == "__main__":
  for last in (False, True):
    print(f"torch {version()} ResNet-18 train step, batch 128, channels_last={last}: "
          f"{128 / resnet18_step_seconds(channels_last=last):.1f} img/s")
