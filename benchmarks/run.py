"""The benchmark suite, in one process: `python -m benchmarks.run [--sections ...]`.

Measures the machine's float32 matmul rate, then flows (forward, inverse, train step),
classifier train steps, the standard / R-LA / A-LA / image-PGD steps, compile time against
flow depth, the Glow step with plain vs project convolutions, the input pipeline, and the
ResNet-18 train step against the same step in PyTorch (`torch`, skipped without torch); writes
`benchmarks/results/<platform>.json` and the tables of `BENCHMARKS.md` for that platform
(other platforms' sections are kept; a run of some `--sections` keeps the others' numbers). Speeds are
the fastest of a few calls; FLOPs are counted from the jaxpr (see `benchmarks/harness.py`).
"""
import argparse
import functools
import json
import os
import platform
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import augment, flow, harness, torch_ref
from configs import cifar10_adv, cifar10_standard, fmnist_standard
from jaxflowaug import conv, onednn
from train import frozen, models
from train.stages import classifier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ("flow", "classifier", "augment", "depth", "data", "conv", "torch")
BUSY = 0.1  # a section during which other processes used more of the CPUs is flagged
STEP_COLUMNS = [("what", "name", None), ("img/s", "img_per_s", "{:.2f}"),
                ("GFLOP/call", "gflop_per_call", "{:.2f}"), ("GFLOP/s", "gflop_per_s", "{:.1f}"),
                ("of matmul peak", "fraction_of_matmul_peak", "{:.0%}"),
                ("compile s", "compile_s", "{:.1f}")]


def classifier_step(name, config, shape, batch_size, repeats=2) -> harness.Measurement:
  """The classifier stage's train step (crop/flip as configured, no perturbation) on a
  random uint8 batch of `batch_size` images of `shape`."""
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.integers(0, 256, (batch_size,) + shape, np.uint8)),
           "label": jnp.asarray(np.arange(batch_size) % 10, jnp.int32)}
  model = models.create_classifier(config, 10)
  tx = models.create_classifier_optimizer(config.classifier, steps_per_epoch=100)
  state = jax.jit(lambda k: models.create_classifier_state(model, k, shape, tx))(
      jax.random.PRNGKey(0))
  step = functools.partial(classifier.train_step, model=model, config=config, spec=None,
                           num_classes=10)
  return harness.measure(f"{name}, batch {batch_size}", step, state, batch,
                         jax.random.PRNGKey(1), frozen.Frozen(), items=batch_size,
                         repeats=repeats, carry=lambda out, args: (out[0],) + args[1:])


def classifier_steps(accelerator: bool) -> list:
  """Plain train steps (no augmentation): ResNet-18 at batch 128 and the CNN at batch 100."""
  rows = []
  for name, config, shape, batch_size in (
      ("ResNet-18 train step", cifar10_standard.get_config(), (32, 32, 3), 128),
      ("ResNet-18 bf16 train step", cifar10_standard.get_config(), (32, 32, 3), 128),
      ("Fashion-MNIST CNN train step", fmnist_standard.get_config(), (28, 28, 1), 100)):
    if "bf16" in name:
      if not accelerator:
        continue
      config.classifier.arch.dtype = "bfloat16"
    rows.append(classifier_step(name, config, shape, batch_size))
  return rows


def _jax_glow_seconds(batch_size: int) -> tuple:
  """(forward s, inverse s) of our Glow 3x32x512 (`configs/cifar10_adv.py`'s flow) on a
  random batch, jitted, the fastest of 2 calls after compile and warm-up."""
  config = cifar10_adv.get_config()
  flow_model = models.create_flow(config, 10)
  x = jnp.asarray(np.random.default_rng(0).random((batch_size, 32, 32, 3), np.float32))
  variables = jax.jit(lambda v: flow_model.init(jax.random.PRNGKey(0), v,
                                                method=flow_model.forward))(x)
  fwd = harness.measure("Glow forward", lambda v, a: flow_model.apply(
      v, a, method=flow_model.forward)[0], variables, x, items=batch_size, repeats=2)
  z = jax.jit(lambda v, a: flow_model.apply(v, a, method=flow_model.forward)[0])(variables, x)
  inv = harness.measure("Glow inverse", lambda v, a: flow_model.apply(
      v, a, method=flow_model.inverse)[0], variables, z, items=batch_size, repeats=2)
  return fwd.seconds, inv.seconds


def _ours_backends() -> list:
  """The CPU convolution backends ours is measured with: the plans (XLA's kernels), and
  oneDNN's (`jaxflowaug.onednn`, the default) when the extension builds here."""
  return ["plans"] + (["onednn"] if onednn.available() else [])


def _with_backend(backend, fn, *args):
  """fn(*args) traced and run with the CPU convolution backend `backend`."""
  with conv.using_cpu_backend(backend):
    return fn(*args)


def torch_reference(batch_size: int = 128, rounds: int = 1, glow_batch: int = 8,
                    ala_batch: int = 8) -> dict:
  """Against PyTorch (`benchmarks/torch_ref.py`) on as many threads as this process may use:
  the ResNet-18 train step at `batch_size` (torch NCHW and channels-last, ours with each of
  `_ours_backends()`, measured in alternation for `rounds` rounds, the best of each kept), the
  Glow 3x32x512 forward and inverse at `glow_batch`, and the A-LA k=3 train step
  (`configs/cifar10_adv.py`, ours via `augment.measure_setup`) at `ala_batch`: {"rows": [...]}
  with ours / torch per backend, or {"skipped": why} when torch is not importable. The torch
  Glow and A-LA step are timed once after one warm-up (about 10 s and 15 s a call on the
  2-vCPU machine)."""
  if not torch_ref.available():
    return {"skipped": "torch is not importable (optional: `pip install -r requirements-fid.txt`)"}
  threads = len(os.sched_getaffinity(0))
  backends = _ours_backends()
  best = {name: float("inf") for name in backends + ["torch NCHW", "torch channels-last"]}
  for _ in range(rounds):
    for backend in backends:
      ours = _with_backend(backend, classifier_step, "ResNet-18 train step",
                           cifar10_standard.get_config(), (32, 32, 3), batch_size)
      best[backend] = min(best[backend], ours.seconds)
    for layout, last in (("torch NCHW", False), ("torch channels-last", True)):
      best[layout] = min(best[layout], torch_ref.resnet18_step_seconds(
          batch_size, threads=threads, channels_last=last))

  def row(name, ours_seconds, items, torch_nchw, torch_last=None):
    torch_best = min(torch_nchw, torch_last or float("inf"))
    out = {"name": name, "torch_nchw_img_per_s": items / torch_nchw}
    if torch_last:
      out["torch_channels_last_img_per_s"] = items / torch_last
    for backend, seconds in ours_seconds.items():
      suffix = "" if backend == "plans" else f"_{backend}"
      out[f"ours{suffix}_img_per_s"] = items / seconds
      out[f"ratio{suffix}"] = torch_best / seconds
    return out

  rows = [row(f"ResNet-18 train step, batch {batch_size}", {b: best[b] for b in backends},
              batch_size, best["torch NCHW"], best["torch channels-last"])]
  glow = {b: _with_backend(b, _jax_glow_seconds, glow_batch) for b in backends}
  torch_fwd, torch_inv = torch_ref.glow_seconds(glow_batch, threads=threads, repeats=1)
  for i, (what, torch_s) in enumerate((("forward", torch_fwd), ("inverse", torch_inv))):
    rows.append(row(f"Glow 3x32x512 {what}, batch {glow_batch}",
                    {b: glow[b][i] for b in backends}, glow_batch, torch_s))
  config = cifar10_adv.get_config()
  ours_ala = {b: _with_backend(b, augment.measure_setup, "CIFAR-10 Glow 3x32x512 + ResNet-18",
                               config, (32, 32, 3), ala_batch,
                               (("A-LA", {"method": "ala"}),))[0].seconds for b in backends}
  torch_ala = torch_ref.ala_step_seconds(
      ala_batch, threads=threads, repeats=1, steps=config.perturb.steps, eps=config.perturb.eps,
      step_size=config.perturb.step_size)
  rows.append(row(f"A-LA k {config.perturb.steps} train step (Glow 3x32x512 + ResNet-18), "
                  f"batch {ala_batch}", ours_ala, ala_batch, torch_ala))
  return {"threads": threads, "torch": torch_ref.version(), "backends": backends, "rows": rows}


def machine() -> dict:
  device = jax.devices()[0]
  return {"platform": jax.default_backend(), "device": getattr(device, "device_kind", str(device)),
          "cpu_conv": conv.cpu_backend() if jax.default_backend() == "cpu" else None,
          "device_count": jax.device_count(), "cpu_count": os.cpu_count(),
          "processor": platform.processor() or platform.machine(), "jax": jax.__version__,
          "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def render(results: dict) -> str:
  """The markdown section of one platform."""
  m, peak = results["machine"], results["matmul_flops"]
  runs = {name: (l["date"], l.get("cpu_conv"), l.get("matmul_flops"))
          for name, l in results.get("load", {}).items() if l.get("date")}
  several = len({r[:2] for r in runs.values()}) > 1  # a run of some `--sections` kept others'
  out = [f"## {m['platform']}: {m['device']} x{m['device_count']} ({m['date']}, jax {m['jax']}, "
         f"{m['cpu_count']} CPU cores)", ""] + (
             [f"CPU convolutions: {m['cpu_conv']} (`JAXFLOWAUG_CPU_CONV`) in this run's sections, "
              "except where a table names the backend.", ""] if m.get("cpu_conv") else []) + [
         f"Measured float32 matmul (2048^3){' in the last run' if several else ''}: "
         f"**{peak / 1e9:.1f} GFLOP/s**"
         + (f" (the best of {len(results['matmul_flops_samples'])} measurements spread over the "
            f"run, the lowest {min(results['matmul_flops_samples']) / 1e9:.1f}"
            + ("" if several else ": fractions below are of the best") + ")"
            if len(results.get("matmul_flops_samples", [])) > 1 else "")
         + (f"; bfloat16: {results['matmul_bf16_flops'] / 1e12:.1f} TFLOP/s"
            if results.get("matmul_bf16_flops") else "") + ".", ""]
  if several:
    out += ["Sections from several runs, each section's fractions of its own run's float32 "
            "matmul rate: " + "; ".join(
                f"{name} {date}" + (f", {backend} convolutions" if backend else "")
                + (f" ({flops / 1e9:.1f} GFLOP/s)" if flops else "")
                for name, (date, backend, flops) in runs.items()) + ".", ""]
  busy = {name: l["fraction"] for name, l in results.get("load", {}).items()
          if l.get("fraction") is not None and l["fraction"] > BUSY}
  if busy:
    out += ["**Busy machine**: other processes used " + ", ".join(
        f"{100 * f:.0f}% of the CPUs during the {name} section" for name, f in busy.items())
            + " (`harness.OtherLoad`). Those sections' timings are not trustworthy, PyTorch's "
            "least of all (its OpenMP threads wait for a core held by another process); rerun "
            "them on a quiet machine.", ""]
  titles = {"flow": "Flows", "classifier": "Classifier train steps",
            "augment": "Train steps with each perturbation"}
  for key in ("flow", "classifier", "augment"):
    if results.get(key):
      out += [f"### {titles[key]}", "", harness.markdown_table(results[key], STEP_COLUMNS), ""]
  if results.get("augment_ratios"):
    out += ["A-LA cost against its arithmetic (target: time ratio <= 1.1 x FLOP ratio):", "",
            harness.markdown_table(results["augment_ratios"], [
                ("setup", "setup", None), ("A-LA / standard time", "time_ratio", "{:.2f}"),
                ("A-LA / standard FLOPs", "flop_ratio", "{:.2f}"),
                ("time / FLOP ratio", "time_over_flops", "{:.2f}"),
                ("target met", "target_met", None),
                ("latent caching speed-up", "cache_speedup", "{:+.0%}"),
                ("unrolled PGD speed-up (vs loop)", "unroll_speedup", "{:+.0%}")]), ""]
  if results.get("depth"):
    out += ["### Compile time against Glow depth (3 levels x K steps x 64, train step)", "",
            harness.markdown_table(results["depth"], [("K", "depth", None),
                                                      ("compile s", "compile_s", "{:.1f}"),
                                                      ("step s", "step_s", "{:.2f}")]), ""]
  if results.get("conv"):
    out += ["### Glow train step: plain `lax` convolutions vs `jaxflowaug.conv` (batch 8)", "",
            harness.markdown_table(results["conv"], [
                ("flow", "flow", None), ("lax s/step", "lax_step_s", "{:.2f}"),
                ("project s/step", "project_step_s", "{:.2f}"),
                ("speed-up", "speedup", "{:.2f}x")]), ""]
  if results.get("torch"):
    t = results["torch"]
    out += ["### Against PyTorch on the same CPU (same process, same thread count)", ""]
    if "skipped" in t:
      out += [f"Skipped: {t['skipped']}.", ""]
    else:
      out += [f"torch {t['torch']}, {t['threads']} threads (`torch.set_num_threads`); the "
              "same CIFAR ResNet-18 and SGD step, Glow and A-LA step (`benchmarks/torch_ref.py`); "
              "ours / torch is against torch's faster layout (ResNet target >= 1.0, A-LA "
              ">= 2.0); the Glow and A-LA rows are NCHW only (their channels-last cell is "
              "empty). \"ours, plans\" runs XLA's own kernels with the project's gradient forms "
              "(`JAXFLOWAUG_CPU_CONV=plans`); \"ours, oneDNN\" oneDNN's kernels "
              "(`jaxflowaug/onednn.py`, the default where it builds).", "",
              harness.markdown_table(t["rows"], [
                  ("step", "name", None), ("ours, plans img/s", "ours_img_per_s", "{:.2f}"),
                  ("ours, oneDNN img/s", "ours_onednn_img_per_s", "{:.2f}"),
                  ("torch NCHW img/s", "torch_nchw_img_per_s", "{:.2f}"),
                  ("torch channels-last img/s", "torch_channels_last_img_per_s", "{:.2f}"),
                  ("ours, plans / torch", "ratio", "{:.2f}"),
                  ("ours, oneDNN / torch", "ratio_onednn", "{:.2f}")]), ""]
  if results.get("data"):
    d = results["data"]
    out += ["### Input pipeline (CIFAR-10 tar, batch 128)", "",
            f"First batch cold {d['cold_first_batch_s']:.1f} s, cached "
            f"{d['cached_first_batch_s']:.1f} s; assembly {d['assembly_img_per_s']:.0f} img/s; "
            f"assembly + transfer + crop/flip {d['pipeline_img_per_s']:.0f} img/s."]
    steps = [r for r in results.get("classifier", []) if r["name"].startswith("ResNet-18 train")]
    if steps:
      ratio = d["pipeline_img_per_s"] / steps[0]["img_per_s"]
      out += [f"That is **{ratio:.0f}x** the ResNet-18 train step's {steps[0]['img_per_s']:.1f} "
              f"img/s (target >= 20x: input never bounds training)."]
    out.append("")
  return "\n".join(out)


def write_markdown(results: dict, path: str) -> None:
  """Replaces this platform's section of BENCHMARKS.md, keeping the others."""
  header = ("# Benchmarks\n\nWritten by `python -m benchmarks.run` (one process per platform; "
            "compare only numbers from the same section). Raw numbers: `benchmarks/results/`.\n")
  sections, notes = {}, ""
  if os.path.exists(path):
    with open(path) as f:
      text = f.read()
    text, marker, rest = text.partition("<!-- notes -->")
    notes = marker + rest  # hand-written notes after the marker are kept as they are
    for block in re.split(r"(?m)^(?=## )", text)[1:]:
      sections[block.split(":")[0][3:].strip()] = block.rstrip() + "\n"
  sections[results["machine"]["platform"]] = render(results).rstrip() + "\n"
  with open(path, "w") as f:
    f.write(header + "\n" + "\n".join(sections[k] for k in sorted(sections)) + "\n" + notes)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--sections", default=",".join(SECTIONS),
                      help=f"comma-separated subset of {SECTIONS}")
  parser.add_argument("--reduced-only", action="store_true",
                      help="skip the full-scale CIFAR Glow in the augment section")
  parser.add_argument("--markdown", default=os.path.join(ROOT, "BENCHMARKS.md"))
  parser.add_argument("--render", metavar="RESULTS_JSON",
                      help="only rewrite BENCHMARKS.md from a saved results file")
  args = parser.parse_args(argv)
  if args.render:
    with open(args.render) as f:
      write_markdown(json.load(f), args.markdown)
    return
  sections = args.sections.split(",")
  accelerator = jax.default_backend() != "cpu"
  results_path = os.path.join(ROOT, "benchmarks", "results", f"{jax.default_backend()}.json")
  results = {}
  if os.path.exists(results_path):  # a run of some sections keeps the others' last numbers
    with open(results_path) as f:
      results = json.load(f)
  # The machine is shared: the matmul rate is measured before every section and after the last,
  # and every fraction is of the best of these (the least flattering reference).
  started = machine()
  samples = [harness.matmul_peak()]
  print(f"matmul float32: {samples[0] / 1e9:.1f} GFLOP/s", flush=True)
  measured, load = {}, {}

  def section(name, fn):  # runs one section, recording what other processes did meanwhile
    with harness.OtherLoad() as other:
      out = fn()
    load[name] = {"other_cpu_s": other.other_seconds, "fraction": other.fraction,
                  "date": started["date"], "cpu_conv": started["cpu_conv"]}
    return out

  if "flow" in sections:
    measured["flow"] = section("flow", lambda: flow.run(accelerator))
  if "classifier" in sections:
    samples.append(harness.matmul_peak())
    measured["classifier"] = section("classifier", lambda: classifier_steps(accelerator))
  if "augment" in sections:
    samples.append(harness.matmul_peak())
    measured["augment"] = section("augment", lambda: augment.run(
        accelerator, only_reduced=args.reduced_only))
    results["augment_ratios"] = augment.ratios(measured["augment"])
  if "depth" in sections:
    results["depth"] = section("depth", flow.compile_vs_depth)
  if "conv" in sections:
    results["conv"] = section("conv", flow.conv_before_after)
  if "data" in sections:
    from benchmarks import data as data_bench
    results["data"] = section("data", data_bench.run)
  if "torch" in sections:
    samples.append(harness.matmul_peak())
    results["torch"] = section("torch", torch_reference)
  samples.append(harness.matmul_peak())
  peak = max(samples)
  for name in load:  # each section's fractions are of its own run's matmul rate
    load[name]["matmul_flops"] = peak
  results["load"] = dict(results.get("load", {}), **load)
  results.update(machine=started, matmul_flops=peak, matmul_flops_samples=samples)
  if accelerator:
    results["matmul_bf16_flops"] = harness.matmul_peak(8192, jnp.bfloat16)
  for key, ms in measured.items():
    results[key] = [m.row(peak) for m in ms]
  os.makedirs(os.path.dirname(results_path), exist_ok=True)
  with open(results_path, "w") as f:
    json.dump(results, f, indent=2, default=float)
  write_markdown(results, args.markdown)
  print(render(results))


if __name__ == "__main__":
  main()
