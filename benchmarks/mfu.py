"""Model FLOP utilisation of the ResNet-18 and A-LA train steps against batch size and dtype.

  python -m benchmarks.mfu [--batches 512,2048] [--ala-batch 512]

For accelerators, where the suite's batches (128 for ResNet-18, 128 for A-LA) leave the chip
idle: each step's useful FLOPs (counted from the jaxpr, `benchmarks/harness.py`) per second, as
a fraction of the measured 8192^3 bfloat16 matmul rate. Rows: the ResNet-18 classifier step in
float32 and in bfloat16 (`classifier.arch.dtype`) at each of `--batches`, then the A-LA k 3 step
(Glow 3x32x512 + ResNet-18, the paper's setting) at `--ala-batch` with either classifier dtype
(the flow stays float32). Prints a markdown table; BENCHMARKS.md records it by hand.
"""
import argparse

import jax.numpy as jnp

from benchmarks import augment, harness
from benchmarks.run import classifier_step
from configs import cifar10_adv, cifar10_standard

DTYPES = ("float32", "bfloat16")


def run(batches, ala_batch) -> tuple:
  """(bfloat16 matmul FLOP/s, [Measurement])."""
  bf16_peak = harness.matmul_peak(8192, jnp.bfloat16)
  rows = []
  for batch in batches:
    for dtype in DTYPES:
      config = cifar10_standard.get_config()
      config.classifier.arch.dtype = dtype
      rows.append(classifier_step(f"ResNet-18 train step, {dtype}", config, (32, 32, 3), batch))
  for dtype in DTYPES:
    config = cifar10_adv.get_config()
    config.classifier.arch.dtype = dtype
    rows += augment.measure_setup(f"Glow 3x32x512 + ResNet-18 {dtype}", config, (32, 32, 3),
                                  ala_batch, (("A-LA", {"method": "ala"}),))
  return bf16_peak, rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--batches", default="512,2048", help="ResNet-18 batch sizes")
  parser.add_argument("--ala-batch", type=int, default=512)
  args = parser.parse_args(argv)
  bf16_peak, rows = run([int(b) for b in args.batches.split(",")], args.ala_batch)
  print(f"bfloat16 matmul (8192^3): {bf16_peak / 1e12:.1f} TFLOP/s")
  print(harness.markdown_table(
      [dict(m.row(bf16_peak), tflop_per_s=m.flops_per_second / 1e12) for m in rows],
      [("what", "name", None), ("batch", "items", None), ("img/s", "img_per_s", "{:.0f}"),
       ("TFLOP/s", "tflop_per_s", "{:.1f}"),
       ("of bf16 peak", "fraction_of_matmul_peak", "{:.1%}")]))


if __name__ == "__main__":
  main()
