"""The benchmarks' FLOP counter (loops times their trip counts, nominal conv arithmetic) and
the PyTorch reference section (optional: skipped without torch)."""
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from benchmarks import harness
from jaxflowaug import conv, onednn

DN = ("NHWC", "HWIO", "NHWC")


def test_matmul_and_scan_flops():
  a, b = jnp.ones((4, 6)), jnp.ones((6, 5))
  assert harness.jaxpr_flops(lambda x, y: x @ y, a, b) == 2 * 4 * 6 * 5
  looped = lambda x, y: lax.scan(lambda c, _: (c, x @ y), 0.0, None, length=7)[1]
  assert harness.jaxpr_flops(looped, a, b) == 7 * 2 * 4 * 6 * 5


@pytest.mark.parametrize("backend", ["plans", "onednn"])
def test_conv_gradient_counts_nominal_flops(backend):
  """Every CPU backend's program counts as the convolution's nominal 2*out*KH*KW*C_in per
  product (forward, input and weight gradient), as lax's does: the plans' col2im form computes
  over the padded frame, and oneDNN's products are primitives of their own."""
  if backend == "onednn" and not onednn.available():
    pytest.skip(f"oneDNN extension: {onednn.unavailable_reason()}")
  x, k = jnp.ones((2, 8, 8, 40)), jnp.ones((3, 3, 40, 2))
  loss = lambda fn: lambda a, b: jnp.sum(fn(a, b, (1, 1), "SAME", dimension_numbers=DN) ** 2)
  nominal = 3 * 2 * (2 * 8 * 8 * 2) * 9 * 40
  with conv.using_cpu_backend(backend):
    plan = conv.cpu_plan(x, k, (1, 1), "SAME", dimension_numbers=DN)[2]
    assert plan.forward == {"plans": "col2im", "onednn": "onednn"}[backend]
    assert harness.jaxpr_flops(jax.grad(loss(conv.conv_general_dilated), (0, 1)), x, k) == nominal
  assert harness.jaxpr_flops(jax.grad(loss(lax.conv_general_dilated), (0, 1)), x, k) == nominal


def test_other_load_counts_another_process_and_flags_the_section():
  """A process spinning one core for 1.5 s while this one sleeps: >= 1 CPU-second of others'
  load; BENCHMARKS.md flags a section above `run.BUSY` and not one below it."""
  from benchmarks import run
  with harness.OtherLoad() as load:
    spinner = subprocess.Popen([sys.executable, "-c",
                                "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"])
    time.sleep(1.8)
  spinner.wait()
  if load.other_seconds is None:
    pytest.skip("no /proc/stat here")
  assert load.other_seconds >= 1.0 and load.fraction > 0.0
  base = {"machine": run.machine(), "matmul_flops": 1e11}
  busy = run.render(dict(base, load={"torch": {"other_cpu_s": 9.0, "fraction": 0.45}}))
  assert "**Busy machine**" in busy and "45% of the CPUs during the torch section" in busy
  quiet = run.render(dict(base, load={"torch": {"other_cpu_s": 0.1, "fraction": 0.01}}))
  assert "Busy machine" not in quiet


def test_torch_section_skips_cleanly_without_torch(monkeypatch):
  """With `import torch` failing, the section records why it was skipped and renders it."""
  from benchmarks import run
  monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
  result = run.torch_reference()
  assert "torch is not importable" in result["skipped"]
  text = run.render({"machine": run.machine(), "matmul_flops": 1e11, "torch": result})
  assert "Skipped: torch is not importable" in text


def test_torch_resnet18_is_ours():
  """Same parameter count (11,173,962 for 10 classes) and output shape; one step runs."""
  pytest.importorskip("torch")
  import torch
  from benchmarks import torch_ref
  from jaxflowaug import models
  ours = models.get("ResNet18", num_classes=10)
  shapes = jax.eval_shape(lambda: ours.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                            train=False))
  count = sum(x.size for x in jax.tree.leaves(shapes["params"]))
  reference = torch_ref.resnet18(10)
  assert torch_ref.parameter_count(reference) == count == 11_173_962
  assert reference(torch.rand(2, 3, 32, 32)).shape == (2, 10)
  assert torch_ref.resnet18_step_seconds(batch_size=2, threads=1, repeats=1) > 0


def test_torch_glow_is_ours_and_inverts():
  """The torch Glow 3x32x512 has our parameter count (44,050,752 on 32x32x3), and a small one
  with perturbed parameters inverts: inverse(forward(x)) == x to float32 round-off."""
  pytest.importorskip("torch")
  import torch
  from benchmarks import torch_ref
  from jaxflowaug import flows
  ours = flows.Glow(3, 32, 512)
  shapes = jax.eval_shape(lambda: ours.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                            method=ours.forward))
  count = sum(x.size for x in jax.tree.leaves(shapes["params"]))
  assert torch_ref.parameter_count(torch_ref.glow(3, 32, 512)) == count == 44_050_752
  torch.manual_seed(0)
  small = torch_ref.glow(3, 2, 16)
  with torch.no_grad():
    for p in small.parameters():
      p.add_(0.05 * torch.randn_like(p))
    x = torch.rand(2, 3, 32, 32)
    z = small(x)
    assert z.shape == x.shape
    assert torch.allclose(small.inverse(z), x, atol=1e-4)


def test_sections_from_several_runs_name_their_own_matmul_rate():
  """A section kept from an earlier run keeps the rate its fractions were taken of."""
  from benchmarks import run
  load = {"classifier": {"date": "d1", "cpu_conv": None, "matmul_flops": 1.043e14},
          "flow": {"date": "d2", "cpu_conv": None, "matmul_flops": 7.1e13}}
  text = run.render({"machine": run.machine(), "matmul_flops": 7.1e13,
                     "matmul_flops_samples": [7.1e13, 6.8e13], "load": load})
  assert "in the last run" in text and "fractions below are of the best" not in text
  assert "classifier d1 (104300.0 GFLOP/s); flow d2 (71000.0 GFLOP/s)" in text
  one = run.render({"machine": run.machine(), "matmul_flops": 7.1e13,
                    "matmul_flops_samples": [7.1e13, 6.8e13],
                    "load": {"flow": load["flow"]}})
  assert "Sections from several runs" not in one and "fractions below are of the best" in one
