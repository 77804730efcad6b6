"""A run that is killed, or whose numbers go bad, loses no work and changes no result.

`python -m train.main` runs in subprocesses (through tests/fault_entry.py, which injects the
faults) on a tiny synthetic dataset: one uninterrupted run of
an A-LA experiment (flow stage, then the classifier stage through that flow), and the same
experiment in a second workdir stopped five times on its way: by a NaN in flow training, by
SIGKILL at a random step of each stage and by SIGKILL during a checkpoint save of each stage.
Its final `results.json` must equal the uninterrupted run's, number for number (on CPU a resumed
run computes exactly what an uninterrupted one does). Both runs inject a NaN into one A-LA decode,
which must fall back to the clean image and be counted, across the resumes too. A third
workdir is stopped by SIGTERM (a preemption notice) mid-step: it saves that step, and its rerun
gives the same results too.

Subprocesses share a persistent XLA compilation cache, so only the first run compiles.
"""
import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from test_train import _npz

pytestmark = pytest.mark.slow  # end to end: `pytest -m 'not slow'` skips it

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY = os.path.join(ROOT, "tests", "fault_entry.py")
FLOW_STEPS, FLOW_EVERY = 32, 8              # train[:256] / batch 32 x 4 epochs
CLASSIFIER_STEPS, CLASSIFIER_EVERY = 12, 2  # 64 of them / batch 16 x 3 epochs
NAN_DECODE_STEP = 1                         # before the classifier's first checkpoint


def _strip(results):
  """The numbers of a results.json: without config, versions and file paths."""
  if isinstance(results, dict):
    return {k: _strip(v) for k, v in results.items()
            if k not in ("config", "versions", "path") and not k.endswith("_png")}
  return results


def _read(workdir, *stage):
  path = os.path.join(workdir, *stage, "results.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _steps(workdir, stage):
  """Committed and half-written (temporary) checkpoint directories of a stage."""
  directory = os.path.join(workdir, stage, "checkpoints")
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return (sorted(int(n) for n in names if n.isdigit()),
          sorted(n for n in names if "orbax-checkpoint-tmp" in n))


class Runner:
  """`python -m train.main` on the tiny dataset with a fixed config, one workdir per runner."""

  def __init__(self, data, cache_dir, workdir):
    source, data_dir = data
    self.data, self.cache_dir, self.workdir, self.runs = data, cache_dir, workdir, 0
    self.args = [
        "--config=configs/cifar10_adv.py:smoke", f"--workdir={workdir}",
        f"--config.data.source={source}", f"--config.data.data_dir={data_dir}",
        "--config.data.train_split=train[:256]", "--config.data.eval_split=test",
        "--config.data.train_size=64",
        "--config.flow.batch_size=32", "--config.flow.epochs=4",
        f"--config.flow.log_every={FLOW_EVERY}", f"--config.flow.checkpoint_every={FLOW_EVERY}",
        "--config.classifier.batch_size=16", "--config.classifier.epochs=3",
        f"--config.classifier.log_every={CLASSIFIER_EVERY}",
        f"--config.classifier.checkpoint_every={CLASSIFIER_EVERY}",
        f"--fault=nan_decode:{NAN_DECODE_STEP}"]
    self.env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
                    JAX_COMPILATION_CACHE_DIR=cache_dir,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

  def __call__(self, *overrides, kill_when=None, delay=0.0, timeout=300):
    """(return code, output) of one run; with `kill_when` (a path), SIGKILLed `delay` seconds
    after that path appears."""
    self.runs += 1
    log = f"{self.workdir}.run{self.runs}.log"
    with open(log, "w") as out:
      proc = subprocess.Popen([sys.executable, ENTRY, *self.args, *overrides],
                              cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
      deadline = time.monotonic() + timeout
      try:
        while kill_when and proc.poll() is None and time.monotonic() < deadline:
          if os.path.isdir(kill_when):
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            break
          time.sleep(0.05)
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
      finally:
        if proc.poll() is None:
          proc.kill()
          proc.wait()
    with open(log) as f:
      return proc.returncode, f.read()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("fault")
  data = (_npz(str(root / "data.npz"), (8, 8, 3), 320, 64), str(root / "tfds"))
  cache = str(root / "xla_cache")
  baseline = Runner(data, cache, str(root / "baseline"))
  rc, out = baseline()
  assert rc == 0, out[-3000:]
  results = _read(baseline.workdir)
  assert (results["stages"]["flow"]["steps"], results["steps"]) == (FLOW_STEPS, CLASSIFIER_STEPS)
  return results, out, Runner(data, cache, str(root / "resumed"))


def test_uninterrupted_run_counts_nan_decodes_and_falls_back(runs):
  results, out, _ = runs
  # One NaN image at one step: replaced by its clean image (else the loss would be NaN and the
  # run would stop), counted, and reported.
  assert results["nonfinite_decodes"] == 1
  assert all(map(math.isfinite, (results["test_loss"], results["train_loss"])))
  assert "fell back to their clean images" in out


def test_killed_and_resumed_run_equals_uninterrupted_run(runs):
  expected, _, run = runs
  w, rng = run.workdir, random.Random()
  flow_ckpt = lambda step: os.path.join(w, "flow", "checkpoints", str(step))
  clf_ckpt = lambda step: os.path.join(w, "classifier", "checkpoints", str(step))
  delays = []

  # 1. A NaN in flow training stops the run, naming the step; the checkpoint before it stays.
  rc, out = run(f"--fault=flow_nan:{FLOW_EVERY + 2}")  # the 11th step
  assert rc != 0 and f"non-finite loss at step {FLOW_EVERY + 3}" in out, out[-3000:]
  assert f"last good checkpoint (step {FLOW_EVERY})" in out
  assert _steps(w, "flow") == ([FLOW_EVERY], [])

  # 2. SIGKILL at a random flow step: the rerun resumed from the last good checkpoint. A flow
  # step of this tiny Glow takes ~10 ms: 0-0.1 s lands within the 16 steps left after it.
  delays.append(rng.uniform(0.0, 0.1))
  rc, out = run(kill_when=flow_ckpt(2 * FLOW_EVERY), delay=delays[-1])
  assert rc == -signal.SIGKILL, out[-3000:]
  assert f"Resumed flow training from step {FLOW_EVERY}." in out
  assert _read(w, "flow") is None and FLOW_STEPS not in _steps(w, "flow")[0], delays

  # 3. SIGKILL during the save of the flow's last checkpoint: written, never committed.
  rc, out = run(f"--fault=kill_during_save:{FLOW_STEPS}")
  assert rc == -signal.SIGKILL, out[-3000:]
  committed, tmp = _steps(w, "flow")
  assert FLOW_STEPS not in committed and tmp == [f"{FLOW_STEPS}.orbax-checkpoint-tmp"]

  # 4. SIGKILL at a random classifier step (the flow stage finishes first).
  delays.append(rng.uniform(0.0, 0.25))
  rc, out = run(kill_when=clf_ckpt(CLASSIFIER_EVERY), delay=delays[-1])
  assert rc == -signal.SIGKILL, out[-3000:]
  assert _steps(w, "flow") == ([FLOW_STEPS - FLOW_EVERY, FLOW_STEPS], [])  # leftover cleaned
  assert _read(w, "flow") is not None and _read(w, "classifier") is None, delays

  # 5. SIGKILL during the save of the classifier's last checkpoint.
  rc, out = run(f"--fault=kill_during_save:{CLASSIFIER_STEPS}")
  assert rc == -signal.SIGKILL, out[-3000:]
  assert "flow stage already finished" in out and "Resumed classifier training" in out
  committed, tmp = _steps(w, "classifier")
  assert CLASSIFIER_STEPS not in committed
  assert tmp == [f"{CLASSIFIER_STEPS}.orbax-checkpoint-tmp"]

  # 6. The last rerun finishes: the same numbers as the run that was never interrupted.
  rc, out = run()
  assert rc == 0, out[-3000:]
  assert _steps(w, "classifier") == ([CLASSIFIER_STEPS - CLASSIFIER_EVERY, CLASSIFIER_STEPS], [])
  assert _strip(_read(w)) == _strip(expected), delays


def test_sigterm_saves_the_step_and_the_rerun_equals_uninterrupted_run(runs, tmp_path):
  expected, _, other = runs
  run = Runner(other.data, other.cache_dir, str(tmp_path / "preempted"))
  stop_at = FLOW_EVERY + 5  # the signal arrives during step 14, between two periodic saves
  rc, out = run(f"--fault=sigterm:{stop_at}")
  assert rc == 128 + signal.SIGTERM, out[-3000:]
  assert f"flow training stopped by SIGTERM after step {stop_at + 1}" in out
  assert _steps(run.workdir, "flow") == ([FLOW_EVERY, stop_at + 1], [])
  assert not os.path.exists(os.path.join(run.workdir, ".lock"))
  rc, out = run()
  assert rc == 0, out[-3000:]
  assert f"Resumed flow training from step {stop_at + 1}." in out
  assert _strip(_read(run.workdir)) == _strip(expected)
