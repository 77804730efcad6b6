"""`python -m train.main` with faults injected, for tests/test_fault_tolerance.py only.

  python tests/fault_entry.py [--fault=KIND:STEP ...] --config=... --workdir=...

KIND (each at most once; STEP counts the steps done before the faulty one, as `state.step`):
- flow_nan: the flow's train step at STEP returns a NaN loss and NaN parameters;
- nan_decode: at classifier step STEP, the latent code decodes the batch's first image to NaN
  (in every decode of the attack), so it must fall back to its clean image and be counted;
- kill_during_save: SIGKILL the process once the checkpoint of STEP (steps done) is written
  but before orbax commits it, the worst moment for a preemption to strike;
- sigterm: send the process SIGTERM (a preemption notice) while it fetches the batch of step
  STEP of the first stage to reach it, so the signal lands in the middle of that step.
Production code has no hooks for these: they wrap the stages' functions from outside.
"""
import collections
import dataclasses
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app  # noqa: E402
from flax import struct  # noqa: E402

from train import checkpoint, frozen, input_pipeline, main  # noqa: E402
from train.stages import classifier, flow  # noqa: E402


def _flow_nan(step: int) -> None:
  clean = flow.train_step

  def train_step(state, batch, key, flow_module, aug):
    new_state, metrics = clean(state, batch, key, flow_module, aug)
    poison = jnp.where(state.step == step, jnp.nan, 1.0)
    new_state = new_state.replace(params=jax.tree.map(lambda p: p * poison, new_state.params))
    return new_state, dict(metrics, bits_per_dim=metrics["bits_per_dim"] * poison)

  flow.train_step = train_step


@struct.dataclass
class _PoisonedGenerator(frozen.Generator):
  """A generator whose decode turns the first image into NaN where `poison` is true."""
  poison: jax.Array = False

  def decode(self, z, y):
    return super().decode(z, y).at[0].multiply(jnp.where(self.poison, jnp.nan, 1.0))


def _nan_decode(step: int) -> None:
  clean = classifier.train_step

  def train_step(state, batch, key, frozen_models, **kwargs):
    latent = frozen_models.latent
    poisoned = _PoisonedGenerator(latent.kind, latent.module, latent.variables,
                                  poison=state.step == step)
    return clean(state, batch, key, frozen_models.replace(latent=poisoned), **kwargs)

  classifier.train_step = train_step


def _kill_during_save(step: int) -> None:
  unfinalized = collections.deque()  # steps saved, not yet finalized (in order)
  options, save = checkpoint.manager_options, checkpoint.Checkpointer.save

  def kill():  # orbax calls this after writing a save, before renaming it into place
    if unfinalized.popleft() == step:
      os.kill(os.getpid(), signal.SIGKILL)

  def manager_options(max_to_keep, read_only):
    return dataclasses.replace(options(max_to_keep, read_only), async_options=(
        checkpoint.ocp.AsyncOptions(post_finalization_callback=kill)))

  def record_then_save(self, done, state, meta=None):
    unfinalized.append(int(done))
    save(self, done, state, meta)

  checkpoint.manager_options = manager_options
  checkpoint.Checkpointer.save = record_then_save


def _sigterm(step: int) -> None:
  batch, sent = input_pipeline.Loader.batch, []

  def batch_then_signal(self, at):
    if at == step and not sent:
      sent.append(at)
      os.kill(os.getpid(), signal.SIGTERM)
    return batch(self, at)

  input_pipeline.Loader.batch = batch_then_signal


FAULTS = {"flow_nan": _flow_nan, "nan_decode": _nan_decode, "kill_during_save": _kill_during_save,
          "sigterm": _sigterm}

if __name__ == "__main__":
  argv = []
  for arg in sys.argv:
    if arg.startswith("--fault="):
      kind, step = arg[len("--fault="):].split(":")
      FAULTS[kind](int(step))
    else:
      argv.append(arg)
  main.define_flags()
  app.run(main.main, argv=argv)
